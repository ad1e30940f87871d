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


def slice_tensor(t: torch.Tensor, index: list[torch.Tensor | None]) -> torch.Tensor:
    """``t`` restricted to ``index[d]`` along each axis ``d`` (``None``: the whole axis).

    One ``index_select`` per sliced axis, innermost first: measured faster on CPU than a single
    advanced-indexing gather (2.2 ms vs 4.3 ms for a 512x512x3x3 conv weight)."""
    out = t.detach()
    dims = [d for d, ix in enumerate(index) if ix is not None]
    if not dims:
        return out.clone()
    for d in reversed(dims):
        out = out.index_select(d, index[d].to(out.device))  # type: ignore[union-attr]
    return out


def sliced_tensors(snap: Snapshot, model: nn.Module, removed: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical parameter/buffer name -> its sliced tensor (only those that change)."""
    tensors = named_tensors(model)
    out: dict[str, torch.Tensor] = {}
    cache: dict[object, torch.Tensor | None] = {}  # a conv weight and its norm's tensors share layouts
    for name, vid in snap.graph.params.items():
        v = snap.graph.values[vid]
        index: list[torch.Tensor | None] = []
        for ax in v.axes:
            if ax not in cache:
                m = keep_mask(snap.spaces, ax, removed)
                cache[ax] = None if m is None else m.nonzero().squeeze(1)
            index.append(cache[ax])
        if any(ix is not None for ix in index):
            out[name] = slice_tensor(tensors[name], index)
    return out


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


_TREE = ("_parameters", "_buffers", "_modules")


def copy_module_tree(model: nn.Module, tensors: dict[int, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` that takes its parameters/buffers from ``tensors`` (by id of
    the original), clones the others, and deep-copies every other attribute (one memo, so
    shared objects stay shared and tied weights stay tied). Much faster than ``deepcopy``
    on the whole tree, whose cost is dominated by walking the modules' internals."""
    memo: dict[int, object] = dict(tensors)
    mods = list(model.modules())
    for m in mods:
        memo[id(m)] = m.__class__.__new__(m.__class__)
    for m in mods:
        new = memo[id(m)]
        d: dict[str, object] = {}
        for k, v in m.__dict__.items():
            if k == "_modules":
                d[k] = {n: (None if c is None else memo[id(c)]) for n, c in v.items()}
            elif k in ("_parameters", "_buffers"):
                entries: dict[str, object] = {}
                for n, t in v.items():
                    if t is None:
                        entries[n] = None
                    elif id(t) not in memo:
                        clone = t.detach().clone()
                        memo[id(t)] = nn.Parameter(clone, t.requires_grad) if isinstance(t, nn.Parameter) else clone
                        entries[n] = memo[id(t)]
                    else:
                        entries[n] = memo[id(t)]
                d[k] = entries
            else:
                d[k] = copy.deepcopy(v, memo)
        new.__dict__.update(d)
    return memo[id(model)]  # type: ignore[return-value]


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
        return copy_module_tree(model, replacement)
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
