"""Budget-aware selection as a knapsack per round, re-linearised (see :mod:`.selector`): the outer
search (``selector``), the round's program and its solvers (``solvers``), the budget steps and the
re-linearised inner loop (``steps``), the side-by-side confirmation (``confirm``), the state they
share (``search``)."""

from __future__ import annotations

from .selector import KnapsackLabelSelector

__all__ = ["KnapsackLabelSelector"]
