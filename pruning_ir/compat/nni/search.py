"""NNI's allocation-search pruners: simulated annealing (:class:`~pruning_ir.compose.Annealing` on the
pruner's target at a parameter objective), NetAdapt (candidates split over ``torch.distributed``
ranks), ADMM-regularised training and AutoCompress (annealing + ADMM + IR speed-up rounds)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..._distributed import broadcast_object, gather_objects, rank_world, require_same_groups
from ...compose import Annealing, Params, Problem, Pruner, out_axis
from ...criteria import Criterion, L1NormCriterion, L2NormCriterion
from ...errors import InvalidInputError
from ...sparsity import unstructured
from .base import _check_config, _overall_sparsity, _per_op_only, _Pruner, folded_state


class _SearchPruner(_Pruner):
    """Allocation search over per-group ratios: the config's ``sparsity`` is the fraction of the
    model's parameters to remove (the engine's parameter count from the IR, coupled slices included,
    so a candidate's cost is known without building it); ``base_algo`` ranks the channels within a
    group; ``evaluator(model) -> float`` (higher = better, as NNI's ``optimize_mode="maximize"``) scores
    a candidate on a masked copy. The search history goes to ``experiment_data_dir/search_history.json``."""

    BASE: ClassVar[dict[str, type[Criterion]]] = {"l1": L1NormCriterion, "l2": L2NormCriterion}
    """Norm criteria only: a removed (zero) channel must stay the lowest-ranked as weights change."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any, base_algo: str = "l1",
                 experiment_data_dir: str | None = None, dummy_input: Any = None, seed: int = 0) -> None:
        if not callable(evaluator):
            raise InvalidInputError(f"{type(self).__name__}: give evaluator=function(model) -> float "
                                    "(higher = better).")
        if base_algo not in self.BASE:
            raise InvalidInputError(f"{type(self).__name__}(base_algo={base_algo!r}): give one of "
                                    f"{sorted(self.BASE)}.")
        super().__init__(model, config_list, None, True, dummy_input)
        self.sparsity = _overall_sparsity(self.config_list, type(self).__name__)
        self.evaluator, self.base_algo, self.seed = evaluator, base_algo, seed
        self.experiment_data_dir = experiment_data_dir
        self.history: list[dict[str, Any]] = []
        self.best_ratios: dict[int, float] = {}

    def _problem(self) -> Problem:
        """The model's current weights ranked by ``base_algo``; the allocation problem of removing
        ``sparsity`` of the parameters from the config's groups."""
        self._load_folded()
        self.BASE[self.base_algo](self.ir).score()
        p = Pruner(self.target(), objective=Params(self.sparsity)).problem(self.ir, self.sparsity)
        if not p.groups:
            raise InvalidInputError(f"{type(self).__name__}: the ops config_list selects have no prunable output "
                                    "channels (pruner.ir.report() says why).")
        return p

    def removed(self, p: Problem, ratios: dict[int, float]) -> float:
        """The fraction of the parameters the per-group ``ratios`` remove."""
        return 1.0 - p.measure(self.labels_for(ratios)) / p.measure([])

    def _write_history(self) -> None:
        if self.experiment_data_dir is None:
            return
        path = Path(self.experiment_data_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "search_history.json").write_text(json.dumps(
            {"sparsity": self.sparsity, "best": {str(g): r for g, r in self.best_ratios.items()},
             "candidates": self.history}, indent=1))


class SimulatedAnnealingPruner(_SearchPruner):
    """Simulated annealing over per-group ratios (NNI ``SimulatedAnnealingPruner``): from uniform
    ratios, each step perturbs every ratio by up to ``perturbation_magnitude``, rescales to the
    target, evaluates; a worse candidate is accepted with probability ``exp(delta / T)``; ``T``
    goes from ``start_temperature`` down to ``stop_temperature`` by ``cool_down_rate``. The best
    candidate is masked onto your model."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any, base_algo: str = "l1",
                 start_temperature: float = 100, stop_temperature: float = 20, cool_down_rate: float = 0.9,
                 perturbation_magnitude: float = 0.35, experiment_data_dir: str | None = None,
                 dummy_input: Any = None, seed: int = 0, population: int = 1) -> None:
        self.annealing = Annealing(evaluator, start_temperature, stop_temperature, cool_down_rate,
                                   perturbation_magnitude, population, seed)  # checks the arguments first
        super().__init__(model, config_list, evaluator, base_algo, experiment_data_dir, dummy_input, seed)

    def compress(self) -> nn.Module:
        self.search()
        return self._mask(self._best_labels)

    def search(self) -> dict[int, float]:
        """Run the annealing; returns (and keeps in ``best_ratios``) the best per-group ratios."""
        p = self._problem()
        self._best_labels = self.annealing.allocate(p)
        base = p.measure([])
        self.history = [{"ratios": {str(g): r for g, r in h["fractions"].items()}, "removed": 1 - h["cost"] / base,
                         "score": h["score"]} for h in self.annealing.history]
        self.best_ratios = self.annealing.best
        self._write_history()
        return self.best_ratios


class NetAdaptPruner(_SearchPruner):
    """NetAdapt (Yang et al. 2018; NNI ``NetAdaptPruner``). Under ``torch.distributed`` the candidates
    of an iteration are split over the ranks (group ``i`` on rank ``i % world``), the scores gathered
    and the winner's fine-tuned weights sent to every rank, so all ranks end with one result: the
    one-process result when fine-tuning is deterministic. The fine-tuner and the evaluator then run
    a different number of times on each rank, so they must be rank-local (no collective calls
    inside) and see the same data on every rank. Each iteration removes
    ``sparsity_per_iteration`` more of the parameters; for every group a candidate takes all of it
    from that group, is fine-tuned briefly by ``short_term_fine_tuner(model)`` and evaluated; the
    best candidate (with its fine-tuned weights) is kept, until the config's ``sparsity``. Your
    model ends with the best candidate's weights and masks."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], short_term_fine_tuner: Any,
                 evaluator: Any, base_algo: str = "l1", sparsity_per_iteration: float = 0.05,
                 experiment_data_dir: str | None = None, dummy_input: Any = None) -> None:
        if not callable(short_term_fine_tuner):
            raise InvalidInputError("NetAdaptPruner: give short_term_fine_tuner=function(model) (a few steps of "
                                    "training on the masked candidate).")
        if not 0 < sparsity_per_iteration < 1:
            raise InvalidInputError(f"NetAdaptPruner(sparsity_per_iteration={sparsity_per_iteration!r}): give a "
                                    "fraction in (0, 1).")
        super().__init__(model, config_list, evaluator, base_algo, experiment_data_dir, dummy_input)
        self.fine_tune, self.step = short_term_fine_tuner, sparsity_per_iteration

    def compress(self) -> nn.Module:
        p = self._problem()
        groups = p.groups
        rank, world = rank_world()
        require_same_groups(groups, world)
        current = {g.gid: 0.0 for g in groups}
        removed = 0.0
        while removed < self.sparsity - 1e-9:
            goal = min(self.sparsity, removed + self.step)
            mine: list[tuple[float, int, dict[int, float], dict[str, torch.Tensor]]] = []
            for i, g in enumerate(groups):
                if i % world != rank:
                    continue  # another rank's candidate
                lo, hi = current[g.gid], 0.95
                trial = dict(current)
                trial[g.gid] = hi
                if self.removed(p, trial) < goal:
                    continue  # this group alone cannot give the step
                for _ in range(20):
                    mid = (lo + hi) / 2
                    trial[g.gid] = mid
                    if self.removed(p, trial) >= goal:
                        hi = mid
                    else:
                        lo = mid
                trial[g.gid] = hi
                # a copy with real masks: fine-tuning cannot regrow what the candidate removes
                cand = self._mask_on(copy.deepcopy(self.ir.model), self.labels_for(trial))
                self.fine_tune(cand)
                score = float(self.evaluator(cand))
                mine.append((score, i, trial, {k: v.cpu() for k, v in folded_state(cand).items()}))
            chosen, state, entries = _best_candidate(mine, rank, world)
            for score, _i, trial in entries:
                self.history.append({"ratios": {str(k): v for k, v in trial.items()}, "removed": goal,
                                     "score": score})
            if chosen is None:
                raise InvalidInputError(f"NetAdaptPruner: no single group can remove {self.step} more of the "
                                        "parameters; lower sparsity_per_iteration.")
            current = chosen
            with torch.no_grad():  # the chosen candidate's fine-tuned weights carry on
                for k, t in self.ir.model.state_dict().items():
                    t.copy_(state[k])
            self.BASE[self.base_algo](self.ir).score()
            removed = self.removed(p, current)
        self.best_ratios = current
        self._write_history()
        with torch.no_grad():  # your model takes the final weights (as NNI's), then the masks
            state = self.ir.model.state_dict()
            params_now = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
            for k, t in state.items():
                target = params_now.get(k + "_orig", params_now.get(k))
                if target is not None:
                    target.copy_(t)
        return self._mask(self.labels_for(current))


def _best_candidate(mine: list[tuple[float, int, dict[int, float], dict[str, torch.Tensor]]], rank: int, world: int
                    ) -> tuple[Any, Any, list[tuple[float, int, dict[int, float]]]]:
    """The best candidate over every rank's (highest score; the lowest group index on ties): its
    ratios and fine-tuned state (sent by the rank that made it), and every candidate in group order."""
    entries = [e for part in gather_objects([(score, i, trial) for score, i, trial, _ in mine], world) for e in part]
    entries.sort(key=lambda e: e[1])
    if not entries:
        return None, None, []
    top = max(entries, key=lambda e: (e[0], -e[1]))
    state = next((st for score, i, _t, st in mine if i == top[1]), None)
    return top[2], broadcast_object(state, top[1] % world, world), entries


class ADMMPruner(_Pruner):
    """ADMM-regularised training toward the config's sparsity (Zhang et al. 2018; NNI ``ADMMPruner``),
    then a one-shot ``base_algo`` pruning (``"l1"``, ``"l2"``: channels, coupled groups aligned;
    ``"level"``: single weights). For ``num_iterations`` rounds your ``trainer(model, optimizer=,
    criterion=, epoch=, callback=)`` trains the model (in place, as NNI) for ``epochs_per_iteration``
    epochs; the ``callback()`` you call between ``backward()`` and ``step()`` adds
    ``row * (W - Z + U)`` to each selected weight's gradient; then ``Z`` = the projection of ``W + U``
    onto the sparse set (per op: its lowest output channels by L1 of ``W + U``, or lowest entries) and
    ``U += W - Z``. ``optimizer`` defaults to Adam (lr 1e-3) over the model, ``criterion`` to
    cross-entropy."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], trainer: Any, num_iterations: int = 30,
                 epochs_per_iteration: int = 5, row: float = 1e-4, base_algo: str = "l1", dummy_input: Any = None,
                 optimizer: Any = None, criterion: Any = None) -> None:
        bases = {"l1": L1NormCriterion, "l2": L2NormCriterion, "level": None}
        if base_algo not in bases:
            raise InvalidInputError(f"ADMMPruner(base_algo={base_algo!r}): give one of {sorted(bases)}.")
        if not callable(trainer):
            raise InvalidInputError("ADMMPruner: give trainer=function(model, optimizer, criterion, epoch, callback).")
        if base_algo == "level":
            _per_op_only(config_list, "ADMMPruner(base_algo='level')")
        super().__init__(model, config_list, optimizer, True, dummy_input, trace=base_algo != "level")
        self.trainer, self.loss_criterion, self.base_algo = trainer, criterion, base_algo
        self.base = bases[base_algo]
        self.num_iterations, self.epochs, self.row = int(num_iterations), int(epochs_per_iteration), float(row)
        self.callbacks = 0

    def _project(self, t: torch.Tensor, sparsity: float, out_axis: int) -> torch.Tensor:
        if self.base_algo == "level":
            k = round(sparsity * t.numel())
            drop = torch.argsort(t.abs().flatten(), stable=True)[:k]
            return t.flatten().index_fill(0, drop, 0).reshape(t.shape)
        norms = t.abs().movedim(out_axis, 0).reshape(t.shape[out_axis], -1)
        norms = norms.sum(1) if self.base_algo == "l1" else norms.square().sum(1)
        drop = torch.argsort(norms, stable=True)[: math.floor(sparsity * t.shape[out_axis] + 1e-9)]
        return t.index_fill(out_axis, drop, 0)

    def compress(self) -> nn.Module:
        ops = self.op_sparsity()
        named = dict(self.model.named_modules())
        weights = {op: named[op].weight for op in ops}
        axes = {op: out_axis(named[op]) for op in ops}
        z = {op: self._project(w.detach().clone(), ops[op][1], axes[op]) for op, w in weights.items()}
        u = {op: torch.zeros_like(w) for op, w in weights.items()}
        optimizer = self.optimizer or torch.optim.Adam(self.model.parameters(), lr=1e-3)
        criterion = self.loss_criterion or nn.CrossEntropyLoss()

        def callback() -> None:  # the ADMM penalty's gradient, row * (W - Z + U)
            self.callbacks += 1
            with torch.no_grad():
                for op, w in weights.items():
                    if w.grad is not None:
                        w.grad.add_(self.row * (w - z[op] + u[op]))

        for _ in range(self.num_iterations):
            for epoch in range(self.epochs):
                self.trainer(self.model, optimizer=optimizer, criterion=criterion, epoch=epoch, callback=callback)
            with torch.no_grad():
                for op, w in weights.items():
                    z[op] = self._project(w.detach() + u[op], ops[op][1], axes[op])
                    u[op] += w.detach() - z[op]
        if self.base is None:
            for value in sorted({v for _, v, _ in ops.values()}):
                unstructured(self.model, value, modules=[n for n, (_, v, _) in ops.items() if v == value])
            self.labels = []
            return self.model
        self._load_folded()
        self.base(self.ir).score()
        return self._mask(self.select())

    def speedup(self) -> nn.Module:
        if self.base is None:
            self._load_folded()
            self.max_abs_diff = 0.0
            return copy.deepcopy(self._clean)
        return super().speedup()


class AutoCompressPruner:
    """AutoCompress (Liu et al. 2020; NNI ``AutoCompressPruner``): ``num_iterations`` rounds, each
    removing the same fraction ``1 - (1 - s) ** (1 / n)`` of the current model's parameters: simulated
    annealing finds the per-group ratios (:class:`SimulatedAnnealingPruner`), ADMM training pulls those
    channels toward zero and prunes them (:class:`ADMMPruner`), and the IR cuts them out; the next
    round starts from that slim model. ``compress()`` returns the final slim model; your model is
    not changed (the rounds work on a copy). ``optimize_mode="minimize"`` negates the evaluator."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], trainer: Any, evaluator: Any,
                 dummy_input: Any, num_iterations: int = 3, optimize_mode: str = "maximize", base_algo: str = "l1",
                 start_temperature: float = 100, stop_temperature: float = 20, cool_down_rate: float = 0.9,
                 perturbation_magnitude: float = 0.35, admm_num_iterations: int = 30, admm_training_epochs: int = 5,
                 row: float = 1e-4, experiment_data_dir: str | None = None, seed: int = 0) -> None:
        if optimize_mode not in ("maximize", "minimize"):
            raise InvalidInputError(f"AutoCompressPruner(optimize_mode={optimize_mode!r}): 'maximize' or 'minimize'.")
        if base_algo not in ("l1", "l2"):
            raise InvalidInputError(f"AutoCompressPruner(base_algo={base_algo!r}): give 'l1' or 'l2'.")
        if not callable(evaluator) or not callable(trainer):
            raise InvalidInputError("AutoCompressPruner: give trainer=function(model, optimizer, criterion, epoch, "
                                    "callback) and evaluator=function(model) -> float.")
        checked = _check_config(config_list)
        self.model, self.config_list = model, checked
        self.sparsity = _overall_sparsity(checked, "AutoCompressPruner")
        self.trainer, self.dummy_input, self.rounds = trainer, dummy_input, int(num_iterations)
        sign = 1.0 if optimize_mode == "maximize" else -1.0
        self.evaluator = lambda m: sign * float(evaluator(m))
        self.base_algo, self.seed = base_algo, seed
        self.sa: dict[str, Any] = {"start_temperature": start_temperature, "stop_temperature": stop_temperature,
                   "cool_down_rate": cool_down_rate, "perturbation_magnitude": perturbation_magnitude}
        self.admm_iterations, self.admm_epochs, self.row = int(admm_num_iterations), int(admm_training_epochs), row
        self.experiment_data_dir = experiment_data_dir
        self.rounds_done: list[dict[str, Any]] = []

    def compress(self) -> nn.Module:
        current = copy.deepcopy(self.model)
        per_round = 1 - (1 - self.sparsity) ** (1 / self.rounds)
        for r in range(self.rounds):
            config = [{k: v for k, v in c.items() if k not in ("sparsity_per_layer", "total_sparsity",
                                                                 "max_sparsity_per_layer")} | (
                {"sparsity": per_round} if not c.get("exclude") else {}) for c in self.config_list]
            sa = SimulatedAnnealingPruner(current, config, self.evaluator, self.base_algo, **self.sa,
                                          experiment_data_dir=None if self.experiment_data_dir is None else
                                          str(Path(self.experiment_data_dir) / f"round{r}"),
                                          dummy_input=self.dummy_input, seed=self.seed + r)
            ratios = sa.search()
            admm_config = [{"sparsity": ratios[g.gid], "op_names": [op]} for op in sa.op_sparsity()
                           if (g := sa._group_of(op)) is not None and g.gid in ratios]
            admm = ADMMPruner(current, admm_config, self.trainer, self.admm_iterations, self.admm_epochs, self.row,
                              self.base_algo, self.dummy_input)
            admm.compress()
            current = admm.speedup()
            self.rounds_done.append({"ratios": ratios, "max_abs_diff": admm.max_abs_diff,
                                     "params": sum(t.numel() for t in current.parameters())})
        return current

