"""Per-label reductions over the parameters a group slices (default magnitude scores)."""

from __future__ import annotations

import torch
from torch import nn

from .axes import slot_map
from .labels import LabelGroup
from .snapshot import Snapshot


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    out.update(dict(model.named_buffers(remove_duplicate=False)))
    return out


def magnitude_scores(snap: Snapshot, model: nn.Module) -> dict[int, torch.Tensor]:
    """``group_l1`` of every prunable group, cached on the snapshot per model weights version."""
    tensors = named_tensors(model)
    key = tuple((name, tensors[name]._version, id(tensors[name])) for name in snap.graph.params if name in tensors)
    cache = snap.cache.get("magnitude")
    if cache is not None and cache[0] == key:
        return cache[1]
    scores = {g.gid: group_l1(snap, g, tensors) for g in snap.prunable_groups}
    snap.cache["magnitude"] = (key, scores)
    return scores


def group_l1(snap: Snapshot, group: LabelGroup, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean absolute value of the parameter entries each label of ``group`` removes.

    Each member (parameter axis) contributes the mean |w| of a label's slice, so
    parameters of different sizes weigh alike; members are summed. Buffers
    (running statistics) are skipped: they are not learned weights.
    """
    score = torch.zeros(group.size, dtype=torch.float64)
    for name, axis in group.members:
        vid = snap.graph.params[name]
        if snap.graph.values[vid].kind != "param":
            continue
        t = tensors[name]
        if t.device.type == "meta" or not t.is_floating_point():
            continue
        dims = [d for d in range(t.dim()) if d != axis]
        per_index = (t.detach().abs().mean(dims) if dims else t.detach().abs()).double()
        slots = slot_map(snap.spaces, snap.graph.values[vid].axes[axis], group.leaf)
        sel = slots >= 0
        contrib = torch.zeros(group.size, dtype=torch.float64).index_add_(0, slots[sel], per_index[sel].cpu())
        counts = torch.bincount(slots[sel], minlength=group.size).clamp_min(1)
        score += contrib / counts
    return score
