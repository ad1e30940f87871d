"""Iterative pruning schedules: prune a little, fine-tune, score again, prune more.

:func:`schedule_fractions` gives the fraction of the cost removed after each step: ``"one_shot"`` (all at
once), ``"linear"`` or ``"agp"`` (Zhu & Gupta 2017's cubic: ``s_t = s_f (1 - (1 - t/n)^3)``,
large steps first while the network has redundancy, small ones near the end).
:class:`IterativePruning` runs it: at each step the current (slim) model is traced anew, scored
by ``calibrate(ir)`` on its current weights (never the previous step's scores), pruned by
:class:`~pruning_ir.KnapsackLabelSelector` to that step's share of the *original* model's cost
(MACs, parameters, or any ``fn(model) -> float``), and handed to ``finetune(model, step)``.
``history`` keeps each step's IR and labels, so that ``verify_pruning(entry.ir, entry.labels)``
checks any step. ``rewind`` (lottery-ticket rewinding, Frankle & Carbin 2019; Frankle et al. 2020
rewind to early training): a state dict of the original model (its initial weights, or an early
checkpoint); after each step's pruning the kept weights are set to their values there (the same
labels removed from a copy holding those weights), before fine-tuning.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..ir import PruningIR, _as_call
from ..latency import MacsLatency, ParamsLatency
from ..selectors import KnapsackLabelSelector

log = logging.getLogger(__name__)

SCHEDULES = ("one_shot", "linear", "agp")


def schedule_fractions(kind: str, final: float, steps: int) -> list[float]:
    """Fraction of the cost removed after each of ``steps`` steps, ending at ``final``."""
    if kind not in SCHEDULES:
        raise InvalidInputError(f"schedule={kind!r}: give one of {SCHEDULES}.")
    if not 0 < final < 1:
        raise InvalidInputError(f"target={final!r}: give the fraction of the cost to remove, in (0, 1).")
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps={steps!r}: give an int >= 1.")
    if kind == "one_shot":
        return [final]
    if kind == "linear":
        return [final * (t + 1) / steps for t in range(steps)]
    return [final * (1 - (1 - (t + 1) / steps) ** 3) for t in range(steps)]


@dataclass
class Step:
    """One step: the fraction of the original cost removed (asked and reached), the IR the labels
    were selected on (of the model before the step) and the labels."""

    step: int
    asked: float
    reached: float
    ir: PruningIR
    labels: list[Any]


def _l1(ir: PruningIR) -> None:
    from ..criteria import L1NormCriterion

    L1NormCriterion(ir).score()


class IterativePruning:
    """Prune ``model`` to remove ``target`` of its cost over ``steps`` steps (see the module
    docstring). ``cost``: ``"macs"``, ``"params"`` or a function ``model -> float``;
    ``calibrate(ir)``: scores the IR of each step's model (e.g. a ``LossAwareCriterion`` block
    over a few batches; default: L1 norms); ``finetune(model, step)``: trains the slim model of a
    step in place (default: none)."""

    def __init__(self, model: nn.Module, example_inputs: Any, *, target: float,
                 example_kwargs: dict[str, Any] | None = None, cost: str | Callable[[nn.Module], float] = "macs",
                 schedule: str = "agp", steps: int = 4,
                 calibrate: Callable[[PruningIR], None] | None = None,
                 finetune: Callable[[nn.Module, int], None] | None = None,
                 rewind: dict[str, torch.Tensor] | None = None) -> None:
        self.fractions = schedule_fractions(schedule, target, steps)
        self.model = model
        self.example = _as_call(example_inputs, example_kwargs)
        if cost == "macs":
            self.cost: Callable[[nn.Module], float] = MacsLatency(*self.example)
        elif cost == "params":
            self.cost = ParamsLatency()
        elif callable(cost):
            self.cost = cost
        else:
            raise InvalidInputError(f"cost={cost!r}: give 'macs', 'params' or a function model -> float.")
        self.calibrate = calibrate or _l1
        self.finetune = finetune
        self.history: list[Step] = []
        self.rewind: nn.Module | None = None
        if rewind is not None:
            self.rewind = copy.deepcopy(model)
            try:
                self.rewind.load_state_dict(rewind)
            except RuntimeError as exc:
                raise InvalidInputError(f"rewind: the state dict does not fit {type(model).__name__} ({exc}); give "
                                        "model.state_dict() saved at initialisation or early in training.") from exc

    def run(self) -> nn.Module:
        """Every step; returns the last step's slim model (``model`` itself is not changed)."""
        base = self.cost(self.model)
        current = self.model
        for t, frac in enumerate(self.fractions):
            ir = PruningIR(current, example_inputs=self.example[0], example_kwargs=self.example[1])
            self.calibrate(ir)
            budget = (1 - frac) * base
            labels = list(KnapsackLabelSelector(budget, self.cost, verbose=False).select(ir)) \
                if self.cost(current) > budget else []
            current = ir.prune(labels=labels).model
            if self.rewind is not None:  # the same labels removed from the rewind weights: same shapes
                ticket = PruningIR._from_snapshot(self.rewind, ir.snapshot(), ir).prune(labels=labels, verify=False)
                self.rewind = ticket.model
                current.load_state_dict(self.rewind.state_dict())
            reached = 1 - self.cost(current) / base
            self.history.append(Step(t, frac, reached, ir, labels))
            log.info("step %d: removed %.3f of the cost (asked %.3f)", t, reached, frac)
            if self.finetune is not None:
                self.finetune(current, t)
        return current
