"""Workflows around the pruning step, named as in the Vitis AI optimizer so that its users feel at
home: ``runner = get_pruning_runner(model, example_inputs, 'iterative')``, ``runner.ana(eval_fn,
args=(val_loader,))`` once (a resumable sensitivity file), then ``runner.prune(removal_ratio=0.3)``
as often as needed (MACs removed within 1 %, allocated from the analysis); or
``get_pruning_runner(model, example_inputs, 'one_step')``: ``runner.search(calibration_fn=...,
calib_args=..., eval_fn=..., eval_args=..., num_subnet=..., removal_ratio=...)``, then
``runner.prune(removal_ratio=..., index=None)``. :class:`IterativePruning` runs one-shot, linear or
AGP schedules with fine-tuning and re-scoring between steps.
"""

from __future__ import annotations

from .runner import DEFAULT_RATIOS, OneStepRunner, PruningRunner, get_pruning_runner
from .schedule import SCHEDULES, IterativePruning, Step, schedule_fractions
from .search import adaptive_bn

__all__ = ["DEFAULT_RATIOS", "SCHEDULES", "IterativePruning", "OneStepRunner", "PruningRunner", "Step",
           "adaptive_bn", "get_pruning_runner", "schedule_fractions"]
