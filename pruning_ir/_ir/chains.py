"""Chains of order-keeping ops that a pruned model's code may skip (they vanish at some sizes)."""

from __future__ import annotations

from collections.abc import Callable

from .graph import Graph, Node
from .ops import ORDER_KEEPING

_CHAIN_LIMIT = 8


def view_chains(graph: Graph) -> dict[int, tuple[list[int], list[int]]]:
    """For each node of :data:`~pruning_ir._ir.ops.ORDER_KEEPING` with one tensor input: the values before it
    along chain ops (its input first) and after it (its output first, then through sole
    consumers that are chain ops). See :func:`vanishing_nodes`."""
    consumers: dict[int, list[Node]] = {}
    for n in graph.nodes:
        for vid in set(n.tensor_args()):
            consumers.setdefault(vid, []).append(n)
    by_id = {n.nid: n for n in graph.nodes}
    out: dict[int, tuple[list[int], list[int]]] = {}
    for n in graph.nodes:
        ins = n.tensor_args()
        if n.op not in ORDER_KEEPING or len(ins) != 1 or not n.outputs or n.outputs[0] < 0:
            continue
        back = [ins[0]]
        while len(back) < _CHAIN_LIMIT:
            p = by_id.get(graph.values[back[-1]].producer)
            if p is None or p.op not in ORDER_KEEPING or len(p.tensor_args()) != 1:
                break
            back.append(p.tensor_args()[0])
        fwd = [n.outputs[0]]
        while len(fwd) < _CHAIN_LIMIT:
            users = consumers.get(fwd[-1], [])
            if len(users) != 1 or users[0].op not in ORDER_KEEPING or not users[0].outputs:
                break
            fwd.append(users[0].outputs[0])
        out[n.nid] = (back, fwd)
    return out


def vanishing_nodes(chains: dict[int, tuple[list[int], list[int]]],
                    shape: Callable[[int], tuple[int, ...]]) -> set[int]:
    """Nodes inside a chain of :data:`~pruning_ir._ir.ops.ORDER_KEEPING` that is the identity at the sizes
    ``shape`` gives (``repeat_kv`` with one query per kv head): a pruned model's code may
    skip them, so checks and patches must not expect them."""
    out: set[int] = set()
    for nid, (back, fwd) in chains.items():
        before = {shape(v) for v in back}
        if any(shape(v) in before for v in fwd):
            out.add(nid)
    return out
