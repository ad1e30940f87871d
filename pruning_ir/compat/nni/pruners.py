"""NNI's one-shot, data-driven, gradual (AGP) and fine-grained (level, lottery-ticket) pruners: each is
a criterion on the shared selection of :class:`~pruning_ir.compat.nni.base._Pruner`, plus NNI's
training hooks where the seed has them."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ...compose import schedule_fractions
from ...criteria import (
    APoZCriterion,
    BNScaleCriterion,
    FPGMCriterion,
    L1NormCriterion,
    L2NormCriterion,
    MeanActivationCriterion,
    TaylorFOWeightCriterion,
)
from ...criteria.activation import _ActivationCriterion
from ...errors import InvalidInputError
from ...sparsity import to_sparse, unstructured
from .base import _per_op_only, _Pruner, folded_state


class L1FilterPruner(_Pruner):
    """Filters (output channels) with the smallest L1 norm go (NNI ``L1FilterPruner``)."""

    criterion = L1NormCriterion


class L2FilterPruner(_Pruner):
    """Filters with the smallest L2 norm go (NNI ``L2FilterPruner``)."""

    criterion = L2NormCriterion


class FPGMPruner(_Pruner):
    """Filters nearest the geometric median go (NNI ``FPGMPruner``)."""

    criterion = FPGMCriterion


class SlimPruner(_Pruner):
    """Channels with the smallest BatchNorm scale go (NNI ``SlimPruner``; ranked globally over the
    selected BN layers when the config says ``total_sparsity``). With a ``trainer(model, optimizer,
    criterion, epoch)``, ``compress()`` first runs network slimming's sparsity training on your model
    (in place, as NNI): ``sparsity_training_epochs`` epochs whose criterion adds
    ``scale * sum |gamma|`` over the selected BN layers to your ``criterion``; without one, the scales
    are ranked as they are."""

    criterion = BNScaleCriterion

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 trainer: Any = None, criterion: Any = None, sparsity_training_epochs: int = 10,
                 scale: float = 1e-4, dependency_aware: bool = True, dummy_input: Any = None) -> None:
        if trainer is not None and (not callable(trainer) or optimizer is None or not callable(criterion)):
            raise InvalidInputError("SlimPruner: sparsity training needs trainer=function(model, optimizer, "
                                    "criterion, epoch), an optimizer and a criterion(output, target).")
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input)
        self.trainer, self.loss_criterion = trainer, criterion
        self.epochs, self.scale = int(sparsity_training_epochs), float(scale)

    def compress(self) -> nn.Module:
        if self.trainer is not None:
            named = dict(self.model.named_modules())
            gammas = [named[op].weight for op in self.op_sparsity() if isinstance(
                getattr(named[op], "weight", None), torch.Tensor)]

            def slimming(output: Any, target: Any) -> torch.Tensor:
                return self.loss_criterion(output, target) + self.scale * sum(g.abs().sum() for g in gammas)

            for epoch in range(self.epochs):
                self.trainer(self.model, self.optimizer, slimming, epoch)
        return super().compress()


class _TrainerPruner(_Pruner):
    """Pruners whose metric comes from running the user's ``trainer(model, optimizer, criterion, epoch)``:
    the trainer runs on the pruner's working copy of the model, whose forward is routed through the
    criterion's collector for the first ``statistics_batch_num`` calls (activation statistics, or the
    gradients of the trainer's own backward passes). The copy's parameters are not the ones your
    optimizer holds, so nothing is trained: the scores are those of the model as given."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 trainer: Any = None, criterion: Any = None, sparsity_training_epochs: int = 1,
                 dependency_aware: bool = True, dummy_input: Any = None, statistics_batch_num: int = 1,
                 **nni_options: Any) -> None:
        if not callable(trainer):
            raise InvalidInputError(f"{type(self).__name__} ranks channels from data: give "
                                    "trainer=function(model, optimizer, criterion, epoch) that runs your batches.")
        if not isinstance(statistics_batch_num, int) or statistics_batch_num < 1:
            raise InvalidInputError(f"statistics_batch_num={statistics_batch_num!r}: give an int >= 1.")
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input)
        self.trainer, self.loss_criterion = trainer, criterion
        self.epochs = max(1, int(sparsity_training_epochs))
        self.statistics_batch_num = statistics_batch_num
        self.nni_options = nni_options  # e.g. activation='relu': the IR finds the nonlinearities itself

    def _score(self) -> None:  # compress() has loaded the current weights into the copy
        assert self.criterion is not None
        work = self.ir.model
        seen = {"calls": 0, "inside": False}
        records = issubclass(self.criterion, _ActivationCriterion)
        with self.criterion(self.ir) as collect:
            def forward(*args: Any, **kwargs: Any) -> Any:
                if seen["inside"] or seen["calls"] >= self.statistics_batch_num:
                    return type(work).forward(work, *args, **kwargs)
                seen["inside"] = True
                seen["calls"] += 1
                try:
                    out = collect(*args, **kwargs)
                    if records:  # the recorder's output carries no graph: run the model again for the trainer
                        out = type(work).forward(work, *args, **kwargs)
                    return out
                finally:
                    seen["inside"] = False

            work.forward = forward  # type: ignore[method-assign]
            try:
                for epoch in range(self.epochs):
                    self.trainer(work, self.optimizer, self.loss_criterion, epoch)
            finally:
                del work.forward
            if not seen["calls"]:
                raise InvalidInputError(f"{type(self).__name__}: the trainer never called the model.")
        work.zero_grad(set_to_none=True)


class ActivationAPoZRankFilterPruner(_TrainerPruner):
    """Channels whose activations are most often zero go (NNI ``ActivationAPoZRankFilterPruner``)."""

    criterion = APoZCriterion


class ActivationMeanRankFilterPruner(_TrainerPruner):
    """Channels with the smallest mean activation go (NNI ``ActivationMeanRankFilterPruner``)."""

    criterion = MeanActivationCriterion


class TaylorFOWeightFilterPruner(_TrainerPruner):
    """Channels with the smallest first-order Taylor ``sum (g * w)^2`` go, from the trainer's backward
    passes (NNI ``TaylorFOWeightFilterPruner``)."""

    criterion = TaylorFOWeightCriterion


class AGP_Pruner(_Pruner):
    """Automated gradual pruning (Zhu & Gupta 2017; NNI ``AGP_Pruner``): over ``num_iterations``
    iterations every op's sparsity rises as ``s * (1 - (1 - t / n)^3)`` (the AGP schedule of
    :func:`pruning_ir.workflows.schedule_fractions`); each iteration re-scores the masked model's
    current weights with ``pruning_algorithm`` (``"level"``, ``"l1"``, ``"l2"``, ``"slim"``: norms, so
    what is masked stays lowest), grows the masks, and runs your ``trainer`` for ``epochs_per_iteration`` epochs on
    your model (masked, so the removed weights stay zero)."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 trainer: Any = None, criterion: Any = None, num_iterations: int = 10, epochs_per_iteration: int = 1,
                 pruning_algorithm: str = "level", dummy_input: Any = None) -> None:
        # norm-based only: a masked (zero) channel must stay the lowest-ranked round after round
        algorithms = {"level": LevelPruner, "l1": L1FilterPruner, "l2": L2FilterPruner, "slim": SlimPruner}
        if pruning_algorithm not in algorithms:
            raise InvalidInputError(f"AGP_Pruner(pruning_algorithm={pruning_algorithm!r}): give one of "
                                    f"{sorted(algorithms)}.")
        if not callable(trainer):
            raise InvalidInputError("AGP_Pruner trains between its iterations: give trainer=function(model, "
                                    "optimizer, criterion, epoch).")
        if not isinstance(num_iterations, int) or num_iterations < 1:
            raise InvalidInputError(f"AGP_Pruner(num_iterations={num_iterations!r}): give an int >= 1.")
        self.inner = algorithms[pruning_algorithm](model, config_list, optimizer, True, dummy_input)
        self.model, self.config_list, self.dummy_input = model, self.inner.config_list, self.inner.dummy_input
        self.labels, self.max_abs_diff = self.inner.labels, None
        if self.inner.traced:
            self.ir = self.inner.ir
        self.optimizer, self.trainer, self.loss_criterion = optimizer, trainer, criterion
        self.num_iterations, self.epochs_per_iteration = num_iterations, max(1, int(epochs_per_iteration))
        self.history: list[float] = []

    def compress(self) -> nn.Module:
        rises = [f / 0.5 for f in schedule_fractions("agp", 0.5, self.num_iterations)]
        epoch = 0
        for rise in rises:
            scaled = ("sparsity", "sparsity_per_layer", "total_sparsity")
            self.inner.config_list = [{k: (v * rise if k in scaled else v) for k, v in c.items()}
                                      for c in self.config_list]
            self.inner.compress()  # ranks the model's current (trained, masked) weights
            self.history.append(rise)
            for _ in range(self.epochs_per_iteration):
                self.trainer(self.model, self.optimizer, self.loss_criterion, epoch)
                epoch += 1
        self.inner.config_list = self.config_list
        self.labels = self.inner.labels
        return self.model

    def speedup(self) -> nn.Module:
        out = self.inner.speedup()
        self.max_abs_diff = self.inner.max_abs_diff
        return out


class LevelPruner(_Pruner):
    """Single weights with the smallest magnitude go (NNI ``LevelPruner``; fine-grained:
    ``speedup()`` keeps the shapes and returns the masks folded in; no ``dummy_input`` needed).
    ``sparsity`` per op only: for one threshold over several weights use
    :func:`pruning_ir.sparsity.unstructured` with ``scope="global"``."""

    structured = False

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 dependency_aware: bool = True, dummy_input: Any = None) -> None:
        _per_op_only(config_list, type(self).__name__)
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input)

    def compress(self) -> nn.Module:
        ops = self.op_sparsity()
        for value in sorted({v for _, v, _ in ops.values()}):
            names = [n for n, (_, v, _) in ops.items() if v == value]
            unstructured(self.model, value, modules=names)
        self.labels = []
        return self.model

    def speedup(self, min_sparsity: float | None = None) -> nn.Module:
        """A model of the same shapes with the masks folded in (fine-grained sparsity does not change
        shapes); with ``min_sparsity`` (e.g. 0.9), every ``nn.Linear`` at least that sparse becomes a
        :class:`~pruning_ir.sparsity.SparseLinear` (CSR weight, inference only), which
        ``benchmarks/sparse_speed.py`` measures faster than dense on CPU from about 0.9."""
        self._load_folded()
        self.max_abs_diff = 0.0
        out = copy.deepcopy(self._clean)
        if min_sparsity is not None:
            out, _ = to_sparse(out, min_sparsity, inplace=True)
        return out


class LotteryTicketPruner(LevelPruner):
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; NNI
    ``LotteryTicketPruner``), driven by your training loop as in NNI::

        pruner = LotteryTicketPruner(model, [{"prune_iterations": 5, "sparsity": 0.8, "op_types": ["default"]}],
                                     optimizer)
        pruner.compress()
        for i in pruner.get_prune_iterations():
            pruner.prune_iteration_start()
            train(model)                      # iteration 0 trains the dense model

    At the start of iteration ``i >= 1`` each op's masks grow (by magnitude of the trained weights)
    to sparsity ``1 - (1 - s) ** (i / n)``, then the weights (under the masks), the optimizer's state
    and the learning-rate scheduler's go back to what they were at ``compress()`` (``reset_weights``).
    """

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 lr_scheduler: Any = None, reset_weights: bool = True, dummy_input: Any = None) -> None:
        super().__init__(model, config_list, optimizer, True, dummy_input)
        counts = {c.get("prune_iterations") for c in self.config_list if not c.get("exclude")}
        first = next(iter(counts))
        if len(counts) != 1 or not isinstance(first, int) or isinstance(first, bool) or first < 1:
            raise InvalidInputError("LotteryTicketPruner: give the same int prune_iterations >= 1 in every "
                                    f"config_list entry (got {sorted(map(str, counts))}).")
        self.prune_iterations: int = first
        self.lr_scheduler, self.reset_weights = lr_scheduler, reset_weights
        self.iteration = -1
        self._initial: dict[str, Any] = {}

    def compress(self) -> nn.Module:
        self._initial = {"model": folded_state(self.model),
                         "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None,
                         "scheduler": copy.deepcopy(self.lr_scheduler.state_dict()) if self.lr_scheduler else None}
        self.iteration = -1
        return self.model

    def get_prune_iterations(self) -> range:
        return range(self.prune_iterations + 1)

    def prune_iteration_start(self) -> None:
        if not self._initial:
            raise InvalidInputError("LotteryTicketPruner: call compress() before prune_iteration_start().")
        self.iteration += 1
        if self.iteration == 0:
            return
        if self.iteration > self.prune_iterations:
            raise InvalidInputError(f"LotteryTicketPruner: only {self.prune_iterations} pruning iterations "
                                    "(see get_prune_iterations()).")
        ops = self.op_sparsity()
        for value in sorted({v for _, v, _ in ops.values()}):
            names = [n for n, (_, v, _) in ops.items() if v == value]
            unstructured(self.model, 1 - (1 - value) ** (self.iteration / self.prune_iterations), modules=names)
        if self.reset_weights:
            self._rewind()

    def _rewind(self) -> None:
        """Initial weights into the (masked) model: a masked parameter's ``*_orig`` takes them."""
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for name, value in self._initial["model"].items():
                target = params.get(name + "_orig", params.get(name, buffers.get(name)))
                if target is not None:
                    target.copy_(value)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._initial["optimizer"]))
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(copy.deepcopy(self._initial["scheduler"]))

