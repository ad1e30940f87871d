"""Verify a rewrite: the slim model runs on the example inputs and keeps output shapes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from torch import nn

from .._ir.chains import vanishing_nodes
from .._ir.graph import Graph, Node, constant_nodes
from .._ir.ops import COPIES, SHAPE_ONLY, value_sized
from .._ir.snapshot import Snapshot
from .._trace.recorder import record
from .._trace.run import call_modes
from ..errors import RewriteError, TraceError


class VerifyFailure(RewriteError):
    """The slim model failed its verification; ``module`` is where it raised or computed the
    unexpected shape (if known).

    ``kind``: ``"raised"`` (the slim model raised ``cause`` on a traced call), ``"shapes"`` (it
    ran but changed its output shapes), ``"graph"`` (an op's shape differs from the pruned IR's
    prediction), ``"trace"`` (the engine could not trace what the slim model does). ``summary`` is
    the message without the advice to the user (what a report lists as a reason).
    """

    def __init__(self, message: str, module: str | None, kind: str = "graph", cause: BaseException | None = None,
                 summary: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.kind = kind
        self.cause = cause
        self.summary = summary if summary is not None else message


def size_refused(exc: BaseException | None) -> bool:
    """Whether ``exc`` is torch refusing a view/reshape to a size Python computed (the element
    count does not fit): past any kernel, so no alignment of the widths helps."""
    return isinstance(exc, RuntimeError) and "is invalid for input of size" in str(exc)


def _call_name(k: int) -> str:
    return "the example inputs" if k == 0 else f"traced call {k + 1}"


def _hint(unresolved: Sequence[str]) -> str:
    """What verification failures add about attributes the rewrite left ambiguous."""
    return ("; ambiguous attributes: " + "; ".join(unresolved)) if unresolved else ""


def retrace(model: nn.Module, expected: Snapshot, k: int, leaf_modules: Sequence[object],
            unresolved: Sequence[str] = ()) -> Graph:
    """Trace the slim ``model`` on traced call ``k`` of ``expected`` (in that call's modes, without
    side effects); a :class:`VerifyFailure` when the model raises (``"raised"``, with the module it
    raised in) or the engine cannot trace what it does (``"trace"``)."""
    args, kwargs, modes = expected.calls()[k]
    try:
        with call_modes(model, modes):
            return record(model, args, kwargs, list(leaf_modules))
    except TraceError as exc:
        if not exc.raised or exc.__cause__ is None:
            raise VerifyFailure(str(exc), exc.module, kind="trace", cause=exc) from exc
        cause = exc.__cause__
        summary = (f"the slim {type(model).__name__} does not run on {_call_name(k)} (in module "
                   f"'{exc.module or '<root>'}'): {type(cause).__name__}: {cause}{_hint(unresolved)}")
        raise VerifyFailure(
            f"{summary}. Some Python code holds a shape the engine could not update: pass that module in "
            "leaf_modules=[...] (its channels stay unprunable) or report the model.",
            exc.module, kind="raised", cause=cause, summary=summary,
        ) from cause


def _check_outputs(model: nn.Module, expected: Snapshot, k: int, outs_expected: list[int], got: Graph,
                   unresolved: Sequence[str]) -> None:
    """Raise a ``"shapes"`` :class:`VerifyFailure` when the slim model changed the output shapes of
    traced call ``k`` (value-dependent models aside: their op-by-op comparison frees the axes that
    values may size)."""
    if not outs_expected or value_dependent(expected):
        return
    shapes = [tuple(got.values[v].shape) for v in got.outputs]
    want = ([tuple(s) for s in expected.output_shapes] if k == 0
            else [tuple(expected.graph.values[v].shape) for v in outs_expected])
    if shapes[: len(want)] != want:
        raise VerifyFailure(f"the slim {type(model).__name__} changed its output shapes on {_call_name(k)}: {shapes} "
                            f"instead of {want}{_hint(unresolved)}.", None, kind="shapes")


def verify_graph(model: nn.Module, expected: Snapshot, unresolved: list[str], leaf_modules: Sequence[object],
                 first: Graph | None = None) -> None:
    """Re-trace the slim model on every traced call and check that every op produces the shapes
    the pruned IR predicts (so the model runs, and keeps its output shapes). A plain forward is
    not enough: Python that computes ``c // 2`` from a pruned ``c`` can reshape the right number
    of elements into the wrong factorisation. ``first``: the re-trace of the example call, when
    the caller already made it on the model as it is (the forward that learns literal sizes)."""
    chains = expected.view_chains()
    # ops of a view chain that is the identity at the new sizes may be skipped by the slim
    # model's code (``repeat_kv`` returns early once a query group has one head)
    vanish = vanishing_nodes(chains, lambda vid: expected.graph.values[vid].shape)
    # and results computed from factory ops alone may come from a Python cache in one run and
    # be recomputed in the other
    vanish |= expected.constant_nodes()
    graph = expected.graph
    stock = _stock_paths(model)
    # every call runs (and keeps its output shapes) before any op is compared, so that a model
    # that raises on some call is reported as raising there
    traces = []
    for k, (_, outs_expected) in enumerate(graph.call_sequences()):
        traces.append(first if k == 0 and first is not None else retrace(model, expected, k, leaf_modules, unresolved))
        _check_outputs(model, expected, k, outs_expected, traces[-1], unresolved)
    for k, ((sequence, _), got) in enumerate(zip(graph.call_sequences(), traces, strict=True)):
        what = "" if k == 0 else f" (traced call {k + 1})"
        nodes = [graph.nodes[i] for i in sequence]
        try:
            _compare(model, _signature(nodes, graph, stock), _signature(got.nodes, got, stock), vanish,
                     constant_nodes(got), what)
        except VerifyFailure:
            if not value_dependent(expected) or _values_read(nodes, graph) == _values_read(got.nodes, got):
                # sizes can follow the values only where the values the code read changed
                raise
            # sizes along activation axes may follow the values (a duration predictor's output
            # length): compare again with those free, channel sizes still checked
            free = _free(expected)
            # (a view or slice may be the identity at the new sizes: torch then runs none)
            shape_only = {n.nid for n in nodes if _VIEW.get(n.op, n.op) in SHAPE_ONLY}
            _compare(model, _signature(nodes, graph, stock, free), _signature(got.nodes, got, stock, keep_ones=True),
                     vanish | shape_only, constant_nodes(got), what, same=_loose_same)
            expected.cache["loose_verified"] = True


class Sig(NamedTuple):
    """One entry of a call's shape signature (see :func:`_signature`)."""

    op: str
    shapes: list[tuple[int | None, ...]]
    module: str
    nid: int


def _strict_same(e: Sig, g: Sig) -> bool:
    return e.op == g.op and e.shapes == g.shapes


def _dims_match(exp: tuple[int | None, ...], got: tuple[int | None, ...]) -> bool:
    """``got`` has the sizes of ``exp`` (``None``: any size), size-1 axes aside on either side."""
    @functools.cache
    def m(i: int, j: int) -> bool:
        if i == len(exp):
            return all(d == 1 for d in got[j:])
        if j == len(got):
            return all(e in (1, None) for e in exp[i:])
        e, g = exp[i], got[j]
        return (((e is None or e == g) and m(i + 1, j + 1)) or (e in (1, None) and m(i + 1, j))
                or (g == 1 and m(i, j + 1)))

    return m(0, 0)


def _loose_same(e: Sig, g: Sig) -> bool:
    return e.op == g.op and len(e.shapes) == len(g.shapes) and all(
        _dims_match(a, b) for a, b in zip(e.shapes, g.shapes, strict=True))


def value_dependent(snap: Snapshot) -> bool:
    """Whether the trace turned tensor values into Python numbers or sizes (see
    :data:`~pruning_ir._ir.ops.DATA_DEPENDENT`)."""
    return any(i.kind == "data_dependent" for i in snap.issues)


def _values_read(nodes: Sequence[Node], graph: Graph) -> list[object]:
    """What the code read off tensor values, in order: the Python numbers of ``item()`` /
    ``int(t)`` and the output shapes of value-sized ops (``nonzero``)."""

    out: list[object] = []
    for n in nodes:
        if not value_sized(n):
            continue
        shape = next((graph.values[o].shape for o in n.outputs if o >= 0), None)
        out.append((n.op, n.kwargs.get("__value__"), shape))
    return out


def _free(snap: Snapshot) -> Callable[[int], tuple[bool, ...]]:
    """Value id -> for each axis, whether no parameter's channels lie along it (batch,
    sequence, spatial axes, a positional table's rows: what values may size). Channel axes of
    groups that cannot be pruned (a model output's) are compared too."""
    sp = snap.spaces
    kinds = {name: snap.graph.values[vid].kind for name, vid in snap.graph.params.items()}
    leaves = {sp.find(g.leaf) for g in snap.groups if any(kinds.get(m) == "param" for m, _ in g.members)}
    values = snap.graph.values

    def free(vid: int) -> tuple[bool, ...]:
        v = values[vid]
        if len(v.axes) != len(v.shape):
            return tuple(False for _ in v.shape)
        return tuple(not any(sp.find(leaf) in leaves for t in sp.normalize(ax) for leaf, _, _ in t)
                     for ax in v.axes)

    return free


def _compare(model: nn.Module, exp_sig: list[Sig], got_sig: list[Sig], vanish: set[int], extra: set[int],
             what: str, same: Callable[[Sig, Sig], bool] = _strict_same) -> None:
    i = j = 0
    while i < len(exp_sig) or j < len(got_sig):
        e = exp_sig[i] if i < len(exp_sig) else None
        g = got_sig[j] if j < len(got_sig) else None
        if e is not None and (g is None or not same(e, g)) and e.nid in vanish:
            i += 1
            continue
        if g is not None and (e is None or not same(e, g)) and g.nid in extra:
            j += 1
            continue
        if e is None or g is None or not same(e, g):
            where = (g or e).module  # type: ignore[union-attr]
            raise VerifyFailure(
                f"the slim {type(model).__name__} runs, but in module '{where or '<root>'}'{what} it computes "
                f"{g and (g.op, g.shapes)} where the pruned IR predicts {e and (e.op, e.shapes)}: Python code "
                "computes a size the engine could not update", where)
        i += 1
        j += 1


# copies never change shapes, and a reshape is a view or a copy depending on strides
_VIEW = {"aten._unsafe_view": "aten.view", "aten.reshape": "aten.view", "aten._reshape_alias": "aten.view"}


def _stock_paths(model: nn.Module) -> set[str]:
    """Paths of stock ``torch.nn`` layers whose sizes are read off their weights (Linear, convs,
    norms, Embedding): how torch decomposes their forward is torch's business and changes with
    the sizes (``F.linear`` with one input feature runs a ``view`` and a product instead of
    ``t`` and ``mm``), so verification compares their outputs, not their inner ops."""
    from .patch import _sized_by_attributes

    return {path for path, m in model.named_modules() if path and _sized_by_attributes(m)}


def _signature(nodes: list[Node], graph: Graph, stock: AbstractSet[str] = frozenset(),
               free: Callable[[int], tuple[bool, ...]] | None = None,
               keep_ones: bool = False) -> list[Sig]:
    """(op, primary output shape without its size-1 axes, module, node id) of every node that can
    change a shape; auxiliary outputs (saved statistics) are left out: they differ between
    backends. The ops of one call of
    a stock layer (``stock``) count as one entry with the shape of its last op. With ``free``
    (value id -> which axes are not checked), shapes keep every axis, ``None`` where free; with
    ``keep_ones``, size-1 axes too (both for :func:`_loose_same`)."""
    out: list[Sig] = []
    for n in nodes:
        # where size-1 axes sit is how torch decomposes (einsum permutes them as it likes once a
        # pruned axis has one entry left); it moves no data, so it is not compared
        shapes: list[tuple[int | None, ...]]
        if free is not None:
            shapes = [tuple(None if f else d for d, f in zip(graph.values[o].shape, free(o), strict=True))
                      for o in n.outputs[:1] if o >= 0]
        elif keep_ones:
            shapes = [tuple(graph.values[o].shape) for o in n.outputs[:1] if o >= 0]
        else:
            shapes = [tuple(d for d in graph.values[o].shape if d != 1) for o in n.outputs[:1] if o >= 0]
        if n.module in stock:
            entry = Sig(f"module {n.module}", shapes, n.module, n.nid)
            if out and out[-1].module == n.module and out[-1].op == entry.op:
                out[-1] = entry  # the same call goes on: keep its last output
            else:
                out.append(entry)
            continue
        if n.op in COPIES:
            continue
        out.append(Sig(_VIEW.get(n.op, n.op), shapes, n.module, n.nid))
    return out
