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


def verify_forward(model: nn.Module, snap: Snapshot, unresolved: list[str]) -> None:
    hint = ("; ambiguous attributes: " + "; ".join(unresolved)) if unresolved else ""
    try:
        outs = run_model(model, snap)
    except Exception as exc:
        raise RewriteError(
            f"the slim {type(model).__name__} does not run on the example inputs: {type(exc).__name__}: {exc}"
            f"{hint}. Some Python code holds a shape the engine could not update: pass that module in "
            "leaf_modules=[...] (its channels stay unprunable) or report the model."
        ) from exc
    shapes = [tuple(t.shape) for t in outs]
    expected = [tuple(s) for s in snap.output_shapes]
    if snap.graph.outputs and shapes[: len(expected)] != expected:
        raise RewriteError(
            f"the slim {type(model).__name__} changed its output shapes: {shapes} instead of {expected}{hint}."
        )
