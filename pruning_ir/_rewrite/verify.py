"""Verify a rewrite: the slim model runs on the example inputs and keeps output shapes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .._ir.graph import Graph, constant_nodes, vanishing_nodes, view_chains
from .._ir.snapshot import Snapshot
from .._trace.recorder import _to_pytree, record
from ..errors import RewriteError, TraceError


@contextlib.contextmanager
def traced_modes(model: nn.Module, snap: Snapshot) -> Iterator[None]:
    """Run ``model`` as it was traced: each module's train/eval flag as at trace time, and
    buffers (BN running statistics) restored afterwards, so checks have no side effects."""
    modules = list(model.named_modules())
    before = [m.training for _, m in modules]
    for path, m in modules:
        m.training = snap.modes.get(path, m.training)
    saved = ({n: b.detach().clone() for n, b in model.named_buffers() if b.device.type != "meta"}
             if any(m.training for _, m in modules) else {})
    try:
        yield
    finally:
        for (_, m), flag in zip(modules, before, strict=True):
            m.training = flag
        if saved:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    if n in saved and b.shape == saved[n].shape:
                        b.copy_(saved[n])


def run_model(model: nn.Module, snap: Snapshot) -> list[torch.Tensor]:
    args, kwargs = snap.example
    with torch.no_grad(), traced_modes(model, snap):
        out = model(*args, **kwargs)
    flat, _ = pytree.tree_flatten(_to_pytree(out))
    return [t for t in flat if isinstance(t, torch.Tensor)]


class VerifyFailure(RewriteError):
    """The slim model failed its verification; ``module`` is where it raised (if known)."""

    def __init__(self, message: str, module: str | None) -> None:
        super().__init__(message)
        self.module = module


def _run_tracking(model: nn.Module, snap: Snapshot) -> tuple[list[torch.Tensor] | None, BaseException | None,
                                                             str | None]:
    """Run the model; on failure also return the innermost module that was running."""
    stack: list[str] = []
    handles = []
    for path, mod in model.named_modules():
        def pre(m: nn.Module, a: object, _p: str = path) -> None:
            stack.append(_p)

        def post(m: nn.Module, a: object, o: object, _p: str = path) -> None:
            if stack and stack[-1] == _p:
                stack.pop()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        return run_model(model, snap), None, None
    except Exception as exc:
        return None, exc, (stack[-1] if stack else None)
    finally:
        for h in handles:
            h.remove()


def verify_graph(model: nn.Module, expected: Snapshot, unresolved: list[str], leaf_modules: Sequence[object],
                 ran: bool = False) -> None:
    """Re-trace the slim model and check that every op produces the shapes the pruned IR
    predicts. A plain forward is not enough: Python that computes ``c // 2`` from a pruned
    ``c`` can reshape the right number of elements into the wrong factorisation.
    ``ran``: :func:`verify_forward` already passed on this model (skip that forward)."""
    if not ran:
        verify_forward(model, expected, unresolved)
    args, kwargs = expected.example
    try:
        with traced_modes(model, expected):
            got = record(model, args, kwargs, leaf_modules)  # type: ignore[arg-type]
    except TraceError as exc:
        raise VerifyFailure(str(exc), None) from exc
    exp_sig = _signature(expected.graph)
    got_sig = _signature(got)
    chains = expected.cache.get("view_chains")
    if chains is None:
        chains = expected.cache["view_chains"] = view_chains(expected.graph)
    # ops of a view chain that is the identity at the new sizes may be skipped by the slim
    # model's code (``repeat_kv`` returns early once a query group has one head)
    vanish = vanishing_nodes(chains, lambda vid: expected.graph.values[vid].shape)
    # and results computed from factory ops alone may come from a Python cache in one run and
    # be recomputed in the other
    vanish |= constant_nodes(expected.graph)
    extra = constant_nodes(got)
    i = j = 0
    while i < len(exp_sig) or j < len(got_sig):
        e = exp_sig[i] if i < len(exp_sig) else None
        g = got_sig[j] if j < len(got_sig) else None
        if e is not None and (g is None or e[:2] != g[:2]) and e[3] in vanish:
            i += 1
            continue
        if g is not None and (e is None or e[:2] != g[:2]) and g[3] in extra:
            j += 1
            continue
        if (e and e[:2]) != (g and g[:2]):
            where = (g or e)[2]  # type: ignore[index]
            raise VerifyFailure(
                f"the slim {type(model).__name__} runs, but in module '{where or '<root>'}' it computes "
                f"{g and g[:2]} where the pruned IR predicts {e and e[:2]}: Python code computes a size the "
                "engine could not update", where)
        i += 1
        j += 1


# copies never change shapes, and a reshape is a view or a copy depending on strides
_IDENTITY = {"aten.clone", "aten.alias", "aten.contiguous", "aten._to_copy", "aten.detach", "aten.lift_fresh_copy"}
_VIEW = {"aten._unsafe_view": "aten.view", "aten.reshape": "aten.view", "aten._reshape_alias": "aten.view"}


def _signature(graph: Graph) -> list[tuple[str, list[tuple[int, ...]], str, int]]:
    """(op, primary output shape, module, node id) of every node that can change a shape; auxiliary
    outputs (saved statistics) are left out: they differ between backends."""
    out = []
    for n in graph.nodes:
        if n.op in _IDENTITY:
            continue
        shapes = [graph.values[o].shape for o in n.outputs[:1] if o >= 0]
        out.append((_VIEW.get(n.op, n.op), shapes, n.module, n.nid))
    return out


def verify_forward(model: nn.Module, snap: Snapshot, unresolved: list[str]) -> None:
    """Raise :class:`VerifyFailure` unless the slim model runs and keeps its output shapes."""
    hint = ("; ambiguous attributes: " + "; ".join(unresolved)) if unresolved else ""
    outs, exc, where = _run_tracking(model, snap)
    if outs is None:
        raise VerifyFailure(
            f"the slim {type(model).__name__} does not run on the example inputs (in module "
            f"'{where or '<root>'}'): {type(exc).__name__}: {exc}{hint}. Some Python code holds a shape "
            "the engine could not update: pass that module in leaf_modules=[...] (its channels stay "
            "unprunable) or report the model.",
            where,
        ) from exc
    shapes = [tuple(t.shape) for t in outs]
    expected = [tuple(s) for s in snap.output_shapes]
    if snap.graph.outputs and shapes[: len(expected)] != expected:
        raise VerifyFailure(
            f"the slim {type(model).__name__} changed its output shapes: {shapes} instead of {expected}{hint}.",
            None,
        )
