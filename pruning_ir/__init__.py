"""pruning_ir: a graph-IR, dependency-aware structured-pruning engine for PyTorch.

The pipeline, on a toy model::

    >>> import torch
    >>> from torch import nn
    >>> from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
    ...                       nn.Conv2d(8, 6, 3), nn.Flatten(), nn.LazyLinear(5))
    >>> x = torch.randn(2, 3, 9, 9)
    >>> _ = model(x)                                   # materialise the lazy layer
    >>> ir = PruningIR(model.eval(), example_inputs=(x,))   # trace -> IR -> labels
    >>> [g.size for g in ir.prunable_label_groups()]  # conv1/bn channels, conv2 channels
    [8, 6]
    >>> labels = UniformLabelSelector(0.5).select(ir)  # 4 + 3 labels
    >>> slim = ir.prune(labels=labels).model          # a smaller nn.Sequential
    >>> slim[0].out_channels, slim[3].out_channels, slim[5].in_features
    (4, 3, 75)
    >>> verify_pruning(ir, labels).exact               # slim == original with labels masked
    True

Stages (each hands the next plain data): ``_trace`` records ATen ops ->
``_ir`` couples channel spaces into label groups (rules in ``_rules``) ->
``selectors`` choose labels -> ``_rewrite`` slices parameters and updates module
attributes -> ``oracle`` checks slim == masked.
"""

from __future__ import annotations

from ._ir.labels import Label, LabelGroup
from .calls import ExampleCall
from .cost import MacsModel, ParamsModel
from .criteria import (
    APoZCriterion,
    BNScaleCriterion,
    Criterion,
    FLAPCriterion,
    FPGMCriterion,
    L1NormCriterion,
    L2NormCriterion,
    LossAwareCriterion,
    MeanActivationCriterion,
    RandomCriterion,
    TaylorFOWeightCriterion,
    WandaCriterion,
    fisher_loss,
    joint_loss_scores,
    output_energy_loss,
)
from .deploy import load_pruned, save_pruned
from .errors import (
    CalibrationError,
    InvalidInputError,
    LabelError,
    LatencyMeasurementError,
    PruningIRError,
    RewriteError,
    SnapshotVersionError,
    TraceError,
)
from .ir import SNAPSHOT_FORMAT, PruningIR
from .latency import LatencyLUT, MacsLatency, MeasuredLatency, ParamsLatency
from .oracle import VerificationReport, masked_model, verify_pruning
from .selectors import (
    BinarySearchLatencyLabelSelector,
    GlobalScoreLabelSelector,
    GroupConstraint,
    KnapsackLabelSelector,
    LabelSelector,
    UniformLabelSelector,
)

__version__ = "0.1.0"

__all__ = [
    "SNAPSHOT_FORMAT",
    "APoZCriterion",
    "BNScaleCriterion",
    "BinarySearchLatencyLabelSelector",
    "CalibrationError",
    "Criterion",
    "ExampleCall",
    "FLAPCriterion",
    "FPGMCriterion",
    "GlobalScoreLabelSelector",
    "GroupConstraint",
    "InvalidInputError",
    "KnapsackLabelSelector",
    "L1NormCriterion",
    "L2NormCriterion",
    "Label",
    "LabelError",
    "LabelGroup",
    "LabelSelector",
    "LatencyLUT",
    "LatencyMeasurementError",
    "LossAwareCriterion",
    "MacsLatency",
    "MacsModel",
    "MeanActivationCriterion",
    "MeasuredLatency",
    "ParamsLatency",
    "ParamsModel",
    "PruningIR",
    "PruningIRError",
    "RandomCriterion",
    "RewriteError",
    "SnapshotVersionError",
    "TaylorFOWeightCriterion",
    "TraceError",
    "UniformLabelSelector",
    "VerificationReport",
    "WandaCriterion",
    "fisher_loss",
    "joint_loss_scores",
    "load_pruned",
    "masked_model",
    "output_energy_loss",
    "save_pruned",
    "verify_pruning",
]
