"""Cost models computed from the IR's shapes: MACs and parameter counts for any selection of
labels, without re-running the model (see :mod:`pruning_ir.cost.macs` for the conventions)."""

from __future__ import annotations

from .base import CostModel, TagSavings
from .macs import MAC_OPS, MacsModel, NodeCostModel, ParamsModel

__all__ = ["MAC_OPS", "CostModel", "MacsModel", "NodeCostModel", "ParamsModel", "TagSavings"]
