"""Gradient criteria: the loss-aware (group Fisher) criterion and Taylor FO on weights.

Both read the gradient of every parameter a prunable group slices, once per backward
pass of the user's own loss, through tensor hooks; nothing is added to the forward
pass and ``.grad`` is left exactly as the user's backward made it.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._ir.labels import LabelGroup
from .._ir.measure import MemberSlots, member_slots, per_index, reader_slots
from ..errors import CalibrationError, InvalidInputError
from .base import Criterion, all_reduce_sum, require_weights

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from ..ir import PruningIR

log = logging.getLogger(__name__)

_Entry = tuple[int, int, int, torch.Tensor, torch.Tensor]  # gid, group size, axis, positions, slots


class _GradientCriterion(Criterion):
    needs_data = True

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *, include_frozen: bool = True,
                 progress: bool = False) -> None:
        super().__init__(ir, snapshot_name, progress=progress)
        self.include_frozen = include_frozen
        self.passes = 0
        self._handles: list[RemovableHandle] = []
        self._flipped: list[nn.Parameter] = []
        self._pending: dict[int, torch.Tensor] = {}
        self._acc: dict[int, torch.Tensor] = {}
        self._on_device: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ per-criterion maths
    def _per_index(self, gw: torch.Tensor, axis: int) -> torch.Tensor:
        """Reduce ``grad * weight`` of one member to one value per entry of ``axis``."""
        raise NotImplementedError

    def _close_pass(self, pending: torch.Tensor) -> torch.Tensor:
        """Turn one backward pass's per-label sums into that pass's contribution to the score."""
        raise NotImplementedError

    def _members(self, group: LabelGroup) -> list[MemberSlots]:
        """The member axes whose ``grad * weight`` enters the score (default: every member)."""
        return member_slots(self.snap, group)

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        params = dict(self.ir.model.named_parameters(remove_duplicate=False))
        per_tensor: dict[int, tuple[nn.Parameter, list[_Entry]]] = {}
        for g in self.snap.prunable_groups:
            for name, axis, sel, slots in self._members(g):
                p = params.get(name)
                if p is None or not p.is_floating_point():
                    continue  # buffers (running statistics) get no gradient
                require_weights(self, p, name)
                per_tensor.setdefault(id(p), (p, []))[1].append((g.gid, g.size, axis, sel, slots))
        self.passes = 0
        self._pending = {}
        self._acc = {g.gid: torch.zeros(g.size, dtype=torch.float64) for g in self.snap.prunable_groups}
        try:
            for p, entries in per_tensor.values():
                if not p.requires_grad:
                    if not self.include_frozen:
                        continue
                    p.requires_grad_(True)
                    self._flipped.append(p)
                    # the user froze it: let our hook see its gradient, then give .grad back untouched
                    old = p.grad
                    self._handles.append(p.register_post_accumulate_grad_hook(functools.partial(
                        _restore_grad, old=old, values=None if old is None else old.detach().clone())))
                self._handles.append(p.register_hook(functools.partial(self._on_grad, p, entries)))
        except Exception:
            self._detach()
            raise

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p in self._flipped:
            p.requires_grad_(False)
        self._flipped.clear()

    def _on_grad(self, p: torch.Tensor, entries: list[_Entry], grad: torch.Tensor) -> None:
        with torch.no_grad():
            if grad.is_sparse:
                grad = grad.to_dense()
            gw = grad.float() * p.detach().float()
            for gid, size, axis, sel, slots in entries:
                sel_d, slots_d = self._device_index(gid, axis, sel, slots, gw.device)
                vals = self._per_index(gw, axis).index_select(0, sel_d).double()
                buf = self._pending.get(gid)
                if buf is None:
                    buf = self._pending[gid] = torch.zeros(size, dtype=torch.float64, device=gw.device)
                buf.index_add_(0, slots_d, vals)

    def _device_index(self, gid: int, axis: int, sel: torch.Tensor, slots: torch.Tensor,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cpu":
            return sel, slots
        key = (id(sel), str(device))
        got = self._on_device.get(key)
        if got is None:
            got = self._on_device[key] = (sel.to(device), slots.to(device))
        return got

    def _flush(self) -> None:
        if not self._pending:
            return
        for gid, buf in self._pending.items():
            self._acc[gid] += self._close_pass(buf).cpu()
        self._pending = {}
        self.passes += 1

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._flush()  # the previous batch's backward pass is complete
        return self.ir.model(*args, **kwargs)

    def _finish(self) -> dict[int, torch.Tensor]:
        self._flush()
        gids = sorted(self._acc)
        summed = all_reduce_sum(torch.tensor([float(self.passes)], dtype=torch.float64),
                                *[self._acc[g] for g in gids])
        passes = int(summed[0].item())
        if passes == 0:
            raise CalibrationError(
                f"{type(self).__name__} saw no backward pass through the model's parameters "
                f"({self.calls} forward calls): inside the with-block call loss.backward() on a loss "
                "computed from the collector's output, on at least one batch."
            )
        out = {g: s / passes for g, s in zip(gids, summed[1:], strict=True)}
        if out and max(float(s.max()) for s in out.values() if s.numel()) <= 1e-30:
            warnings.warn(
                f"{type(self).__name__}: every label scored 0 (the loss gradient vanished on all {passes} backward "
                "passes, e.g. a distillation loss whose student is still identical to the teacher), so any "
                "selection is arbitrary. Calibrate with a loss whose gradient does not vanish at the model: "
                "pruning_ir.fisher_loss(logits) or pruning_ir.output_energy_loss(output) (the model's own "
                "predictions, no labels needed), or the task loss.", RuntimeWarning, stacklevel=3)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(passes={self.passes})"


def _restore_grad(p: torch.Tensor, *, old: torch.Tensor | None, values: torch.Tensor | None) -> None:
    """Give a frozen parameter its ``.grad`` back: the same tensor, with the values it had (autograd
    accumulates into an existing ``.grad`` in place)."""
    if old is not None and values is not None:
        with torch.no_grad():
            old.copy_(values)
    p.grad = old


class LossAwareCriterion(_GradientCriterion):
    """Loss-aware scores: the expected loss increase when a label is removed.

    Removing label ``l`` zeroes every parameter entry in its slice of every tensor the coupled
    group touches (exactly what the equivalence oracle masks). Zeroing the *reading* entries
    alone (the input columns of the layers that read the label's channels, an output
    projection's head columns) already removes the label from everything downstream, and the
    loss is linear in them, so the first-order change is ``-Σ_{e ∈ R_l} g_e · w_e`` over those
    readers ``R_l`` (= the Taylor expansion of the channel's activation where it is read). With
    the empirical Fisher for the curvature and a near-zero expected gradient, the estimate is

        score(l) = ½ · E_batches[(Σ_{e ∈ R_l} g_e · w_e)²]

    (the group Fisher / squared Taylor of Molchanov et al. 2019, over the coupled group's
    readers). Why this form:

    - **Each effect once.** The producers of a channel (its filters, a norm's scale and shift)
      estimate the same change again: summing them too (``members="all"``, the earlier
      default) counts a conv -> BN -> conv label two to three times, more for labels that touch
      more tensors. Groups with no reading weight (query/key head sizes meet in a
      parameter-free matmul) use every member.
    - **Consistent over a coupled group.** The readers of a residual stream's channel in every
      block are summed *before* squaring, because they are removed together: their effects
      add, and cancellations between them are kept.
    - **Comparable across groups.** The score is in units of loss, whatever the layer,
      its width or its fan-in, so global selection compares like with like (weight norms
      are not: their scale depends on the layer's initialisation and normalisation).
    - **Cheap.** One ``grad * weight`` product and one reduction per parameter per
      backward pass, from hooks; no extra forward passes, no gates in the model.

    **The loss matters.** On a model that fits its calibration data the task loss's gradient
    nearly vanishes and the scores rank the removal of *many* labels badly; calibrate with
    :func:`~pruning_ir.fisher_loss` (class logits) or :func:`~pruning_ir.output_energy_loss`
    (other outputs) instead (see ``benchmarks/criteria_diagnosis.py``), and consider
    :func:`~pruning_ir.joint_loss_scores` before a global or budgeted selection.

    The expectation runs over backward passes (the user's batches), so the constant
    factor set by the batch size is the same for every label. With ``torch.distributed``
    initialised, the sums and pass counts are all-reduced on exit, so every rank holds
    the scores of the union of all ranks' batches.

    Args:
        ir: the IR whose model is calibrated.
        snapshot_name: snapshot that receives the scores.
        members: ``"readers"`` (default, see above) or ``"all"`` (every member's grad*weight).
        include_frozen: parameters with ``requires_grad=False`` are switched on for the
            duration (so frozen layers get scores too) and their ``.grad`` is reset to what
            it was after every backward pass; ``False`` leaves them alone (their labels
            then score from the other members only).
        progress: a ``tqdm`` counter of calibration batches.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR, LossAwareCriterion, GlobalScoreLabelSelector
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> ir = PruningIR(model, example_inputs=(x[:2],))
        >>> with LossAwareCriterion(ir) as collect:
        ...     for xb, yb in zip(x.split(8), y.split(8)):
        ...         nn.functional.cross_entropy(collect(xb), yb).backward()
        >>> len(GlobalScoreLabelSelector(0.25).select(ir))
        4
    """

    name = "loss_aware"

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *, members: str = "readers",
                 include_frozen: bool = True, progress: bool = False) -> None:
        super().__init__(ir, snapshot_name, include_frozen=include_frozen, progress=progress)
        if members not in ("readers", "all"):
            raise InvalidInputError(f"LossAwareCriterion(members={members!r}): use 'readers' or 'all'.")
        self.members = members

    def _members(self, group: LabelGroup) -> list[MemberSlots]:
        if self.members == "readers":
            readers = reader_slots(self.snap, group)
            if readers:
                return readers
        return member_slots(self.snap, group)

    def _per_index(self, gw: torch.Tensor, axis: int) -> torch.Tensor:
        return per_index(gw, axis)

    def _close_pass(self, pending: torch.Tensor) -> torch.Tensor:
        return 0.5 * pending.square()


class TaylorFOWeightCriterion(_GradientCriterion):
    """First-order Taylor on weights (Molchanov et al. 2017/2019, NNI's ``TaylorFOWeight``).

    ``score(l) = E_batches[Σ_{e ∈ S_l} (g_e · w_e)²]``: every removed weight entry's own
    squared first-order estimate, summed over all members of the coupled group (the
    entries are squared one by one, so unlike :class:`LossAwareCriterion` the members'
    effects cannot cancel or reinforce each other).
    """

    name = "taylor_fo_weight"

    def _per_index(self, gw: torch.Tensor, axis: int) -> torch.Tensor:
        return per_index(gw.square(), axis)

    def _close_pass(self, pending: torch.Tensor) -> torch.Tensor:
        return pending
