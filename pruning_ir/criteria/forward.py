"""Forward-only criteria for models too large for a backward pass: Wanda-sp and FLAP.

Both score a label by the layers that *read* its channels (the input columns of a linear or
convolution, see :func:`~pruning_ir._ir.measure.reader_slots`) and by the statistics of what those
layers read on calibration data, collected by forward pre-hooks as the model runs under
``torch.no_grad()``: per input channel the count, sum and sum of squares (and, with
``gram=True``, the Gram matrix ``X^T X`` that least-squares reconstruction needs). Nothing is kept
but these running sums, so memory beyond the model is one layer's activations, as in any
inference pass.

* :class:`WandaCriterion` (Wanda-sp; Sun et al. 2024, structured form of An et al. 2024):
  ``score(c) = sum_o |W[o, c]| * ||X_c||_2`` over every reading weight.
* :class:`FLAPCriterion` (An et al., AAAI 2024): the fluctuation metric
  ``score(c) = Var(X_c) * ||W[:, c]||^2``, standardised per group when ``standardize=True``
  (FLAP's adaptive structure search compares groups by standardised scores); its bias
  compensation is :func:`pruning_ir.recovery.compensate_bias`, which reads the means collected here.

Supported readers: ``nn.Linear``, ``nn.Conv1d/2d/3d`` with ``groups=1`` and Hugging Face's
``Conv1D``. A group with no such reader (channels read by a parameter-free op only) is scored by
the L1 norm of its weights instead and listed in ``fallback_groups`` with a log warning.
Under ``torch.distributed`` the sums are all-reduced on exit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._ir.measure import reader_slots, scatter_slots
from ..errors import CalibrationError
from .base import Criterion, all_reduce_sum, require_weights

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from ..ir import PruningIR

log = logging.getLogger(__name__)


def reader_channel_dim(module: nn.Module, axis: int) -> int | None:
    """The input dim that weight axis ``axis`` of ``module`` contracts, or ``None`` when the module
    is not a supported reader (see the module docstring)."""
    if isinstance(module, nn.Linear) and axis == 1:
        return -1
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1 and axis == 1 \
            and not module.transposed:
        return 1
    if type(module).__name__ == "Conv1D" and axis == 0:  # transformers' GPT-2 style linear: weight [in, out]
        return -1
    return None


@dataclass
class InputStats:
    """Running statistics of one reader module's input, per input channel (float64, on CPU after
    calibration): ``count`` positions, ``total`` sum, ``squares`` sum of squares, ``gram`` the
    ``channels x channels`` sum of outer products (``None`` unless asked for)."""

    dim: int
    count: torch.Tensor
    total: torch.Tensor
    squares: torch.Tensor
    gram: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.squares / self.count.clamp_min(1) - self.mean.square()).clamp_min(0)

    def add(self, x: torch.Tensor) -> None:
        """Add one input's statistics: per-batch sums in float32 (no float64 copy of the activation),
        accumulated in float64."""
        x = x.detach()
        flat = x.movedim(self.dim, -1).reshape(-1, x.shape[self.dim])
        flat = flat if flat.dtype == torch.float32 else flat.float()
        self.count += flat.shape[0]
        self.total += flat.sum(0).double().to(self.total.device)
        self.squares += torch.linalg.vector_norm(flat, dim=0).double().square().to(self.squares.device)
        if self.gram is not None:
            self.gram += (flat.T @ flat).double().to(self.gram.device)


def column_sums(w: torch.Tensor, axis: int, power: int) -> torch.Tensor:
    """``sum(|w| ** power)`` over every dim but ``axis`` (float64, on CPU), a few million entries at a
    time, so that an LM head's weight is never copied whole (as ``w.abs().double()`` would)."""
    m = w.detach().movedim(axis, -1)
    rows = m.reshape(-1, m.shape[-1])
    step = max(1, (1 << 18) // max(1, rows.shape[1]))
    out = torch.zeros(rows.shape[1], dtype=torch.float64, device=w.device)
    for i in range(0, rows.shape[0], step):
        chunk = rows[i:i + step].float()
        out += torch.linalg.vector_norm(chunk, ord=power, dim=0).double() ** power
    return out.cpu()


class _ForwardCriterion(Criterion):
    needs_data = True

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *, gram: bool = False,
                 progress: bool = False) -> None:
        super().__init__(ir, snapshot_name, progress=progress)
        self.gram = gram
        self.stats: dict[str, InputStats] = {}
        """Per reader module name: the statistics of its input (kept after scoring, for recovery)."""
        self.fallback_groups: list[int] = []
        self._handles: list[RemovableHandle] = []

    def _attach(self) -> None:
        modules = dict(self.ir.model.named_modules())
        self.stats = {}
        for g in self.snap.prunable_groups:
            for name, axis, _sel, _slots in reader_slots(self.snap, g):
                owner, _, leaf = name.rpartition(".")
                mod = modules.get(owner)
                dim = reader_channel_dim(mod, axis) if mod is not None and leaf == "weight" else None
                if dim is None or mod is None or owner in self.stats:
                    continue
                width = mod.weight.shape[axis]
                self.stats[owner] = InputStats(
                    dim, torch.zeros((), dtype=torch.float64), torch.zeros(width, dtype=torch.float64),
                    torch.zeros(width, dtype=torch.float64),
                    torch.zeros(width, width, dtype=torch.float64) if self.gram else None)
        try:
            for owner, st in self.stats.items():
                self._handles.append(modules[owner].register_forward_pre_hook(
                    lambda _m, args, st=st: st.add(args[0]) if args and isinstance(args[0], torch.Tensor) else None))
        except Exception:
            self._detach()
            raise

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with torch.no_grad():
            return self.ir.model(*args, **kwargs)

    def _channel_score(self, w: torch.Tensor, axis: int, st: InputStats) -> torch.Tensor:
        """One value per entry of weight axis ``axis`` (an input channel of the reader)."""
        raise NotImplementedError

    def _finish(self) -> dict[int, torch.Tensor]:
        names = sorted(self.stats)
        flat: list[torch.Tensor] = []
        for n in names:
            st = self.stats[n]
            flat += [st.count.reshape(1), st.total, st.squares] + ([st.gram] if st.gram is not None else [])
        reduced = iter(all_reduce_sum(*flat))
        for n in names:
            st = self.stats[n]
            st.count, st.total, st.squares = next(reduced).reshape(()), next(reduced), next(reduced)
            if st.gram is not None:
                st.gram = next(reduced)
        if self.calls == 0 or any(float(self.stats[n].count) == 0 for n in names):
            raise CalibrationError(f"{type(self).__name__} saw no calibration data: call collect(...) on at least "
                                   "one batch inside the with-block (every reading layer must run).")
        tensors = dict(self.ir.model.named_parameters(remove_duplicate=False))
        out: dict[int, torch.Tensor] = {}
        missing = []
        for g in self.snap.prunable_groups:
            total = torch.zeros(g.size, dtype=torch.float64)
            used = 0
            for name, axis, sel, slots in reader_slots(self.snap, g):
                owner = name.rpartition(".")[0]
                got = self.stats.get(owner)
                if got is None:
                    continue
                w = tensors[name]
                require_weights(self, w, name)
                total += scatter_slots(self._channel_score(w.detach(), axis, got), sel, slots, g.size).cpu()
                used += 1
            if used:
                out[g.gid] = self._post(total)
            else:
                missing.append(g.gid)
        self.fallback_groups = missing
        if missing:
            from .weights import L1NormCriterion

            log.warning("%s: %d groups have no linear/conv reader to take input statistics at and are scored by "
                        "L1 norm: %s", self.name, len(missing), ", ".join(f"g{g}" for g in missing[:8]))
            l1 = L1NormCriterion(self.ir, self.snapshot_name)._finish()
            out.update({gid: l1[gid] for gid in missing})
        return out

    def _post(self, scores: torch.Tensor) -> torch.Tensor:
        return scores


class WandaCriterion(_ForwardCriterion):
    """Wanda-sp: ``|W| x ||X||`` per input channel of every reading layer, summed over a label's
    channels and readers (see the module docstring). Forward passes only.

    Args:
        ir: the IR whose model is calibrated.
        snapshot_name: snapshot that receives the scores.
        gram: also collect each reader's input Gram matrix (for
            :func:`pruning_ir.recovery.reconstruct_least_squares`).
        progress: a ``tqdm`` counter of calibration batches.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR, GlobalScoreLabelSelector
        >>> from pruning_ir.criteria import WandaCriterion
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
        >>> with WandaCriterion(ir) as collect:
        ...     for _ in range(4):
        ...         _ = collect(torch.randn(8, 4))
        >>> len(GlobalScoreLabelSelector(0.25).select(ir))
        4
    """

    name = "wanda"

    def _channel_score(self, w: torch.Tensor, axis: int, st: InputStats) -> torch.Tensor:
        return column_sums(w, axis, 1) * st.squares.sqrt()


class FLAPCriterion(_ForwardCriterion):
    """FLAP's fluctuation metric: ``Var(X_c) x ||W[:, c]||^2`` per input channel of every reading
    layer, summed over a label's channels and readers; with ``standardize`` (default, as FLAP's
    adaptive structure search) each group's scores are shifted and scaled to mean 0, standard
    deviation 1 (z-scores, so some are negative), so global selection compares groups on a common
    scale; these are rankings, not loss units, so prefer global selection to the knapsack with
    them. Use :func:`pruning_ir.recovery.compensate_bias` after pruning to fold the removed
    channels' mean contribution into the readers' biases (FLAP's bias compensation).
    """

    name = "flap"

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *, standardize: bool = True, gram: bool = False,
                 progress: bool = False) -> None:
        super().__init__(ir, snapshot_name, gram=gram, progress=progress)
        self.standardize = bool(standardize)

    def _channel_score(self, w: torch.Tensor, axis: int, st: InputStats) -> torch.Tensor:
        return column_sums(w, axis, 2) * st.variance

    def _post(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.standardize or scores.numel() < 2:
            return scores
        return (scores - scores.mean()) / scores.std().clamp_min(1e-30)
