"""Pruning algorithms composed from five orthogonal parts (the general pruning interface):

* **target** - what is pruned: :class:`Channels` (label groups of the IR: channels, heads, coupled
  as the engine found them; a slim model) or :class:`Elements`, :class:`NM`, :class:`Blocks`
  (parts of weight tensors, as ``torch.nn.utils.prune`` masks);
* **metric** - which go first: any criterion (:class:`~pruning_ir.L1NormCriterion`, ...,
  :func:`calibrated` for data criteria such as :class:`~pruning_ir.LossAwareCriterion`);
* **allocation** - how the objective is shared among groups: :class:`Uniform`, :class:`Global`,
  :class:`Knapsack`, :class:`Fixed`, :class:`Annealing` (search);
* **schedule** - in how many steps: :func:`OneShot`, :func:`Linear`, :func:`AGP`;
* **objective** - how much: :class:`Ratio`, :class:`Macs`, :class:`Params`, :class:`Latency`, always
  as a fraction of the original model's cost.

Example: a quarter of the MACs, L1 channel ranking, one global ranking by score per MAC saved, in
two AGP steps (each step traces the current slim model again):

    >>> import torch
    >>> from torch import nn
    >>> from pruning_ir import L1NormCriterion
    >>> from pruning_ir.compose import AGP, Channels, Global, Macs, Pruner
    >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
    ...                       nn.Flatten(), nn.Linear(16 * 5 * 5, 4))
    >>> pruner = Pruner(Channels(), L1NormCriterion, Global(), AGP(2), Macs(0.25))
    >>> slim = pruner.run(model, torch.randn(1, 3, 9, 9))
    >>> [round(s.asked, 3) for s in pruner.history], all(s.reached >= s.asked for s in pruner.history)
    ([0.219, 0.25], True)

NNI's pruners (:mod:`pruning_ir.compat.nni`) and :class:`~pruning_ir.workflows.IterativePruning`
are compositions of these parts.
"""

from __future__ import annotations

from .allocation import (
    Allocation,
    Annealing,
    Fixed,
    Global,
    Knapsack,
    Problem,
    Uniform,
    at_counts,
    at_ratios,
    scale_to_budget,
)
from .objectives import Latency, Macs, Measure, Objective, Params, Ratio
from .pruner import Metric, Pruner, Step, calibrated
from .schedules import AGP, SCHEDULES, Linear, OneShot, Schedule, schedule_fractions
from .targets import NM, Blocks, Channels, Elements, Target, group_key, out_axis, output_group, output_groups

__all__ = ["AGP", "NM", "SCHEDULES", "Allocation", "Annealing", "Blocks", "Channels", "Elements", "Fixed", "Global",
           "Knapsack", "Latency", "Linear", "Macs", "Measure", "Metric", "Objective", "OneShot", "Params", "Problem",
           "Pruner", "Ratio", "Schedule", "Step", "Target", "Uniform", "at_counts", "at_ratios", "calibrated",
           "group_key", "out_axis", "output_group", "output_groups", "scale_to_budget", "schedule_fractions"]
