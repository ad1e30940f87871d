"""Label selectors: decide which labels to remove from an IR's (scored) label groups."""

from __future__ import annotations

from .base import LabelSelector
from .global_score import GlobalScoreLabelSelector
from .uniform import UniformLabelSelector

__all__ = ["GlobalScoreLabelSelector", "LabelSelector", "UniformLabelSelector"]
