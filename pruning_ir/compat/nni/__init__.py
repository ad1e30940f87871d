"""NNI's pruner names and ``config_list`` on the pruning_ir engine (the one-shot pruners; see README).

    from pruning_ir.compat.nni import L1FilterPruner
    config_list = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    pruner = L1FilterPruner(model, config_list, dummy_input=x)
    model = pruner.compress()              # masks on your model, in place, as NNI does
    ...                                    # fine-tune the masked model if you like
    pruner.export_model("model.pth", "mask.pth")
    slim = pruner.speedup()                # a physically smaller model, equal to the masked one

``config_list`` entries (as in NNI): ``sparsity`` (or ``sparsity_per_layer``): the fraction of each
selected op's output channels to remove; or ``total_sparsity`` over all the entry's ops together,
with ``max_sparsity_per_layer``; ``op_types`` (class names, ``"default"`` = every ``Linear`` and
``Conv*``) and/or ``op_names``; ``exclude: True`` takes the matched ops out, and with them every
op whose output channels are coupled with theirs (a residual add: the coupled channels go
together or not at all). An op matched by several entries takes the last one. An op's output
channels are a label group of the IR (coupled channels included: the dependency-aware mode is
the only mode), so when a group's ops ask for
different sparsities the group takes the smallest (no op loses more than asked); a group that
cannot be pruned is reported with the reason in a warning, never silently skipped.

``compress()`` scores the groups with the pruner's criterion (L1 / L2 / FPGM / BN scale: weights
only; ``LevelPruner``: single entries, see :mod:`pruning_ir.sparsity`) and masks every parameter
slice of the removed channels as a ``torch.nn.utils.prune`` reparametrisation. ``speedup()`` folds
the masks (with whatever training happened since), removes the channels with the IR, checks the
slim model against the masked one on the dummy input and returns it (``max_abs_diff`` on the
pruner). The activation and Taylor pruners take NNI's ``trainer(model, optimizer, criterion,
epoch)`` and read its first ``statistics_batch_num`` batches. AGP, lottery ticket, simulated
annealing, NetAdapt, ADMM and AutoCompress follow; see each class. A model that already carries
``torch.nn.utils.prune`` masks is refused (fold them first with
:func:`pruning_ir.sparsity.make_permanent`).
"""
from __future__ import annotations

from .base import folded_state
from .pruners import (
    ActivationAPoZRankFilterPruner,
    ActivationMeanRankFilterPruner,
    AGP_Pruner,
    FPGMPruner,
    L1FilterPruner,
    L2FilterPruner,
    LevelPruner,
    LotteryTicketPruner,
    SlimPruner,
    TaylorFOWeightFilterPruner,
)
from .search import ADMMPruner, AutoCompressPruner, NetAdaptPruner, SimulatedAnnealingPruner

__all__ = [
    "ADMMPruner",
    "AGP_Pruner",
    "ActivationAPoZRankFilterPruner",
    "ActivationMeanRankFilterPruner",
    "AutoCompressPruner",
    "FPGMPruner",
    "L1FilterPruner",
    "L2FilterPruner",
    "LevelPruner",
    "LotteryTicketPruner",
    "NetAdaptPruner",
    "SimulatedAnnealingPruner",
    "SlimPruner",
    "TaylorFOWeightFilterPruner",
    "folded_state",
]
