"""What a channel rule is given (:class:`Ctx`) and how rules register (:func:`rule`); what a MAC
formula is given (:class:`Operands`) and how formulas register (:func:`macs`).

An op family's module registers both side by side: how the op couples channels, and how many
multiply-accumulates it costs. A MAC formula is written once over an op's operand *dims*; the
cost model evaluates it over axis layouts (its cost follows the kept labels, no forward), and
``MacsLatency`` over the shapes that ``FlopCounterMode`` sees (FLOPs of a real run), so the
two agree by construction on every op that has a formula here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .._ir.graph import Fact, Graph, Node, ValueRef
from .._ir.ops import WEIGHT_VIEWS
from .._ir.spaces import ONE, Layout, SpaceTable

Rule = Callable[["Ctx"], None]
RULES: dict[str, Rule] = {}


F = TypeVar("F")


def _register(table: dict[str, F], names: tuple[str, ...]) -> Callable[[F], F]:
    """A decorator that enters its function in ``table`` under every op packet in ``names``."""

    def deco(fn: F) -> F:
        for n in names:
            table[n] = fn
        return fn

    return deco


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the rule of every op packet in ``names``."""
    return _register(RULES, names)


class Ctx:
    """What a rule sees: its node, the graph's layouts and the space table."""

    def __init__(self, graph: Graph, spaces: SpaceTable, node: Node) -> None:
        self.graph = graph
        self.spaces = spaces
        self.node = node
        self.live = True
        """False when the node's outputs reach no model output: its notes (inexactness) are moot."""

    # ---------------------------------------------------------------- inputs
    def a(self, name: str, default: Any = None) -> Any:
        """Argument ``name`` (schema name) of the node."""
        return self.node.kwargs.get(name, default)

    def axes(self, ref: ValueRef) -> list[Layout]:
        return self.graph.values[ref.vid].axes

    def shape(self, ref: ValueRef) -> tuple[int, ...]:
        return self.graph.values[ref.vid].shape

    def from_params(self, ref: ValueRef) -> bool:
        """True when ``ref`` is a parameter/buffer seen through view-like ops (a weight)."""
        vid = ref.vid
        for _ in range(64):
            v = self.graph.values[vid]
            if v.kind in ("param", "buffer"):
                return True
            if v.kind != "op" or v.producer < 0:
                return False
            node = self.graph.nodes[v.producer]
            if node.op not in WEIGHT_VIEWS:
                return False
            src = node.kwargs.get("self")
            if not isinstance(src, ValueRef):
                return False
            vid = src.vid
        return False

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.graph.values[self.node.outputs[i]].shape

    @property
    def n_out(self) -> int:
        return len(self.node.outputs)

    def where(self) -> str:
        return f"{self.node.op} in '{self.node.module or '<root>'}'"

    # ---------------------------------------------------------------- effects
    def set_out(self, i: int, axes: list[Layout]) -> None:
        vid = self.node.outputs[i]
        if vid >= 0:
            self.graph.values[vid].axes = list(axes)

    def unify(self, x: Layout, y: Layout) -> None:
        self.spaces.unify(x, y)

    def fresh(self, size: int, what: str, rigid: str | None = None) -> Layout:
        return self.spaces.new_leaf(size, f"{what}@{self.node.op}#{self.node.nid}", rigid)

    def rigid(self, layout: Layout, reason: str) -> None:
        self.spaces.mark_rigid(layout, f"{reason} ({self.where()})")

    def note(self, layout: Layout, note: str) -> None:
        if not self.live:
            return
        self.spaces.add_note(layout, f"{note} ({self.where()})")

    def fact(self, path: tuple[Any, ...], layout: Layout, old: int, kind: str = "size") -> None:
        self.node.facts.append(Fact(path, kind, layout, old))

    def rigid_all(self, reason: str) -> None:
        """Every axis the node touches is unprunable: its inputs', and its outputs' (given rigid
        fresh layouts where no rule set them)."""
        for vid in self.node.tensor_args():
            for ax in self.graph.values[vid].axes:
                self.rigid(ax, reason)
        for i, vid in enumerate(self.node.outputs):
            if vid < 0:
                continue
            v = self.graph.values[vid]
            if v.axes:
                for ax in v.axes:
                    self.rigid(ax, reason)
            else:
                self.set_out(i, [self.fresh(s, f"out{i}", reason) for s in v.shape])


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def broadcast(ctx: Ctx, refs: list[Any], out_shape: tuple[int, ...]) -> list[Layout]:
    """Unify the broadcast-aligned axes of tensor inputs; layouts of the output."""
    nd = len(out_shape)
    out: list[Layout] = []
    for i in range(nd):
        group: list[Layout] = []
        for r in refs:
            if not isinstance(r, ValueRef):
                continue
            sh = ctx.shape(r)
            j = i - (nd - len(sh))
            if j >= 0 and sh[j] == out_shape[i] and out_shape[i] != 1:
                group.append(ctx.axes(r)[j])
        if not group:
            out.append(ONE if out_shape[i] == 1 else ctx.fresh(out_shape[i], f"bcast{i}", "broadcast"))
            continue
        for g in group[1:]:
            ctx.unify(group[0], g)
        out.append(group[0])
    return out


# ------------------------------------------------------------------------------------- MAC formulas
Axis = Layout | int
"""A size a MAC formula multiplies: an axis layout (its kept size follows the labels) or an int."""
Monomial = tuple[int, list[Any]]
"""``(coefficient, [dim, ...])``: the coefficient times the product of the dims."""


class NotUnderstood(Exception):
    """A node carries MACs, but its operands do not have a form its formula models."""


class Operands(Protocol):
    """What a MAC formula reads of one op call: the dims of its tensor operands by schema name,
    those of its outputs, and its other arguments. A dim is an :data:`Axis` for the cost model and
    an int for a FLOP count; a formula only multiplies them."""

    def dims(self, name: str) -> list[Any]:
        """The dims of tensor argument ``name``; raises :class:`NotUnderstood` when it is not a tensor."""

    def out(self, i: int = 0) -> list[Any]:
        """The dims of output ``i``."""

    def arg(self, name: str, default: Any = None) -> Any:
        """A non-tensor argument (``transposed``, ``groups``...)."""

    def is_tensor(self, name: str) -> bool:
        """Whether argument ``name`` is given, as a tensor."""


MacFormula = Callable[[Operands], list[Monomial]]
MAC_FORMULAS: dict[str, MacFormula] = {}
"""ATen op packet -> its MACs as monomials over operand dims. Every other op counts zero."""


def macs(*names: str) -> Callable[[MacFormula], MacFormula]:
    """Register ``fn`` as the MAC formula of every op packet in ``names``."""
    return _register(MAC_FORMULAS, names)


def prod_dims(dims: Sequence[Any]) -> int:
    """The product of int dims (a formula evaluated on shapes)."""
    out = 1
    for d in dims:
        out *= int(d)
    return out
