"""One-step pruning (Vitis' ``search``): candidate subnetworks at a MACs target, each recalibrated
(adaptive BN: the user's ``calibration_fn`` runs it in training mode) and scored by ``eval_fn``.

Each candidate's BatchNorm statistics are reset before ``calibration_fn`` runs and accumulated
as a plain average over its batches (:func:`adaptive_bn`). A candidate is a number of labels kept
per group (the lowest-ranked labels removed, as in the analysis), with the MACs removed within
1 % of ``removal_ratio``: a random direction of per-group removal shares (each in
``[SHARE_LOW, 1]``) is scaled by bisection until the IR's MACs count meets the target (then
rounded to the groups' steps and ``channel_divisible``). Strategy ``"random"`` draws every
candidate so; ``"evolution"`` draws the first half so and then, generation by generation, mutates
the best candidates found (each group's share moved by a random step, rescaled to the target) --
the refinement around the best that EagleEye-style searches use.

Results go to a JSON ``.search`` file, written after every candidate (resumable like the
analysis; candidates are a function of the seed and of the scores already found, so a resumed
search draws the same ones), and are shared over ``torch.distributed`` ranks generation by
generation.
"""

from __future__ import annotations

import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .._distributed import barrier, gather_objects, rank_world, require_same
from .._ir.labels import Label, LabelGroup
from .._progress import progress_bar
from ..cost import MacsModel
from ..errors import InvalidInputError
from ..ir import PruningIR
from .sensitivity import _score

log = logging.getLogger(__name__)

TOLERANCE = 0.01
MAX_REMOVED = 0.9  # of a group's labels, in any candidate
GENERATION = 16  # candidates per generation (evolution), before dividing over ranks
SHARE_LOW = 0.33
"""Random candidates draw each group's relative share of the removal from ``[SHARE_LOW, 1]``
(then scaled to the MACs target): shares drawn from ``[0, 1]`` empty some groups and leave
others whole, and at a 70 % target nearly every such network collapses (measured on digits:
every one of 24 candidates at chance accuracy)."""


def _kept(groups: list[LabelGroup], fractions: dict[int, float], scale: float, step: int) -> dict[int, int]:
    out = {}
    for g in groups:
        s = max(g.step, step) if g.size % max(g.step, step) == 0 else g.step
        removed = int(min(MAX_REMOVED, fractions[g.gid] * scale) * g.size) // s * s
        out[g.gid] = max(s, g.size - removed)
    return out


def at_target(macs: MacsModel, groups: list[LabelGroup], fractions: dict[int, float], removal_ratio: float,
              step: int) -> tuple[dict[int, int], float] | None:
    """Kept counts along ``fractions`` (per group, relative) removing ``removal_ratio`` of the MACs
    within :data:`TOLERANCE`, and the fraction removed; ``None`` when no scale reaches it."""
    base = macs.baseline()

    def removed(scale: float) -> tuple[dict[int, int], float]:
        kept = _kept(groups, fractions, scale, step)
        return kept, 1 - macs.cost_for_counts(kept) / base

    lo, hi = 0.0, 1.0
    while removed(hi)[1] < removal_ratio and hi < 64:
        hi *= 2
    best: tuple[dict[int, int], float] | None = None
    for _ in range(40):
        mid = (lo + hi) / 2
        kept, got = removed(mid)
        closer = best is None or abs(got - removal_ratio) < abs(best[1] - removal_ratio)
        if abs(got - removal_ratio) <= TOLERANCE and closer:
            best = (kept, got)
        if got < removal_ratio:
            lo = mid
        else:
            hi = mid
    return best


class SearchStore:
    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def load(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = json.loads(self.path.read_text())
        return list(data["candidates"]) if data.get("key") == self.key else []

    def save(self, candidates: list[dict[str, Any]], complete: bool, meta: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({**meta, "key": self.key, "complete": complete, "candidates": candidates},
                                  indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def _draw(rng: random.Random, gids: list[int], parents: list[dict[str, Any]]) -> dict[int, float]:
    if not parents:  # relative shares within a factor of 3 of each other: no group emptied at random
        return {gid: rng.uniform(SHARE_LOW, 1.0) for gid in gids}
    best = sorted(parents, key=lambda c: -c["score"])[: max(2, len(parents) // 8)]
    parent = rng.choice(best)["fractions"]
    return {gid: min(1.0, max(SHARE_LOW / 2, float(parent[str(gid)]) + rng.gauss(0, 0.15))) for gid in gids}


class _Plan:
    """Which candidate index ``j`` is: random for the first half (all of them with ``"random"``),
    then generations of :data:`GENERATION` mutating the best of the candidates before the
    generation. Candidate ``j`` draws from its own generator (seed, j), so a resumed or
    distributed search draws exactly the candidates a single uninterrupted run draws."""

    def __init__(self, num_subnet: int, evolve: bool, seed: int) -> None:
        self.half = num_subnet // 2 if evolve else num_subnet
        self.num_subnet, self.seed = num_subnet, seed

    def generation(self, j: int) -> tuple[int, int]:
        """``[start, end)`` of the block of indices ``j`` belongs to (candidates of one block
        depend only on those before ``start``)."""
        if j < self.half:
            return 0, self.half
        start = self.half + (j - self.half) // GENERATION * GENERATION
        return start, min(start + GENERATION, self.num_subnet)

    def draw(self, j: int, found: list[dict[str, Any]], macs: MacsModel, groups: list[LabelGroup],
             removal_ratio: float, step: int) -> dict[str, Any] | None:
        rng = random.Random(f"{self.seed}:{j}")
        parents = found[: self.generation(j)[0]] if j >= self.half else []
        for _ in range(50):
            fr = _draw(rng, [g.gid for g in groups], parents)
            hit = at_target(macs, groups, fr, removal_ratio, step)
            if hit is not None:
                return {"index": j, "fractions": {str(k): v for k, v in fr.items()},
                        "kept": {str(k): v for k, v in hit[0].items()}, "removed_macs": hit[1]}
        return None


def run_search(ir: PruningIR, order: dict[int, list[int]], gids: list[int], store: SearchStore, *,
               calibration_fn: Callable[..., Any], calib_args: Sequence[Any], eval_fn: Callable[..., Any],
               eval_args: Sequence[Any], num_subnet: int, removal_ratio: float, channel_divisible: int, seed: int,
               strategy: str, progress: bool, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate ``num_subnet`` candidates (resuming what ``store`` holds); all results, in order."""
    rank, world = rank_world()
    found = store.load()[:num_subnet]
    require_same((store.key, len(found)), world,
                 "the search's fingerprints (model weights, prunable groups, settings, ranking) or resume points")
    groups = [g for g in ir.prunable_label_groups() if g.gid in gids]
    macs = MacsModel(ir)
    plan = _Plan(num_subnet, strategy == "evolution", seed)
    bar = progress_bar(progress, "search", total=num_subnet)
    if bar is not None:
        bar.update(len(found))
    while len(found) < num_subnet:
        j0 = len(found)
        block = list(range(j0, min(j0 + world, plan.generation(j0)[1])))
        mine: list[dict[str, Any]] = []
        for j in block[rank::world] if world > 1 else block:
            c = plan.draw(j, found, macs, groups, removal_ratio, channel_divisible)
            if c is None:
                raise InvalidInputError(f"search: no subnetwork removes {removal_ratio} of the MACs within 1 % with "
                                        "the groups allowed (excludes / channel_divisible too strict?).")
            c["score"] = evaluate(ir, order, {int(k): v for k, v in c["kept"].items()}, calibration_fn, calib_args,
                                  eval_fn, eval_args)
            mine.append(c)
        if world > 1:
            mine = sorted((c for p in gather_objects(mine, world) for c in p), key=lambda c: c["index"])
        found += mine
        if rank == 0:
            store.save(found, False, meta)
        if bar is not None:
            bar.update(len(block))
    if bar is not None:
        bar.close()
    if rank == 0:
        store.save(found, True, meta)
    barrier(world)
    return found


def labels_for(ir: PruningIR, order: dict[int, list[int]], kept: dict[int, int]) -> list[Label]:
    snap = ir.snapshot()
    out = []
    for g in ir.prunable_label_groups():
        n = g.size - kept.get(g.gid, g.size)
        out += [Label(snap.owner, g.gid, i) for i in order[g.gid][:n]]
    return out


def adaptive_bn(model: nn.Module, calibration_fn: Callable[..., Any], *calib_args: Any) -> None:
    """Adaptive BN: every BatchNorm's running statistics reset, then ``calibration_fn(model,
    *calib_args)`` (forward passes in training mode) accumulates them as a plain average over its
    batches (``momentum=None`` while it runs): the statistics of the pruned network, not a mix with
    the unpruned network's that a momentum update over a few batches would leave."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        calibration_fn(model, *calib_args)
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom


def evaluate(ir: PruningIR, order: dict[int, list[int]], kept: dict[int, int], calibration_fn: Callable[..., Any],
             calib_args: Sequence[Any], eval_fn: Callable[..., Any], eval_args: Sequence[Any]) -> float:
    with warnings.catch_warnings():  # an evaluation copy: its config is nobody's concern
        warnings.simplefilter("ignore")
        model = ir.prune(labels=labels_for(ir, order, kept), verify=False).model
    adaptive_bn(model, calibration_fn, *calib_args)
    return _score(eval_fn(model, *eval_args))
