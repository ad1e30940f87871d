"""Label selectors: decide which labels to remove from an IR's (scored) label groups."""

from __future__ import annotations

from .base import LabelSelector
from .uniform import UniformLabelSelector

__all__ = ["LabelSelector", "UniformLabelSelector"]
