"""The selector interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._ir.labels import Label
    from ..ir import PruningIR


class LabelSelector(ABC):
    """Chooses labels to prune. ``select`` may take a while for search-based selectors."""

    @abstractmethod
    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        """Labels to remove from snapshot ``snapshot_name`` of ``ir``."""
