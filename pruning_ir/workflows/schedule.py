"""Iterative pruning: prune a little, fine-tune, score again, prune more.

:class:`IterativePruning` is the composition ``Pruner(Channels(), calibrate, Knapsack(),
Schedule(schedule, steps), Macs | Params | Latency(target))`` of :mod:`pruning_ir.compose`, kept
under the name and arguments the workflows documented first: at each step the current (slim)
model is traced anew, scored by ``calibrate(ir)`` on its current weights (never the previous
step's scores), pruned by :class:`~pruning_ir.KnapsackLabelSelector` to that step's share of the
*original* model's cost (MACs, parameters, or any ``fn(model) -> float``), and handed to
``finetune(model, step)``. ``history`` keeps each step's IR and labels, so that
``verify_pruning(entry.ir, entry.labels)`` checks any step. ``rewind`` (lottery-ticket rewinding,
Frankle & Carbin 2019; Frankle et al. 2020 rewind to early training): a state dict of the
original model (its initial weights, or an early checkpoint); after each step's pruning the kept
weights are set to their values there, before fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..compose import Channels, Knapsack, Latency, Macs, Objective, Params, Pruner, Schedule, Step, schedule_fractions
from ..compose.schedules import SCHEDULES
from ..errors import InvalidInputError
from ..ir import PruningIR, _as_call

__all__ = ["SCHEDULES", "IterativePruning", "Step", "schedule_fractions"]


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
        objective: Objective
        if cost == "macs":
            objective = Macs(target)
        elif cost == "params":
            objective = Params(target)
        elif callable(cost):
            objective = Latency(target, cost)
        else:
            raise InvalidInputError(f"cost={cost!r}: give 'macs', 'params' or a function model -> float.")
        self.pruner = Pruner(Channels(), calibrate or _l1, Knapsack(), Schedule(schedule, steps), objective,
                             finetune=finetune, rewind=rewind)
        if rewind is not None:  # a state dict that does not fit fails here, not after the first step
            try:
                _check_fits(model, rewind)
            except RuntimeError as exc:
                raise InvalidInputError(f"rewind: the state dict does not fit {type(model).__name__} ({exc}); give "
                                        "model.state_dict() saved at initialisation or early in training.") from exc

    @property
    def history(self) -> list[Step]:
        """The steps of the last :meth:`run`."""
        return self.pruner.history

    def run(self) -> nn.Module:
        """Every step; returns the last step's slim model (``model`` itself is not changed)."""
        return self.pruner.run(self.model, self.example[0], self.example[1])


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
