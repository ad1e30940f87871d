"""The traced graph: plain, picklable records of values and ATen-level nodes.

A :class:`Graph` is what the recorder (``pruning_ir._trace``) produces and what
label inference (``pruning_ir._ir.infer``) annotates with channel layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .spaces import Layout

SAME_AS = "pruning_ir.same_as"
"""Op of a synthetic node (no outputs): ``self`` and ``other`` are the same tensor of the model's
code computed in two traced calls (see :mod:`pruning_ir._trace.merge`), so their axes are one
channel space each (the rule is in ``_rules/calls.py``)."""


@dataclass(frozen=True)
class ValueRef:
    """Placeholder for a tensor argument inside a node's ``args``/``kwargs``."""

    vid: int


@dataclass
class Value:
    """One tensor value (one version of a tensor: in-place ops make a new value).

    ``kind`` is ``"input"`` (a model input), ``"param"``, ``"buffer"``, ``"const"``
    (a tensor the trace did not see being made) or ``"op"`` (a node's output).
    ``axes`` holds one layout per dimension once labels are inferred.
    """

    vid: int
    shape: tuple[int, ...]
    dtype: str
    kind: str
    name: str = ""
    producer: int = -1
    axes: list[Layout] = field(default_factory=list)


@dataclass(frozen=True)
class Fact:
    """An integer argument of a node that depends on channel sizes.

    ``kind="size"``: the int equals the kept size of ``layout``;
    ``kind="offset"``: it equals the kept size of the prefix ``layout``.
    ``path`` locates the int inside ``(args, kwargs)``.
    """

    path: tuple[Any, ...]
    kind: str
    layout: Layout
    old: int


def set_path(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    """Copy of ``obj`` (nested dicts/lists/tuples) with the entry at ``path`` set to ``value``."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, key: set_path(obj[key], rest, value)}
    seq = list(obj)
    seq[key] = set_path(seq[key], rest, value)
    return tuple(seq) if isinstance(obj, tuple) else seq


@dataclass
class Node:
    """One recorded ATen op (or one leaf-module call when ``leaf`` is set)."""

    nid: int
    op: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[int]
    out_spec: Any
    module_stack: tuple[str, ...]
    leaf: str = ""
    facts: list[Fact] = field(default_factory=list)

    @property
    def module(self) -> str:
        return self.module_stack[-1] if self.module_stack else ""

    def tensor_args(self) -> list[int]:
        out: list[int] = []
        _collect(self.args, out)
        _collect(self.kwargs, out)
        return out


def _collect(obj: Any, out: list[int]) -> None:
    if isinstance(obj, ValueRef):
        out.append(obj.vid)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _collect(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _collect(o, out)


@dataclass
class Graph:
    """Values, nodes in execution order, and the model's input/output values."""

    values: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    """Canonical parameter/buffer name -> value id (only those the trace touched)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Every other name of a shared (tied) parameter -> its canonical name."""
    explicit_modules: set[str] = field(default_factory=set)
    """Module paths traced through an explicit forward of ours (stock ``nn.MultiheadAttention``
    through ``pruning_ir.modules.mha_forward``): their attention scale is a constant held by the
    module, and their sizes are set by a dedicated rewrite, not by matching attribute values."""
    extra_calls: list[tuple[int, list[int], list[int]]] = field(default_factory=list)
    """Calls traced after the example call, in order: (id of the first node it added, its output
    value ids, its whole node sequence). Nodes it shares with the example call are not repeated
    (see :mod:`pruning_ir._trace.merge`): its sequence names them by the example call's ids, and
    the nodes it added follow the example call's. Label inference reads every node (the union
    of the calls' couplings); costs and activations read the example call's
    (:meth:`primary_nodes`); verification re-traces each call against its sequence."""

    @property
    def primary_end(self) -> int:
        """Number of nodes of the example call (the first call)."""
        calls = getattr(self, "extra_calls", None)
        return calls[0][0] if calls else len(self.nodes)

    def primary_nodes(self) -> list[Node]:
        """The nodes of the example call (the first call traced)."""
        return self.nodes[: self.primary_end]

    def call_sequences(self) -> list[tuple[list[int], list[int]]]:
        """``(node ids in execution order, output value ids)`` of every traced call, the example call first."""
        calls = getattr(self, "extra_calls", None) or []
        return [(list(range(self.primary_end)), self.outputs)] + [(seq, outs) for _, outs, seq in calls]

    def all_outputs(self) -> list[int]:
        """Output values of every traced call."""
        return [v for _, outs in self.call_sequences() for v in outs]

    def live_nodes(self) -> set[int]:
        """Nodes whose outputs reach a model output of any call (the others only feed unused results)."""
        live: set[int] = set()
        stack = [self.values[v].producer for v in self.all_outputs()]
        while stack:
            nid = stack.pop()
            if nid < 0 or nid in live:
                continue
            live.add(nid)
            stack.extend(self.values[v].producer for v in self.nodes[nid].tensor_args())
        return live

    def value(self, vid: int) -> Value:
        return self.values[vid]


VIEW_CHAIN_OPS = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten._reshape_alias",
                            "aten.unsqueeze", "aten.squeeze", "aten.expand", "aten.clone", "aten.alias",
                            "aten.contiguous", "aten.flatten", "aten.unflatten", "aten.detach"})
"""Ops that never reorder or drop elements: a chain of them whose first input and last output
have one shape is the identity (views of row-major data, and only size-1 expansions keep
the element count), so code may skip the whole chain when sizes make it trivial."""

_CHAIN_LIMIT = 8


def view_chains(graph: Graph) -> dict[int, tuple[list[int], list[int]]]:
    """For each node of :data:`VIEW_CHAIN_OPS` with one tensor input: the values before it
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
        if n.op not in VIEW_CHAIN_OPS or len(ins) != 1 or not n.outputs or n.outputs[0] < 0:
            continue
        back = [ins[0]]
        while len(back) < _CHAIN_LIMIT:
            p = by_id.get(graph.values[back[-1]].producer)
            if p is None or p.op not in VIEW_CHAIN_OPS or len(p.tensor_args()) != 1:
                break
            back.append(p.tensor_args()[0])
        fwd = [n.outputs[0]]
        while len(fwd) < _CHAIN_LIMIT:
            users = consumers.get(fwd[-1], [])
            if len(users) != 1 or users[0].op not in VIEW_CHAIN_OPS or not users[0].outputs:
                break
            fwd.append(users[0].outputs[0])
        out[n.nid] = (back, fwd)
    return out


def vanishing_nodes(chains: dict[int, tuple[list[int], list[int]]],
                    shape: Callable[[int], tuple[int, ...]]) -> set[int]:
    """Nodes inside a chain of :data:`VIEW_CHAIN_OPS` that is the identity at the sizes
    ``shape`` gives (``repeat_kv`` with one query per kv head): a pruned model's code may
    skip them, so checks and patches must not expect them."""
    out: set[int] = set()
    for nid, (back, fwd) in chains.items():
        before = {shape(v) for v in back}
        if any(shape(v) in before for v in fwd):
            out.add(nid)
    return out


def constant_nodes(graph: Graph) -> set[int]:
    """Nodes computed from no model input, parameter or buffer: only from tensors that factory
    ops (``arange``, ``zeros``) make in the forward. Python may cache such results between calls
    (``functools.lru_cache`` on a position grid), so one run records them and the next does not."""
    out: set[int] = set()
    made: set[int] = set()
    for n in graph.nodes:
        if n.leaf:
            continue
        if all(vid in made for vid in n.tensor_args()):
            out.add(n.nid)
            made.update(v for v in n.outputs if v >= 0)
    return out


def untraced_parameters(model: Any, graph: Graph) -> list[str]:
    """Names of ``model``'s parameters that no traced call used (their channels are unknown)."""
    seen = set(graph.params) | set(graph.aliases)
    return [n for n, _ in model.named_parameters() if n not in seen]
