"""The traced graph: plain, picklable records of values and ATen-level nodes.

A :class:`Graph` is what the recorder (``pruning_ir._trace``) produces and what
label inference (``pruning_ir._infer``) annotates with channel layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .spaces import Layout

SAME_AS = "pruning_ir.same_as"
"""Op of a synthetic node (no outputs): ``self`` and ``other`` are the same tensor of the model's
code computed in two traced calls (see :mod:`pruning_ir._trace.merge`), so their axes are one
channel space each (the rule is in ``_rules/calls.py``)."""


CONST_LIMIT = 1 << 20
"""Elements of the largest constant tensor a graph keeps (see :attr:`Graph.consts`)."""


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
    overload: str = ""
    """The ATen overload called (``"Tensor"`` of ``aten.add.Tensor``): what a replay calls."""

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

    consts: dict[int, Any] = field(default_factory=dict)
    """Value id -> the tensor, for ``"const"`` values of up to ``CONST_LIMIT`` elements on a real
    device (what a replay of the graph needs besides parameters and inputs). Not carried to the
    graph a prune derives (a constant's channels are not sliced): replay the traced model's."""

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
