"""Joint loss curves: what removing a group's ``k`` lowest-ranked labels *together* really costs.

A criterion scores labels one at a time; removing many labels of one group compounds (on the
digits CNNs of ``benchmarks/criteria_diagnosis.py`` the loss of masking 88 of 96 channels of the
last stage is 70-1000x the sum of their one-label estimates, and the ratio differs from group to
group). Rankings *within* a group are good; what a global or budgeted selection needs across
groups is the joint cost. :func:`joint_loss_scores` measures it: for each prunable group and each
fraction, your ``evaluate(model)`` (a loss on your data, lower = better) on a working copy with the
group's lowest-ranked labels masked to zero; the curve is interpolated and made convex, and the
``j``-th label of the group in ranking order gets the ``j``-th marginal loss as its score. The
scores then add up, within a group, to measured joint losses, in the same units for every group.

The pieces (:class:`Task`, :func:`counts`, :class:`MaskedEvaluator`, :func:`convex_marginals`,
:func:`marginal_scores`) are shared with the Vitis-style sensitivity analysis of
:mod:`pruning_ir.workflows`, which measures the same curves with an accuracy metric and keeps them
in a resumable file.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._ir.axes import removed_axes
from .._ir.labels import Label, LabelGroup
from .._progress import progress_bar
from ..errors import CalibrationError, InvalidInputError
from .base import all_reduce_sum, check_fresh

if TYPE_CHECKING:
    from ..ir import PruningIR

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


@dataclass(frozen=True)
class Task:
    """One measurement: group ``gid`` with its ``removed`` lowest-ranked labels removed."""

    gid: int
    removed: int


def counts(g: LabelGroup, ratios: Sequence[float]) -> list[int]:
    """Distinct numbers of labels removed for ``ratios`` of group ``g`` (multiples of its step,
    at least one step kept; a ratio too small to remove a whole step is dropped)."""
    out: list[int] = []
    for r in ratios:
        n = int(r * g.size) // g.step * g.step
        n = min(n, g.size - g.step)
        if n > 0 and n not in out:
            out.append(n)
    return sorted(out)


def ranking(ir: PruningIR, snapshot_name: str = "main") -> dict[int, list[int]]:
    """Per prunable group: its label indices, first to remove first (lowest score; the IR's
    scores, or L1 norms when no criterion has scored it)."""
    scores = ir.label_scores(snapshot_name)
    if not scores:
        from .weights import L1NormCriterion

        L1NormCriterion(ir, snapshot_name).score()
        scores = ir.label_scores(snapshot_name)
    return {g.gid: [int(i) for i in torch.argsort(scores[g.gid], stable=True)]
            for g in ir.prunable_label_groups(snapshot_name)}


class MaskedEvaluator:
    """Evaluates tasks on a working copy of ``ir.model``: the removed labels' parameter entries
    set to zero (what the slim model computes), restored after each task; for a group whose notes
    say masking and pruning differ, the slim model itself (built without verification)."""

    def __init__(self, ir: PruningIR, order: dict[int, list[int]], snapshot_name: str = "main") -> None:
        self.ir, self.order, self.snapshot_name = ir, order, snapshot_name
        self.model = copy.deepcopy(ir.model)
        self.snap = ir.snapshot(snapshot_name)
        self.tensors = dict(self.model.named_parameters(remove_duplicate=False)) | dict(
            self.model.named_buffers(remove_duplicate=False))
        self.groups = {g.gid: g for g in ir.prunable_label_groups(snapshot_name)}

    def labels(self, task: Task) -> list[Label]:
        g = self.groups[task.gid]
        return [Label(self.snap.owner, g.gid, i) for i in self.order[g.gid][: task.removed]]

    @contextlib.contextmanager
    def pruned(self, task: Task) -> Iterator[nn.Module]:
        """The model with the task's labels removed (masked in place and restored on exit)."""
        labels = self.labels(task)
        if self.groups[task.gid].notes:
            with warnings.catch_warnings():  # an evaluation copy: its config is nobody's concern
                warnings.simplefilter("ignore")
                slim = self.ir.prune(labels=labels, name=self.snapshot_name, verify=False).model
            yield slim
            return
        removed = self.ir.check_labels(labels, self.snapshot_name)
        saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for pname, d, m in removed_axes(self.snap, removed):
                t = self.tensors.get(pname)
                if t is None:
                    continue
                idx = (~m).nonzero().squeeze(1).to(t.device)
                saved.append((t, d, idx, t.index_select(d, idx).clone()))
                t.index_fill_(d, idx, 0)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for t, d, idx, old in reversed(saved):
                    t.index_copy_(d, idx, old)


def convex_marginals(size: int, points: dict[int, float]) -> np.ndarray:
    """Marginal costs of removing labels ``1..size`` (in order) from the measured costs at
    ``points`` (removed count -> cost; 0 -> 0): linear between points, then the lower convex hull
    (so each further label costs at least as much as the one before); beyond the last point the
    last slope continues."""
    xs = np.array([0, *sorted(points)], dtype=float)
    ys = np.array([0.0, *[points[k] for k in sorted(points)]])
    ys = np.maximum.accumulate(ys)  # removing more never predicts a better score
    hull = [0]
    for i in range(1, len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (ys[b] - ys[a]) * (xs[i] - xs[a]) >= (ys[i] - ys[a]) * (xs[b] - xs[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    grid = np.arange(0, size + 1, dtype=float)
    hx, hy = xs[hull], ys[hull]
    slope = (hy[-1] - hy[-2]) / (hx[-1] - hx[-2]) if len(hull) > 1 else 0.0
    d = np.where(grid <= hx[-1], np.interp(grid, hx, hy), hy[-1] + slope * (grid - hx[-1]))
    return np.diff(d)


def marginal_scores(size: int, points: dict[int, float], order: Sequence[int]) -> torch.Tensor:
    """Label scores from a measured curve: the ``j``-th label of ``order`` gets the ``j``-th convex
    marginal cost, plus a hair per rank so that ties keep ``order``."""
    marg = convex_marginals(size, points)
    s = torch.zeros(size, dtype=torch.float64)
    idx = torch.tensor(list(order))
    s[idx] = torch.from_numpy(marg)
    eps = 1e-12 * (1 + float(np.abs(marg).max(initial=0.0)))
    s[idx] += torch.arange(size, dtype=torch.float64) * eps
    return s


def _loss(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"evaluate must return a number (a loss, lower = better), got {type(value).__name__}."
                               ) from None
    if not math.isfinite(out):
        raise CalibrationError(f"evaluate returned {out} (a loss must be finite): check the data and the loss.")
    return out


@dataclass
class JointCurves:
    """What :func:`joint_loss_scores` measured: the unmasked loss and, per group, removed count ->
    loss increase (``curves[gid][n]``), with the order the labels were removed in."""

    baseline: float
    curves: dict[int, dict[int, float]]
    order: dict[int, list[int]]


def joint_loss_scores(ir: PruningIR, evaluate: Callable[[nn.Module], Any], *,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS, snapshot_name: str = "main",
                      groups: Sequence[int] | None = None, progress: bool = False) -> JointCurves:
    """Rescale the IR's scores into measured joint losses (see the module docstring).

    Args:
        ir: a scored IR (any criterion: its scores give the order within each group; L1 norms
            when none has run).
        evaluate: ``evaluate(model) -> loss`` on your calibration data (lower = better), e.g. the
            mean cross-entropy over a few batches under ``torch.no_grad()``. Called once for the
            unmasked model and once per group and fraction, on a working copy (your model is
            not touched).
        fractions: fractions of each group's labels to measure (in ``(0, 1)``); between and beyond
            them the curve is interpolated.
        snapshot_name: the snapshot scored.
        groups: only these group ids (the others keep their scores; mind that their units differ).
        progress: a ``tqdm`` bar over the measurements.

    Under ``torch.distributed`` every rank measures every task on its own data and the losses are
    averaged over ranks (as the criteria all-reduce their statistics), so all ranks store the same
    scores, measured on all ranks' data.

    Returns:
        the measured curves; the new scores are in ``ir.snapshot(snapshot_name).scores``.
    """
    import torch.distributed as dist

    ratios = sorted({float(f) for f in fractions})
    if not ratios or any(not 0 < f < 1 for f in ratios):
        raise InvalidInputError(f"joint_loss_scores(fractions={list(fractions)!r}): give fractions in (0, 1).")
    if not callable(evaluate):
        raise InvalidInputError(f"joint_loss_scores(evaluate={evaluate!r}): give a function model -> loss.")
    check_fresh(ir, snapshot_name)
    order = ranking(ir, snapshot_name)
    all_groups = {g.gid: g for g in ir.prunable_label_groups(snapshot_name)}
    gids = list(all_groups) if groups is None else [int(g) for g in groups]
    unknown = [g for g in gids if g not in all_groups]
    if unknown:
        raise InvalidInputError(f"joint_loss_scores(groups=...): g{unknown[0]} is not a prunable group of "
                                f"snapshot {snapshot_name!r}; see ir.prunable_label_groups().")
    tasks = [Task(gid, n) for gid in gids for n in counts(all_groups[gid], ratios)]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    evaluator = MaskedEvaluator(ir, order, snapshot_name)
    was_training = evaluator.model.training
    values = torch.zeros(len(tasks) + 1, dtype=torch.float64)  # [baseline, task losses...]
    bar = progress_bar(progress, "joint loss curves", total=len(tasks) + 1)
    try:
        values[0] = _loss(evaluate(evaluator.model))
        if bar is not None:
            bar.update(1)
        for i, t in enumerate(tasks):
            with evaluator.pruned(t) as model:
                values[i + 1] = _loss(evaluate(model))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if evaluator.model.training != was_training:
        log.warning("joint_loss_scores: evaluate changed the model's mode; call model.eval() inside it if needed")
    values = all_reduce_sum(values)[0] / world
    base = float(values[0])
    curves: dict[int, dict[int, float]] = {gid: {} for gid in gids}
    for i, t in enumerate(tasks):
        curves[t.gid][t.removed] = max(float(values[i + 1]) - base, 0.0)
    snap = ir.snapshot(snapshot_name)
    scores = dict(snap.scores)
    for gid in gids:
        scores[gid] = marginal_scores(all_groups[gid].size, curves[gid], order[gid])
    snap.scores = scores
    snap.score_source = f"joint loss curves over {snap.score_source or 'L1 norms'}"
    ir.mark_scored(snapshot_name)
    return JointCurves(base, curves, {g: order[g] for g in gids})
