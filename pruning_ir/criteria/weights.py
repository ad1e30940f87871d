"""Data-free criteria: weight norms, FPGM, BN scale, random.

All of them score a label by the parameter entries it removes. A label of a coupled
group removes entries from several parameters (the producing layer's filters, the
consuming layer's input columns, a norm's scale...); the documented reduction for
each criterion says how those *members* are combined. Within a member, a label may
own several entries of the axis (an attention head owns ``head_dim`` rows).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._ir.labels import LabelGroup
from .._ir.measure import member_slots, named_tensors, per_index, scatter_slots
from ..errors import InvalidInputError
from .base import Criterion, require_weights

if TYPE_CHECKING:
    from ..ir import PruningIR

log = logging.getLogger(__name__)


def _members(crit: Criterion, group: LabelGroup,
             min_dim: int = 2) -> Iterator[tuple[str, torch.Tensor, int, torch.Tensor, torch.Tensor]]:
    """Floating parameters (not buffers) of ``group`` with ``dim() >= min_dim``; all of them
    when the group has none that large."""
    tensors = named_tensors(crit.ir.model)
    graph = crit.snap.graph
    rows = []
    for name, axis, sel, slots in member_slots(crit.snap, group):
        if graph.values[graph.params[name]].kind != "param":
            continue
        t = tensors[name]
        if not t.is_floating_point():
            continue
        require_weights(crit, t, name)
        rows.append((name, t.detach(), axis, sel, slots))
    big = [r for r in rows if r[1].dim() >= min_dim]
    yield from (big or rows)


class _NormCriterion(Criterion):
    p: float = 1.0

    def _finish(self) -> dict[int, torch.Tensor]:
        out = {}
        for g in self.snap.prunable_groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            n = 0
            for _name, t, axis, sel, slots in _members(self, g):
                powered = per_index(t.abs().double().pow(self.p), axis, "mean")
                entries = scatter_slots(powered, sel, slots, g.size).cpu()
                count = torch.bincount(slots, minlength=g.size).clamp_min(1)
                total += entries / count
                n += 1
            out[g.gid] = (total / max(n, 1)).pow(1.0 / self.p)
        return out


class L1NormCriterion(_NormCriterion):
    """L1 filter norm (Li et al. 2017), taken over every weight a label removes.

    Score of a label: for each weight tensor (``dim() >= 2``) the label slices, the mean
    ``|w|`` of the entries it removes (a mean, so a 3x3 conv and a 1x1 conv weigh
    alike); the coupled members are averaged. Groups with only 1-D parameters use those.
    """

    name = "l1"
    p = 1.0


class L2NormCriterion(_NormCriterion):
    """L2 filter norm: as :class:`L1NormCriterion` with ``sqrt(mean(w**2))`` per member
    (root of the members' mean of mean squares)."""

    name = "l2"
    p = 2.0


class FPGMCriterion(Criterion):
    """Filter pruning via geometric median (He et al. 2019).

    For each weight member, a label's vector is the entries it removes (all of a head's
    rows for a head label); its score is the sum of Euclidean distances to the other
    labels' vectors, divided by the member's mean, so that each member counts alike;
    members are summed. Labels near the geometric median (small scores) are the most
    replaceable and go first.
    """

    name = "fpgm"

    def _finish(self) -> dict[int, torch.Tensor]:
        out = {}
        for g in self.snap.prunable_groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            for _name, t, axis, sel, slots in _members(self, g):
                rows = t.double().movedim(axis, 0).reshape(t.shape[axis], -1).index_select(0, sel.to(t.device)).cpu()
                counts = torch.bincount(slots, minlength=g.size)
                if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
                    order = torch.argsort(slots, stable=True)
                    vecs = rows[order].reshape(g.size, -1)
                else:  # uneven ownership (a partial concat): compare per-label sums
                    vecs = torch.zeros(g.size, rows.shape[1], dtype=torch.float64).index_add_(0, slots, rows)
                dist = torch.cdist(vecs[None], vecs[None])[0].sum(1)
                mean = float(dist.mean())
                total += dist / mean if mean > 0 else dist
            out[g.gid] = total
        return out


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)):
        return True
    return "norm" in type(module).__name__.lower()


class BNScaleCriterion(Criterion):
    """Network slimming (Liu et al. 2017): ``|gamma|`` of the normalisation layers.

    A label's score is the mean ``|gamma|`` over the norm layers (BatchNorm, GroupNorm,
    LayerNorm, RMSNorm, and classes named ``*Norm*``) whose scale it slices. Groups with
    no norm scale have no BN evidence: they are scored with :class:`L1NormCriterion`
    instead and listed in a log warning (``fallback_groups`` after scoring).
    """

    name = "bn_scale"

    def _finish(self) -> dict[int, torch.Tensor]:
        modules = dict(self.ir.model.named_modules())
        out: dict[int, torch.Tensor] = {}
        missing: list[LabelGroup] = []
        for g in self.snap.prunable_groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            n = 0
            for name, t, _axis, sel, slots in _members(self, g, min_dim=1):
                owner, _, leaf = name.rpartition(".")
                if t.dim() != 1 or leaf != "weight" or not _is_norm(modules.get(owner, nn.Identity())):
                    continue
                total += scatter_slots(t.abs().double(), sel, slots, g.size).cpu() / torch.bincount(
                    slots, minlength=g.size).clamp_min(1)
                n += 1
            if n:
                out[g.gid] = total / n
            else:
                missing.append(g)
        self.fallback_groups = [g.gid for g in missing]
        if missing:
            log.warning("bn_scale: %d groups have no normalisation scale and are scored by L1 norm: %s",
                        len(missing), ", ".join(f"g{g.gid}" for g in missing[:8]))
            l1 = L1NormCriterion(self.ir, self.snapshot_name)._finish()
            out.update({g.gid: l1[g.gid] for g in missing})
        return out


class RandomCriterion(Criterion):
    """Uniform random scores (the baseline every criterion must beat), reproducible by ``seed``."""

    name = "random"

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *, seed: int = 0, progress: bool = False) -> None:
        super().__init__(ir, snapshot_name, progress=progress)
        if not isinstance(seed, int):
            raise InvalidInputError(f"RandomCriterion(seed={seed!r}): the seed must be an int.")
        self.seed = seed

    def _finish(self) -> dict[int, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        return {g.gid: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in self.snap.prunable_groups}

    def __repr__(self) -> str:
        return f"RandomCriterion(seed={self.seed})"
