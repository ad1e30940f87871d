"""Merge an extra traced call into the example call's graph.

Tracing a second call (training mode, a padded mask, another branch) records the model's code
a second time. Most of it is the same code on the same shapes; re-inferring it would only repeat
couplings, and in the wrong order: a later call re-views layouts that the first call refined
(rotary halves inside heads), which the layout grammar cannot split again. So the extra call's
nodes are aligned with the example call's (longest matching runs of ``(op, module, output
shapes)``, :class:`difflib.SequenceMatcher`):

- an aligned node whose arguments (tensor inputs, after mapping, and every other argument) are
  its counterpart's is dropped, and its outputs stand for the counterpart's;
- an aligned node with other inputs (an attention given a mask) or other arguments (``h[:, 4:8]``
  where the example call took ``h[:, 0:4]``) is kept, followed by a
  synthetic ``pruning_ir.same_as`` node tying its outputs to the counterpart's, which then stand
  for them downstream;
- a node without counterpart (dropout in training mode, the code of another branch) is kept.

Kept nodes are renumbered after the example call's. The call's full node sequence (counterpart
ids for dropped nodes) is returned for verification, which re-traces each call on its own.
"""

from __future__ import annotations

import difflib
from typing import Any

from .._ir.graph import SAME_AS, Graph, Node, ValueRef


def _sig(graph: Graph, node: Node) -> tuple[Any, ...]:
    return (node.op, node.module_stack, node.leaf,
            tuple(graph.values[o].shape if o >= 0 else None for o in node.outputs))


def _map_refs(obj: Any, vmap: dict[int, int]) -> Any:
    if isinstance(obj, ValueRef):
        return ValueRef(vmap.get(obj.vid, obj.vid))
    if isinstance(obj, tuple):
        return tuple(_map_refs(o, vmap) for o in obj)
    if isinstance(obj, list):
        return [_map_refs(o, vmap) for o in obj]
    if isinstance(obj, dict):
        return {k: _map_refs(v, vmap) for k, v in obj.items()}
    return obj


def merge_call(graph: Graph, start: int, primary_end: int, outputs: list[int]) -> tuple[list[int], list[int]]:
    """Merge the nodes ``graph.nodes[start:]`` (one extra call) into the graph as described above.
    Returns the call's node sequence (ids into ``graph.nodes``) and its outputs, mapped."""
    primary = graph.nodes[:primary_end]
    new = graph.nodes[start:]
    del graph.nodes[start:]
    sm = difflib.SequenceMatcher(None, [_sig(graph, n) for n in primary], [_sig(graph, n) for n in new],
                                 autojunk=False)
    match: dict[int, Node] = {}
    for block in sm.get_matching_blocks():
        for k in range(block.size):
            match[block.b + k] = primary[block.a + k]
    vmap: dict[int, int] = {}
    sequence: list[int] = []
    for k, node in enumerate(new):
        node.args = _map_refs(node.args, vmap)
        node.kwargs = _map_refs(node.kwargs, vmap)
        twin = match.get(k)
        if twin is not None and node.args == twin.args and node.kwargs == twin.kwargs:
            # the same op on the same inputs with the same arguments (slice bounds, dims, sizes)
            for mine, theirs in zip(node.outputs, twin.outputs, strict=True):
                if mine >= 0 and theirs >= 0:
                    vmap[mine] = theirs
                    graph.values[mine].kind = "const"  # no producer any more (given axes, never read)
                    graph.values[mine].producer = -1
            sequence.append(twin.nid)
            continue
        node.nid = len(graph.nodes)
        for o in node.outputs:
            if o >= 0:
                graph.values[o].producer = node.nid
        graph.nodes.append(node)
        sequence.append(node.nid)
        if twin is not None:
            for mine, theirs in zip(node.outputs, twin.outputs, strict=True):
                if mine >= 0 and theirs >= 0:
                    graph.nodes.append(Node(len(graph.nodes), SAME_AS, (),
                                            {"self": ValueRef(mine), "other": ValueRef(theirs)}, [], None,
                                            node.module_stack))
                    vmap[mine] = theirs
    return sequence, [vmap.get(v, v) for v in outputs]
