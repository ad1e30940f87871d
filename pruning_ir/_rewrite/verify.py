"""Verify a rewrite: the slim model runs on the example inputs and keeps output shapes."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .._ir.snapshot import Snapshot
from .._trace.recorder import _to_pytree
from ..errors import RewriteError


def run_model(model: nn.Module, snap: Snapshot) -> list[torch.Tensor]:
    args, kwargs = snap.example
    with torch.no_grad():
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
