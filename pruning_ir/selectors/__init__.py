"""Label selectors: decide which labels to remove from an IR's (scored) label groups."""

from __future__ import annotations

from .base import LabelSelector
from .binary_search import BinarySearchLatencyLabelSelector
from .budget import GroupConstraint
from .global_score import GlobalScoreLabelSelector
from .knapsack import KnapsackLabelSelector
from .uniform import UniformLabelSelector

__all__ = [
    "BinarySearchLatencyLabelSelector",
    "GlobalScoreLabelSelector",
    "GroupConstraint",
    "KnapsackLabelSelector",
    "LabelSelector",
    "UniformLabelSelector",
]
