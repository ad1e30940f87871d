"""Recovery without fine-tuning: repair a slim model from calibration data alone.

* :func:`recalibrate_bn`: every BatchNorm's running statistics re-estimated on your batches
  (reset, then a plain average; only the norms in train mode).
* :func:`compensate_bias` (FLAP's bias compensation): each layer that read removed channels gets
  their mean contribution ``W[:, removed] @ E[x_removed]`` added to its bias, so the expected
  output is unchanged.
* :func:`reconstruct_least_squares`: each linear layer that read removed channels gets the weights
  (and bias) that best reproduce its original output from the kept channels on the calibration
  inputs, ``min E||W' x_K + b' - (W x + b)||^2`` (a ridge-regularised normal equation on the
  collected second moments).

Both repairs are right per layer in expectation but not always for the model: in MiniLM's first
layer, where a few outlier tokens carry the removed FFN channels' mean, both made the embedding
far worse at half the MACs (``benchmarks/recovery.py``). Confirm them with an evaluation.

The statistics come from a forward criterion's ``stats`` (:class:`~pruning_ir.criteria.WandaCriterion`
or :class:`~pruning_ir.criteria.FLAPCriterion`; ``gram=True`` for least squares), taken on the
*original* model. The slim model is changed in place; these repairs are deliberate changes of
values, so the slim model no longer equals the masked one (verify before repairing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._ir.axes import keep_mask
from .criteria.forward import InputStats, reader_channel_dim
from .errors import InvalidInputError

if TYPE_CHECKING:
    from ._ir.labels import Label
    from .ir import PruningIR

log = logging.getLogger(__name__)


def _tensor(module: nn.Module, attr: str) -> torch.Tensor | None:
    t = getattr(module, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def _weight(module: nn.Module, owner: str) -> torch.Tensor:
    t = _tensor(module, "weight")
    if t is None:
        raise InvalidInputError(f"{owner!r} has no weight tensor in the slim model: give the model ir.prune made.")
    return t


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None = None
                   ) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches``.

    Statistics are reset and accumulated as a plain average over the batches (``momentum=None``
    while it runs), with only the BatchNorm layers in train mode (dropout stays off). A batch is
    an input tensor, a tuple whose first item is the input, or anything ``forward(model, batch)``
    runs. The model's modes and momenta are restored; returns the number of batches seen.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    n = 0
    try:
        for b in batches:
            if forward is not None:
                forward(model, b)
            else:
                model(b if isinstance(b, torch.Tensor) else b[0])
            n += 1
    finally:
        for m, mom in zip(norms, momenta, strict=True):
            m.momentum = mom
        for mod, mode in modes:
            mod.train(mode)
    if n == 0:
        raise InvalidInputError("recalibrate_bn saw no batch: give at least one calibration batch.")
    return n


def _readers(ir: PruningIR, labels: Sequence[Label], stats: Mapping[str, InputStats], name: str
             ) -> list[tuple[str, int, torch.Tensor, torch.Tensor | None]]:
    """Per reader module with statistics whose input lost channels: (module name, weight axis read,
    kept input channels, kept output rows or None)."""
    snap = ir.snapshot(name)
    removed = ir.check_labels(labels, name)
    out = []
    for owner in stats:
        pname = f"{owner}.weight"
        vid = snap.graph.params.get(pname)
        if vid is None:
            continue
        axes = snap.graph.values[vid].axes
        module = ir.model.get_submodule(owner)
        axis = 0 if type(module).__name__ == "Conv1D" else 1
        keep_in = keep_mask(snap.spaces, axes[axis], removed)
        if keep_in is None:
            continue
        keep_out = keep_mask(snap.spaces, axes[1 - axis], removed)
        out.append((owner, axis, keep_in, keep_out))
    return out


def _check_stats(stats: Any, what: str) -> Mapping[str, InputStats]:
    if isinstance(stats, Mapping):
        return stats
    got = getattr(stats, "stats", None)
    if isinstance(got, Mapping):
        return got
    raise InvalidInputError(f"{what}: give the statistics of a forward criterion (WandaCriterion / FLAPCriterion "
                            f"after its with-block, or its .stats), got {type(stats).__name__}.")


@torch.no_grad()
def compensate_bias(ir: PruningIR, slim: nn.Module, labels: Sequence[Label], stats: Any,
                    name: str = "main") -> list[str]:
    """Fold the removed input channels' mean contribution into the bias of every reader of them
    (a bias is added to a reader that has none). ``ir`` is the IR the labels were selected on (its
    model the original), ``slim`` the pruned model, ``stats`` a forward criterion (or its
    ``stats``) calibrated on the original. Returns the module names changed."""
    st_map = _check_stats(stats, "compensate_bias")
    changed = []
    for owner, axis, keep_in, keep_out in _readers(ir, labels, st_map, name):
        st = st_map[owner]
        w = _weight(ir.model.get_submodule(owner), owner).detach().double()
        gone = (~keep_in).nonzero().squeeze(1)
        mean = st.mean.to(w.device)[gone]
        w_gone = w.index_select(axis, gone.to(w.device))
        if axis == 0:  # Conv1D: weight [in, out]
            delta = mean @ w_gone
        else:  # linear [out, in] or conv [out, in, *k]: a constant input channel times the kernel's sum
            delta = torch.einsum("oi...,i->o", w_gone, mean)
        if keep_out is not None:
            delta = delta[keep_out.to(delta.device)]
        target = slim.get_submodule(owner)
        tw = _weight(target, owner)
        bias = _tensor(target, "bias")
        if bias is None:
            bias = nn.Parameter(torch.zeros(delta.numel(), dtype=tw.dtype, device=tw.device))
            target.bias = bias
        bias.add_(delta.to(bias))
        changed.append(owner)
    log.info("compensate_bias: %d readers changed", len(changed))
    return changed


@torch.no_grad()
def reconstruct_least_squares(ir: PruningIR, slim: nn.Module, labels: Sequence[Label], stats: Any,
                              name: str = "main", ridge: float = 1e-3) -> list[str]:
    """Refit every linear reader of removed channels (``nn.Linear`` and HF ``Conv1D``) to reproduce
    its original output from the kept channels on the calibration inputs (see the module docstring).
    Needs the Gram matrices: calibrate the forward criterion with ``gram=True``. ``ridge`` scales a
    diagonal term relative to the mean input energy (for rank-deficient inputs). Convolutions are
    left alone (listed in a log message). Returns the module names changed."""
    st_map = _check_stats(stats, "reconstruct_least_squares")
    changed, skipped = [], []
    for owner, axis, keep_in, keep_out in _readers(ir, labels, st_map, name):
        st = st_map[owner]
        orig = ir.model.get_submodule(owner)
        if reader_channel_dim(orig, axis) != -1:
            skipped.append(owner)
            continue
        if st.gram is None:
            raise InvalidInputError(f"reconstruct_least_squares: no Gram matrix for {owner!r}; calibrate the forward "
                                    "criterion with gram=True.")
        w = _weight(orig, owner).detach().double().cpu()
        w = w.T if axis == 0 else w  # [out, in]
        ob = _tensor(orig, "bias")
        b = ob.detach().double().cpu() if ob is not None else None
        n = float(st.count)
        sigma, mu = st.gram / n, st.mean
        k = keep_in.nonzero().squeeze(1)
        if b is None:  # min E||W' x_K - W x||^2
            lhs = sigma[k][:, k]
            rhs = w @ sigma[:, k]
        else:  # with a bias: regress on [x_K, 1]
            lhs = torch.zeros(len(k) + 1, len(k) + 1, dtype=torch.float64)
            lhs[:-1, :-1], lhs[:-1, -1], lhs[-1, :-1], lhs[-1, -1] = sigma[k][:, k], mu[k], mu[k], 1.0
            rhs = torch.cat([w @ sigma[:, k] + b[:, None] * mu[k][None], (w @ mu + b)[:, None]], 1)
        lam = ridge * float(sigma.diagonal().mean()) + 1e-12
        sol = torch.linalg.solve(lhs + lam * torch.eye(lhs.shape[0], dtype=torch.float64), rhs.T).T
        w_new, b_new = (sol[:, :-1], sol[:, -1]) if b is not None else (sol, None)
        if keep_out is not None:
            w_new = w_new[keep_out]
            b_new = b_new[keep_out] if b_new is not None else None
        target = slim.get_submodule(owner)
        tw, tb = _weight(target, owner), _tensor(target, "bias")
        new = w_new.T if axis == 0 else w_new
        if tuple(new.shape) != tuple(tw.shape):
            raise InvalidInputError(f"reconstruct_least_squares: {owner!r} is {tuple(tw.shape)} in the slim "
                                    f"model, expected {tuple(new.shape)}: give the model ir.prune(labels=...) made.")
        tw.copy_(new.to(tw))
        if b_new is not None and tb is not None:
            tb.copy_(b_new.to(tb))
        changed.append(owner)
    if skipped:
        log.info("reconstruct_least_squares: convolution readers left alone: %s", ", ".join(skipped[:8]))
    return changed
