"""Vitis-AI-style pruning runners on the engine: ``ana`` once, then ``prune(removal_ratio)`` as often
as needed.

``prune`` turns the sensitivity file into label scores: for each group, the drop of the score
(baseline minus the score with ``n`` labels removed) is interpolated linearly between the
analysed counts, made convex (its lower convex hull, so each further label costs at least as
much as the one before), and the ``j``-th label in the analysis' order gets the ``j``-th marginal
drop as its score. :class:`~pruning_ir.KnapsackLabelSelector` then keeps the most predicted score
under the MACs budget (its count knapsack over groups, re-linearised until the MACs of the slim
model meet the target within ``tolerance``), removing labels in the analysis' order, never more
of a group than the analysis measured, and keeping widths multiples of ``channel_divisible``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cost import MacsModel
from ..criteria.joint import marginal_scores, ranking
from ..errors import InvalidInputError
from ..ir import PruningIR
from ..latency import MacsLatency
from ..selectors import GroupConstraint, KnapsackLabelSelector
from .sensitivity import SensitivityStore, analyse, check_ratios, fingerprint

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TOLERANCE = 0.01


class PruningRunner:
    """Base of the runners: the model, its IR and the cache directory of the analysis files."""

    method = "iterative"

    def __init__(self, model: nn.Module, example_inputs: Any, *, example_kwargs: dict[str, Any] | None = None,
                 name: str | None = None, cache_dir: str | Path = ".pruning_ir", ir: PruningIR | None = None) -> None:
        self.model = model
        self.ir = ir if ir is not None else PruningIR(model, example_inputs=example_inputs,
                                                      example_kwargs=example_kwargs)
        self.name = name or type(model).__name__
        self.cache_dir = Path(cache_dir)
        self.sensitivity: dict[str, Any] | None = None

    # ------------------------------------------------------------------ analysis
    def _gids(self, excludes: Sequence[Any]) -> list[int]:
        """Prunable groups not touching an excluded module (a path, or the module itself) or id."""
        paths: set[str] = set()
        ids: set[int] = set()
        for e in excludes:
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, nn.Module):
                paths.update(p for p, m in self.ir.model.named_modules() if m is e)
            elif isinstance(e, str):
                paths.add(e)
            else:
                raise InvalidInputError(f"excludes: {e!r} is not a module, a module path or a group id.")
        known = {p for p, _ in self.ir.model.named_modules()}
        unknown = sorted(p for p in paths if p not in known)
        if unknown:
            raise InvalidInputError(f"excludes: no modules named {unknown} in {type(self.ir.model).__name__}.")

        def touches(member: str) -> bool:
            owner = member.rsplit(".", 1)[0] if "." in member else ""
            return any(owner == p or owner.startswith(p + ".") for p in paths)

        return [g.gid for g in self.ir.prunable_label_groups()
                if g.gid not in ids and not any(touches(m) for m, _ in g.members)]

    def ana(self, eval_fn: Callable[..., Any], args: Sequence[Any] = (), *, ratios: Sequence[float] = DEFAULT_RATIOS,
            excludes: Sequence[Any] = (), progress: bool = False) -> dict[str, Any]:
        """Sensitivity analysis: ``eval_fn(model, *args)`` (a number, higher = better) with each
        prunable group pruned at each ratio, saved to ``<cache_dir>/<name>-<fingerprint>.sens``
        (JSON; resumed if interrupted, read back if finished; see
        :mod:`pruning_ir.workflows.sensitivity`). Returns the file's data."""
        ratios = check_ratios(ratios)
        order = ranking(self.ir)
        gids = self._gids(excludes)
        key = fingerprint(self.ir, ratios, order)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        store = SensitivityStore(self.cache_dir, f"{self.name}-{key}", key)
        self.sensitivity = analyse(self.ir, eval_fn, tuple(args), ratios, gids, store, order, progress)
        self.sensitivity_path = store.path
        return self.sensitivity

    # ------------------------------------------------------------------ pruning
    def _scores(self) -> tuple[dict[int, torch.Tensor], dict[int, GroupConstraint]]:
        """Label scores from the analysis, and per group the most labels it may lose (what was
        measured); groups not analysed keep everything."""
        sens = self.sensitivity
        assert sens is not None
        base = float(sens["baseline"])
        scores: dict[int, torch.Tensor] = {}
        limits: dict[int, GroupConstraint] = {}
        for g in self.ir.prunable_label_groups():
            entry = sens["groups"].get(str(g.gid))
            if entry is None:
                scores[g.gid] = torch.zeros(g.size, dtype=torch.float64)
                limits[g.gid] = GroupConstraint(low=g.size)
                continue
            points = {int(n): base - float(s) for n, s in entry["scores"].items()}
            scores[g.gid] = marginal_scores(g.size, points, sens["order"][str(g.gid)])
            limits[g.gid] = GroupConstraint(low=g.size - max(points))
        return scores, limits

    def prune(self, removal_ratio: float, *, channel_divisible: int = 1, inplace: bool = False) -> nn.Module:
        """The slim model with ``removal_ratio`` of the MACs removed (within 1 % of it), the
        groups' shares allocated from the sensitivity analysis (see the module docstring).
        ``channel_divisible=8`` keeps every pruned width a multiple of 8. The pruned IR is
        ``self.pruned_ir``."""
        if self.sensitivity is None:
            raise InvalidInputError("runner.prune needs a sensitivity analysis: run runner.ana(eval_fn, args) first "
                                    "(a finished analysis is read back from its file, not recomputed).")
        if not 0 < removal_ratio < 1:
            raise InvalidInputError(f"removal_ratio={removal_ratio!r}: give the fraction of MACs to remove, in (0, 1).")
        if not isinstance(channel_divisible, int) or channel_divisible < 1:
            raise InvalidInputError(f"channel_divisible={channel_divisible!r}: give an int >= 1.")
        scores, limits = self._scores()
        macs = MacsModel(self.ir)
        target = (1 - removal_ratio) * macs.baseline()
        constraint = {gid: GroupConstraint(low=c.low, step=channel_divisible) for gid, c in limits.items()}
        snap = self.ir.snapshot()
        saved = (snap.scores, snap.score_source)
        snap.scores, snap.score_source = scores, f"sensitivity analysis {self.sensitivity['key']}"
        try:
            fn = MacsLatency(*snap.example)  # the same count on a model; the selector reads `macs`
            labels = KnapsackLabelSelector(target, fn, constraint=constraint, verbose=False, tolerance=TOLERANCE,
                                           cost_model=macs).select(self.ir)
        finally:
            snap.scores, snap.score_source = saved
        self.pruned_ir = self.ir.prune(labels=labels, inplace=inplace)
        got = 1 - macs.cost(labels) / macs.baseline()
        if abs(got - removal_ratio) > TOLERANCE:
            log.warning("runner.prune: removed %.3f of the MACs for removal_ratio=%.3f (the groups' options and "
                        "channel_divisible=%d do not allow closer)", got, removal_ratio, channel_divisible)
        self.removed_macs = got
        return self.pruned_ir.model


class OneStepRunner(PruningRunner):
    """Vitis' one-step method: ``search`` evaluates candidate subnetworks at a MACs target (adaptive
    BN through your ``calibration_fn``, then ``eval_fn``), ``prune(removal_ratio, index=None)``
    builds the best one (or candidate ``index``). See :mod:`pruning_ir.workflows.search`."""

    method = "one_step"

    def search(self, gpus: Sequence[str] | None = None, *, calibration_fn: Callable[..., Any],
               calib_args: Sequence[Any] = (), eval_fn: Callable[..., Any], eval_args: Sequence[Any] = (),
               num_subnet: int = 100, removal_ratio: float = 0.5, excludes: Sequence[Any] = (),
               channel_divisible: int = 1, strategy: str = "evolution", seed: int = 0,
               progress: bool = False) -> list[dict[str, Any]]:
        """Evaluate ``num_subnet`` subnetworks removing ``removal_ratio`` of the MACs (each within
        1 %): ``calibration_fn(model, *calib_args)`` (adaptive BN: forward passes in training mode,
        as in the Vitis guide), then ``eval_fn(model, *eval_args)`` (higher = better). Results in
        ``<cache_dir>/<name>-<key>.search`` (JSON; resumed if interrupted). ``strategy``:
        ``"random"`` or ``"evolution"`` (half random, then mutations of the best). ``gpus`` is
        accepted for the Vitis signature; devices are yours (the model's own, and one per
        ``torch.distributed`` rank). Returns every candidate with its score."""
        from .search import SearchStore, run_search

        if not 0 < removal_ratio < 1:
            raise InvalidInputError(f"removal_ratio={removal_ratio!r}: give the fraction of MACs to remove, in (0, 1).")
        if not isinstance(num_subnet, int) or num_subnet < 1:
            raise InvalidInputError(f"num_subnet={num_subnet!r}: give an int >= 1.")
        if strategy not in ("random", "evolution"):
            raise InvalidInputError(f"strategy={strategy!r}: give 'random' or 'evolution'.")
        if gpus:
            log.info("search: gpus=%s ignored; run one torch.distributed rank per device instead", list(gpus))
        order = ranking(self.ir)
        gids = self._gids(excludes)
        model_key = fingerprint(self.ir, [], order)
        key = fingerprint(self.ir, [removal_ratio, num_subnet, strategy, seed, channel_divisible, *gids], order)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        store = SearchStore(self.cache_dir / f"{self.name}-{key}.search", key)
        meta = {"removal_ratio": removal_ratio, "model_key": model_key, "strategy": strategy,
                "order": {str(k): v for k, v in order.items()}}
        found = run_search(self.ir, order, gids, store, calibration_fn=calibration_fn, calib_args=tuple(calib_args),
                           eval_fn=eval_fn, eval_args=tuple(eval_args), num_subnet=num_subnet,
                           removal_ratio=removal_ratio, channel_divisible=channel_divisible, seed=seed,
                           strategy=strategy, progress=progress, meta=meta)
        self.search_path = store.path
        return found

    def _search_file(self, removal_ratio: float) -> dict[str, Any]:
        order = ranking(self.ir)
        model_key = fingerprint(self.ir, [], order)
        for f in sorted(self.cache_dir.glob(f"{self.name}-*.search"), key=lambda p: -p.stat().st_mtime):
            data = json.loads(f.read_text())
            if data.get("model_key") == model_key and abs(data.get("removal_ratio", -1) - removal_ratio) < 1e-9 \
                    and data.get("complete"):
                return data
        raise InvalidInputError(f"no finished search for removal_ratio={removal_ratio} of this model in "
                                f"{self.cache_dir}: run runner.search(..., removal_ratio={removal_ratio}) first.")

    def prune(self, removal_ratio: float, *, index: int | None = None, channel_divisible: int = 1,
              inplace: bool = False) -> nn.Module:
        """The subnetwork the search found best for ``removal_ratio`` (or its candidate ``index``),
        with the model's own weights and BatchNorm statistics (recalibrate or fine-tune it)."""
        from .search import labels_for

        data = self._search_file(removal_ratio)
        cands = data["candidates"]
        if index is None:
            pick = max(cands, key=lambda c: c["score"])
        elif isinstance(index, int) and 0 <= index < len(cands):
            pick = cands[index]
        else:
            raise InvalidInputError(f"index={index!r}: the search holds candidates 0..{len(cands) - 1}.")
        order = {int(k): v for k, v in data["order"].items()}
        kept = {int(k): int(v) for k, v in pick["kept"].items()}
        self.pruned_ir = self.ir.prune(labels=labels_for(self.ir, order, kept), inplace=inplace)
        self.removed_macs = float(pick["removed_macs"])
        return self.pruned_ir.model


def get_pruning_runner(model: nn.Module, example_inputs: Any, method: str = "iterative", **kwargs: Any
                       ) -> PruningRunner:
    """The runner for ``method``: ``'iterative'`` (``ana``, then ``prune(removal_ratio)``) or
    ``'one_step'`` (``search``, then ``prune(removal_ratio, index=None)``)."""
    if method == "iterative":
        return PruningRunner(model, example_inputs, **kwargs)
    if method == "one_step":
        return OneStepRunner(model, example_inputs, **kwargs)
    raise InvalidInputError(f"method={method!r}: give 'iterative' or 'one_step'.")
