"""Running a model under a traced call's conditions without side effects: modules' train/eval
flags as given, random decisions seeded, buffers (BN running statistics) put back afterwards.
Tracing, verification, the probe and the oracle all run models this way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .conditions import deterministic

Call = tuple[tuple[Any, ...], dict[str, Any], dict[str, bool]]
"""A traced call: ``(args, kwargs, module path -> training flag)``."""


@contextlib.contextmanager
def kept_buffers(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Put ``model``'s buffers (not on ``meta``) back as they were when the block ends."""
    saved = ({n: b.detach().clone() for n, b in model.named_buffers() if b.device.type != "meta"}
             if enabled else {})
    try:
        yield
    finally:
        if saved:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    if n in saved and b.shape == saved[n].shape:
                        b.copy_(saved[n])


@contextlib.contextmanager
def in_modes(model: nn.Module, modes: dict[str, bool] | None,
             seed: Literal["training", "always", "never"] = "training",
             named: list[tuple[str, nn.Module]] | None = None) -> Iterator[None]:
    """Run the block with each module's train/eval flag from ``modes`` (``None``: as they are),
    flags put back afterwards. ``seed``: when to run under
    :func:`~pruning_ir._trace.conditions.deterministic` (RNGs seeded; dropout keeps everything
    when a module trains): with a module in training mode (a trace and its re-trace, or two
    models, take the same path), always, or never (the user's own randomness). ``named``:
    ``list(model.named_modules())`` when the caller has it."""
    modules = list(model.named_modules()) if named is None else named
    before = [m.training for _, m in modules]
    if modes is not None:
        for path, m in modules:
            flag = modes.get(path, m.training)
            if flag != m.training:  # Module.__setattr__ is slow, and most flags stay
                m.training = flag
    training = any(m.training for _, m in modules)
    seeded = seed == "always" or (seed == "training" and training)
    try:
        with deterministic(keep_all=training) if seeded else contextlib.nullcontext():
            yield
    finally:
        for (_, m), flag in zip(modules, before, strict=True):
            if flag != m.training:
                m.training = flag


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """``model.eval()`` for each of ``models`` (through the model's own ``train``, which may do more
    than set flags: re-parameterised blocks fuse their branches) for the block; every module's
    flag put back after."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def call_modes(model: nn.Module, modes: dict[str, bool] | None,
               seed: Literal["training", "always", "never"] = "training") -> Iterator[None]:
    """:func:`in_modes`, with buffers put back when a module trains (it updates them), so checks
    have no side effects."""
    with in_modes(model, modes, seed), kept_buffers(model, any(m.training for m in model.modules())):
        yield


def as_pytree(out: Any) -> Any:
    """HF ``ModelOutput`` and other dict-likes flatten through their values."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return {k: as_pytree(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [as_pytree(o) for o in out]
    if hasattr(out, "to_tuple"):
        return [as_pytree(o) for o in out.to_tuple()]
    return out


def flat_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model's output, in pytree order."""
    return [t for t in pytree.tree_leaves(as_pytree(out)) if isinstance(t, torch.Tensor)]


def run_call(model: nn.Module, call: Call) -> list[torch.Tensor]:
    """Flat tensor outputs of one traced call ``(args, kwargs, modes)``, without gradients."""
    args, kwargs, modes = call
    with torch.no_grad(), call_modes(model, modes):
        return flat_tensors(model(*args, **kwargs))
