"""Workflows around the pruning step, named as in the Vitis AI optimizer so that its users feel at
home: ``runner = get_pruning_runner(model, example_inputs, 'iterative')``, ``runner.ana(eval_fn,
args=(val_loader,))`` once (a resumable sensitivity file), then ``runner.prune(removal_ratio=0.3)``
as often as needed (MACs removed within 1 %, allocated from the analysis).
"""

from __future__ import annotations

from .runner import DEFAULT_RATIOS, PruningRunner, get_pruning_runner

__all__ = ["DEFAULT_RATIOS", "PruningRunner", "get_pruning_runner"]
