"""Criteria: score every label of an IR (higher = more important).

:class:`LossAwareCriterion` (the default to reach for) estimates the loss increase of
removing each label from the user's own loss and backward passes; the classic criteria
(weight norms, FPGM, BN scale, APoZ, mean activation, Taylor FO on weights, random)
share its interface. See :mod:`pruning_ir.criteria.base`. :func:`joint_loss_scores` turns any
criterion's scores into measured joint losses per group (for global and budgeted selection).
"""

from __future__ import annotations

from .activation import APoZCriterion, MeanActivationCriterion
from .base import Criterion
from .forward import FLAPCriterion, InputStats, WandaCriterion
from .gradient import LossAwareCriterion, TaylorFOWeightCriterion
from .joint import JointCurves, joint_loss_scores
from .losses import fisher_loss, output_energy_loss
from .weights import BNScaleCriterion, FPGMCriterion, L1NormCriterion, L2NormCriterion, RandomCriterion

__all__ = [
    "APoZCriterion",
    "BNScaleCriterion",
    "Criterion",
    "FLAPCriterion",
    "FPGMCriterion",
    "InputStats",
    "JointCurves",
    "L1NormCriterion",
    "L2NormCriterion",
    "LossAwareCriterion",
    "MeanActivationCriterion",
    "RandomCriterion",
    "TaylorFOWeightCriterion",
    "WandaCriterion",
    "fisher_loss",
    "joint_loss_scores",
    "output_energy_loss",
]
