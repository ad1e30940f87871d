"""A pruning algorithm from its five parts, run as the general pruning interface's nested loop.

For each step of the schedule (the outer loop) the current model is traced, the metric scores the
target's labels on its current weights, the allocation picks the labels that bring the objective
to the step's share of the *original* model's cost (the inner loop: bisection, search or
knapsack), the engine cuts them out (speed-up: a physically smaller model, checked against the
masked one), and ``finetune(model, step)`` trains it. Fine-grained targets follow the same loop
with ``torch.nn.utils.prune`` masks that only grow, on one model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import torch
from torch import nn

from .._ir.labels import Label, LabelGroup
from .._trace.run import kept_buffers
from ..criteria import Criterion
from ..errors import InvalidInputError
from ..ir import PruningIR, _as_call
from ..sparsity import Scorer, SparsityReport, blocks, copy_masked, n_m, unstructured
from .allocation import Allocation, Global, Problem, Uniform
from .objectives import Objective, Ratio
from .schedules import OneShot, Schedule
from .targets import NM, Blocks, Channels, Elements, Target, group_key

log = logging.getLogger(__name__)

Metric: TypeAlias = "type[Criterion] | Callable[[PruningIR], Any] | str | Scorer | None"
"""A criterion class that scores from the weights (``L1NormCriterion``...), any ``fn(ir)`` that
scores the IR (see :func:`calibrated`), or ``None`` (the IR's default magnitude scores); for the
fine-grained targets ``"l1"``, ``"random"`` or ``scorer(name, weight) -> scores``."""


def calibrated(criterion: type[Criterion], batches: Sequence[Any], loss: Callable[..., torch.Tensor] | None = None,
               **options: Any) -> Callable[[PruningIR], None]:
    """A metric that scores the IR with a data criterion on ``batches`` (re-read at every step).

    Without ``loss`` each batch is the model's input (a tensor or a tuple of positional inputs);
    with ``loss`` each batch is ``(inputs, targets)`` and ``loss(output, targets).backward()`` runs
    (gradient criteria: :class:`~pruning_ir.LossAwareCriterion`, Taylor). ``options`` go to the
    criterion (e.g. ``progress=True``)."""
    if not isinstance(criterion, type) or not issubclass(criterion, Criterion):
        raise InvalidInputError(f"calibrated({criterion!r}, ...): give a Criterion class, e.g. LossAwareCriterion.")
    if not isinstance(batches, Sequence) or not batches:
        raise InvalidInputError("calibrated(criterion, batches): give a non-empty list of batches (it is read again "
                                "at every step of a schedule).")

    def metric(ir: PruningIR) -> None:
        # the model is the user's at a schedule's first step: its buffers (BatchNorm statistics in
        # training mode) and gradients are as they were afterwards
        grads = {p: None if p.grad is None else p.grad.detach().clone() for p in ir.model.parameters()}
        try:
            with kept_buffers(ir.model), criterion(ir, **options) as collect:
                for batch in batches:
                    inputs, targets = (batch[0], batch[1]) if loss is not None else (batch, None)
                    args = inputs if isinstance(inputs, tuple) else (inputs,)
                    out = collect(*args)
                    if loss is not None:
                        loss(out, targets).backward()
        finally:
            for p, g in grads.items():
                p.grad = g

    metric.__qualname__ = f"calibrated({criterion.__name__})"
    metric.scores_an_ir = True  # type: ignore[attr-defined]  # not a fine-grained scorer
    return metric


@dataclass
class Step:
    """One step of a run: the fraction of the original cost removed (asked and reached), and for
    channel targets the IR the labels were selected on (of the model before the step) and the
    labels; for fine-grained targets the sparsity report after the step."""

    step: int
    asked: float
    reached: float
    ir: PruningIR | None = None
    labels: list[Label] = field(default_factory=list)
    report: SparsityReport | None = None


class Pruner:
    """Target x metric x allocation x schedule x objective (see :mod:`pruning_ir.compose`).

    Args:
        target: :class:`~pruning_ir.compose.Channels` (default: every prunable group),
            :class:`~pruning_ir.compose.Elements`, :class:`~pruning_ir.compose.NM` or
            :class:`~pruning_ir.compose.Blocks`.
        metric: see :data:`Metric`.
        allocation: :class:`~pruning_ir.compose.Uniform` (default), ``Global``, ``Knapsack``,
            ``Fixed``, ``Annealing``; fine-grained targets take ``Uniform`` (each weight alike) or
            ``Global`` (one threshold over all of them).
        schedule: :func:`~pruning_ir.compose.OneShot` (default), ``Linear(n)``, ``AGP(n)``.
        objective: :class:`~pruning_ir.compose.Ratio` (default ``Ratio(0.5)``), ``Macs``,
            ``Params``, ``Latency``; fine-grained targets take ``Ratio`` (``NM``: none).
        finetune: ``fn(model, step)`` run after every step (training the slim, or masked, model).
        rewind: a state dict of the original model (initial or early weights: lottery-ticket
            rewinding); after each step's pruning the kept weights take their values there.
    """

    def __init__(self, target: Target | None = None, metric: Metric = None, allocation: Allocation | None = None,
                 schedule: Schedule | None = None, objective: Objective | None = None, *,
                 finetune: Callable[[nn.Module, int], None] | None = None,
                 rewind: dict[str, torch.Tensor] | None = None) -> None:
        self.target: Target = target if target is not None else Channels()
        self.metric = metric
        self.allocation = allocation if allocation is not None else Uniform()
        self.schedule = schedule if schedule is not None else OneShot()
        if isinstance(self.target, NM) and objective is not None:
            raise InvalidInputError("Pruner(target=NM(n, m)): N:M fixes the sparsity at 1 - n/m; give no objective.")
        self.objective = objective if objective is not None else Ratio(0.5)
        self.finetune = finetune
        self.rewind = rewind
        self.history: list[Step] = []
        self._check()

    def _check(self) -> None:
        if not isinstance(self.target, (Channels, Elements, Blocks, NM)):
            raise InvalidInputError(f"Pruner(target={self.target!r}): give Channels(), Elements(), NM(n, m) or "
                                    "Blocks(shape).")
        if not isinstance(self.allocation, Allocation):
            raise InvalidInputError(f"Pruner(allocation={self.allocation!r}): give Uniform(), Global(), Knapsack(), "
                                    "Fixed(ratios) or Annealing(evaluator).")
        if not isinstance(self.schedule, Schedule):
            raise InvalidInputError(f"Pruner(schedule={self.schedule!r}): give OneShot(), Linear(n) or AGP(n).")
        if not isinstance(self.objective, Objective):
            raise InvalidInputError(f"Pruner(objective={self.objective!r}): give Ratio(f), Macs(f), Params(f) or "
                                    "Latency(f, fn).")
        if self.finetune is not None and not callable(self.finetune):
            raise InvalidInputError("Pruner(finetune=...): give a function (model, step) -> None.")
        if self.target.structured:
            if isinstance(self.metric, str):
                raise InvalidInputError(f"Pruner(metric={self.metric!r}): channel targets take a criterion class "
                                        "(L1NormCriterion...) or fn(ir); 'l1'/'random' are for fine-grained targets.")
            return
        m = self.metric
        if (isinstance(m, type) and issubclass(m, Criterion)) or getattr(m, "scores_an_ir", False) or (
                isinstance(m, str) and m not in ("l1", "random")):
            raise InvalidInputError(f"Pruner(metric={_name(m)}): a fine-grained target ranks single weights: give "
                                    "'l1', 'random' or scorer(name, weight) -> scores of the weight's shape.")
        if not isinstance(self.allocation, (Uniform, Global)):
            raise InvalidInputError(f"Pruner: a fine-grained target takes Uniform() (per weight) or Global() (one "
                                    f"threshold), not {type(self.allocation).__name__}.")
        if not isinstance(self.objective, Ratio):
            kind = type(self.objective).__name__
            raise InvalidInputError(f"Pruner: a fine-grained target keeps every shape, so {kind} cannot change; "
                                    "give Ratio(f), the fraction of the weights' entries to zero.")
        if isinstance(self.target, NM) and self.schedule.steps != 1:
            raise InvalidInputError("Pruner(target=NM(n, m)): N:M is reached in one step; use OneShot().")
        if self.rewind is not None:
            raise InvalidInputError("Pruner(rewind=...): rewinding is for channel targets here; NNI's "
                                    "LotteryTicketPruner rewinds fine-grained masks.")

    # ------------------------------------------------------------------ one step
    def score(self, ir: PruningIR) -> None:
        """Run the metric on ``ir`` (channel targets)."""
        m = self.metric
        if m is None:
            return
        if isinstance(m, type) and issubclass(m, Criterion):
            if m.needs_data:
                raise InvalidInputError(f"Pruner(metric={m.__name__}): it scores from data; give "
                                        f"metric=calibrated({m.__name__}, batches[, loss]).")
            m(ir).score()
        elif callable(m):
            cast(Callable[[PruningIR], Any], m)(ir)
        else:
            raise InvalidInputError(f"Pruner(metric={m!r}): give a Criterion class, fn(ir) or None.")

    def problem(self, ir: PruningIR, fraction: float, base: float | None = None,
                origin: dict[tuple[object, ...], int] | None = None, removed: int = 0,
                groups: list[LabelGroup] | None = None) -> Problem:
        """The allocation problem of one step on ``ir``: remove ``fraction`` of ``base`` (default: the
        cost of ``ir``'s model). In a schedule's later steps ``origin`` gives the groups' original
        sizes (by :func:`~pruning_ir.compose.targets.group_key`) and ``removed`` the target's labels
        earlier steps removed (a :class:`Ratio` counts them); ``groups``: the target's groups of ``ir``
        when already known."""
        assert isinstance(self.target, Channels)
        groups = self.target.groups(ir) if groups is None else groups
        measure = self.objective.measure(ir, groups)
        if isinstance(self.objective, Ratio) and origin is not None:
            now = measure
            measure = lambda labels: sum(origin.values()) - removed - (now([]) - now(labels))  # noqa: E731
        base = measure([]) if base is None else base
        sizes = {} if origin is None else {g.gid: origin.get(group_key(ir, g), g.size) for g in groups}
        share = fraction / self.objective.fraction
        return Problem(ir, self.target, groups, self.objective, measure, (1 - fraction) * base, sizes, share)

    def select(self, ir: PruningIR, fraction: float | None = None) -> list[Label]:
        """Score ``ir`` with the metric and allocate one step (default: the whole objective) on it."""
        if not self.target.structured:
            raise InvalidInputError("Pruner.select: fine-grained targets have no labels; use run().")
        self.score(ir)
        p = self.problem(ir, self.objective.fraction if fraction is None else fraction)
        return self._allocate(p)

    def _allocate(self, p: Problem) -> list[Label]:
        if p.met([]):
            return []
        if not p.groups:
            raise InvalidInputError(f"Pruner: {self.target!r} selects no prunable group of {type(p.ir.model).__name__}"
                                    " (excluded, not prunable: ir.report() says why), so nothing can reach "
                                    f"{self.objective!r}; widen the target.")
        return self.allocation.allocate(p)

    # ------------------------------------------------------------------ the loop
    def run(self, model: nn.Module, example_inputs: Any = None, example_kwargs: dict[str, Any] | None = None,
            *, inplace: bool = False) -> nn.Module:
        """Every step of the schedule; returns the last step's model (channel targets: a new slim
        model, ``model`` unchanged; fine-grained: ``model`` masked in place with ``inplace=True``,
        else a masked copy). ``history`` holds the steps."""
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"Pruner.run: expected an nn.Module, got {type(model).__name__}.")
        self.history = []
        if not self.target.structured:
            return self._run_fine(model if inplace else copy_masked(model))
        if inplace:
            raise InvalidInputError("Pruner.run(..., inplace=True): a channel target builds a new, smaller model "
                                    "(your model is never changed); inplace is for fine-grained masks.")
        if example_inputs is None:
            raise InvalidInputError("Pruner.run(model, example_inputs): channel targets trace the model; give one "
                                    "example input batch.")
        example = _as_call(example_inputs, example_kwargs)
        ticket = None
        if self.rewind is not None:
            ticket = copy_masked(model)
            try:
                ticket.load_state_dict(self.rewind)
            except RuntimeError as exc:
                raise InvalidInputError(f"rewind: the state dict does not fit {type(model).__name__} ({exc}); give "
                                        "model.state_dict() saved at initialisation or early in training.") from exc
        base: float | None = None
        origin: dict[tuple[object, ...], int] | None = None
        removed = 0
        current = model
        for t, frac in enumerate(self.schedule.fractions(self.objective.fraction)):
            ir = PruningIR(current, example_inputs=example[0], example_kwargs=example[1])
            self.score(ir)
            assert isinstance(self.target, Channels)
            groups = self.target.groups(ir)
            if origin is None:  # the original model's groups: floors and fractions stay of their sizes
                origin = {group_key(ir, g): g.size for g in groups}
            p = self.problem(ir, frac, base, origin, removed, groups)
            base = base if base is not None else p.measure([])
            labels = self._allocate(p)
            inside = {g.gid for g in p.groups}
            removed += sum(1 for lab in labels if lab.group in inside)
            current = ir.prune(labels=labels).model
            if ticket is not None:  # the same labels removed from the rewind weights: same shapes
                ticket = PruningIR._from_snapshot(ticket, ir.snapshot(), ir).prune(labels=labels, verify=False).model
                current.load_state_dict(ticket.state_dict())
            reached = 1 - p.measure(labels) / base if base else 0.0
            self.history.append(Step(t, frac, reached, ir, labels))
            log.info("step %d: removed %.3f of the %s cost (asked %.3f)", t, reached,
                     type(self.objective).__name__, frac)
            if self.finetune is not None:
                self.finetune(current, t)
        return current

    def _run_fine(self, model: nn.Module) -> nn.Module:
        target = self.target
        assert isinstance(target, (Elements, Blocks, NM))
        names = target.weights(model)
        crit: Any = "l1" if self.metric is None else self.metric
        scope = "global" if isinstance(self.allocation, Global) else "local"
        if isinstance(target, NM):
            fractions = [1 - target.n / target.m]
        else:
            fractions = self.schedule.fractions(self.objective.fraction)
        for t, frac in enumerate(fractions):
            if isinstance(target, NM):
                report = n_m(model, target.n, target.m, criterion=crit, modules=names)
            elif isinstance(target, Blocks):
                report = blocks(model, frac, target.shape, scope=scope, criterion=crit, modules=names)
            else:
                report = unstructured(model, frac, scope=scope, criterion=crit, modules=names)
            self.history.append(Step(t, frac, report.sparsity, report=report))
            log.info("step %d: sparsity %.3f (asked %.3f)", t, report.sparsity, frac)
            if self.finetune is not None:
                self.finetune(model, t)
        return model

    def __repr__(self) -> str:
        return (f"Pruner(target={self.target!r}, metric={_name(self.metric)}, allocation={self.allocation!r}, "
                f"schedule={self.schedule!r}, objective={self.objective!r})")


def _name(metric: Any) -> str:
    if metric is None or isinstance(metric, str):
        return repr(metric)
    return getattr(metric, "__qualname__", None) or repr(metric)
