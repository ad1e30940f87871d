"""Physically slim a model: slice every parameter/buffer a removed label touches.

The slim module is a deep copy of the user's module in which each sliced
tensor is replaced (through ``deepcopy``'s memo, so tied weights stay tied and
nothing is copied twice); module attributes are then updated
(:mod:`pruning_ir._rewrite.attributes`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._ir.axes import keep_mask
from .._ir.measure import named_tensors
from .._ir.snapshot import Snapshot


def slice_tensor(t: torch.Tensor, masks: list[torch.Tensor | None]) -> torch.Tensor:
    out = t.detach()
    for d, m in enumerate(masks):
        if m is not None:
            idx = m.nonzero().squeeze(1).to(out.device)
            out = out.index_select(d, idx)
    return out.clone() if out is t else out


def sliced_tensors(snap: Snapshot, model: nn.Module, removed: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical parameter/buffer name -> its sliced tensor (only those that change)."""
    tensors = named_tensors(model)
    out: dict[str, torch.Tensor] = {}
    for name, vid in snap.graph.params.items():
        v = snap.graph.values[vid]
        masks = [keep_mask(snap.spaces, ax, removed) for ax in v.axes]
        if any(m is not None for m in masks):
            out[name] = slice_tensor(tensors[name], masks)
    return out


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def apply_slices(model: nn.Module, new: dict[str, torch.Tensor], inplace: bool) -> nn.Module:
    """Return ``model`` (or a deep copy) with the named tensors replaced."""
    tensors = named_tensors(model)
    replacement: dict[int, torch.Tensor] = {}
    for name, t in new.items():
        old = tensors[name]
        if isinstance(old, nn.Parameter):
            replacement[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad)
        else:
            replacement[id(old)] = t
    if not inplace:
        memo: dict[int, object] = dict(replacement)
        return copy.deepcopy(model, memo)
    for name, _ in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        old = tensors[name]
        if id(old) in replacement:
            mod, attr = _owner(model, name)
            if isinstance(old, nn.Parameter):
                mod._parameters[attr] = replacement[id(old)]  # type: ignore[assignment]
            else:
                mod._buffers[attr] = replacement[id(old)]
    return model
