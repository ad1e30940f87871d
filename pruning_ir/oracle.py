"""The equivalence oracle: slim model == original with the removed labels masked to zero."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch.utils import _pytree as pytree

from ._ir.axes import keep_mask, removed_axes
from ._ir.measure import named_tensors
from ._trace.conditions import batch_size, other_batch
from ._trace.run import call_modes, flat_tensors
from .ir import _as_call

if TYPE_CHECKING:
    from ._ir.labels import Label
    from .ir import PruningIR


NOISE_ULPS = 32
"""How far (units in the last place) each parameter moves to measure the masked original's rounding
noise: 2^-18 relative in float32, about what summing a thousand terms accumulates."""
NOISE_FACTOR = 4.0
"""A difference within this many times that noise is rounding."""
NOISE_CAP = 0.05
"""Noise above this fraction of the largest reference value verifies nothing: the fixed tolerance
stays (the check is then not exact)."""


def _allowed(reference: float, noise: float) -> float:
    """The largest difference a check accepts: float rounding, or the model's own noise floor."""
    fixed = 1e-4 * max(1.0, reference)
    return max(fixed, NOISE_FACTOR * noise) if noise <= NOISE_CAP * reference else fixed


@dataclass(frozen=True)
class Check:
    """One condition :func:`verify_pruning` compared the slim and the masked model under.

    ``name``: ``"example call"``, ``"train mode"`` (every module in training mode, dropout
    keeping everything, same seeds) or ``"batch N"`` (the example call with one more example).
    Output and (with ``backward``) gradient differences are absolute; ``error`` is set when the
    slim model failed where the masked original ran.
    """

    name: str
    max_abs_diff: float
    max_reference: float
    max_grad_diff: float | None = None
    max_grad_reference: float = 0.0
    error: str | None = None
    noise: float = 0.0
    """The masked original's own rounding noise on the outputs: how far they move when every
    floating parameter moves by ``NOISE_ULPS`` units in the last place (measured only when a check
    is not exact, no reason explains it and float64 is not available; else 0)."""
    grad_noise: float = 0.0
    """The same for the kept parameter entries' gradients."""

    @property
    def exact(self) -> bool:
        if self.error is not None:
            return False
        ok = self.max_abs_diff <= _allowed(self.max_reference, self.noise)
        if self.max_grad_diff is not None:
            ok = ok and self.max_grad_diff <= _allowed(self.max_grad_reference, self.grad_noise)
        return ok


@dataclass
class VerificationReport:
    """Result of :func:`verify_pruning`.

    ``exact`` is true when, under every check in ``checks``, every output (and, with
    ``backward``, the gradient of every kept parameter entry) matches within float rounding
    (``diff <= 1e-4 * max(1, max |reference|)``). ``max_abs_diff`` / ``max_reference`` are the
    outputs' worst case over the checks. ``inexact_reasons`` lists the places where exactness is
    not expected (a normalisation, a mean or a softmax over a pruned axis); they are reported,
    never hidden. ``skipped`` says which checks could not run and why (the masked original
    itself fails there, or there is no batch axis); ``unverified`` lists parameters whose
    gradients could not be compared (not seen by the trace, and their shape changed).
    """

    max_abs_diff: float
    max_reference: float
    exact: bool
    inexact_reasons: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    precision: str = "as the model"
    """``"float64"`` when both models were compared in double precision (``float64=True`` and
    the masked original runs so); ``"as the model, within its own rounding noise"`` when it does
    not run so and the checks were judged against the masked original's own one-ulp noise
    (:attr:`Check.noise`: a difference up to ``NOISE_FACTOR`` times it is rounding, when the noise
    is at most ``NOISE_CAP`` of the largest reference value); else
    ``"as the model"``."""

    @property
    def expected_exact(self) -> bool:
        return not self.inexact_reasons


def masked_model(ir: PruningIR, labels: Sequence[Label], name: str = "main") -> torch.nn.Module:
    """A copy of ``ir.model`` whose parameter entries touched by ``labels`` are zero."""
    snap = ir.snapshot(name)
    removed = ir.check_labels(labels, name)
    model = copy.deepcopy(ir.model)
    tensors = named_tensors(model)
    with torch.no_grad():
        for pname, d, m in removed_axes(snap, removed):
            t = tensors[pname]
            t.index_fill_(d, (~m).nonzero().squeeze(1).to(t.device), 0)
    return model


Call = tuple[tuple[Any, ...], dict[str, Any]]


def _run(model: torch.nn.Module, call: Call, modes: dict[str, bool] | None,
         backward: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs (flat tensors) of ``model`` on ``call`` with modules in ``modes`` (``None``: all in
    training mode) under :func:`deterministic`, and, with ``backward``, the gradients of a fixed
    random projection of the floating outputs w.r.t. every parameter (``.grad`` untouched)."""
    args, kwargs = call
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if modes is None:
        modes = {path: True for path, _ in model.named_modules()}
    # seeded in eval mode too (random ops); a training-mode run updates buffers (BN running
    # statistics): they are put back after the backward (which may read them), or the next
    # condition would run on what this one left
    with call_modes(model, modes, seed="always"):
        with torch.set_grad_enabled(backward):
            out = model(*args, **kwargs)
        flat = flat_tensors(out)
        grads: dict[str, torch.Tensor] = {}
        floats = [t for t in flat if t.is_floating_point() and t.requires_grad]
        if backward and floats and params:
            with torch.enable_grad():
                gen = torch.Generator().manual_seed(0)
                loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum()
                           for t in floats)
                got = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)  # type: ignore[arg-type]
                grads = {n: g for (n, _), g in zip(params, got, strict=True) if g is not None}
    return [t.detach() for t in flat], grads


def _diff(ref: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> tuple[float, float]:
    if len(ref) != len(got):
        return float("inf"), 0.0
    diff = scale = 0.0
    for r, g in zip(ref, got, strict=True):
        if r.shape != g.shape:
            return float("inf"), scale
        if r.is_floating_point():
            diff = max(diff, float((r.double() - g.double()).abs().max()) if r.numel() else 0.0)
            scale = max(scale, float(r.double().abs().max()) if r.numel() else 0.0)
        elif not torch.equal(r, g):
            diff = float("inf")
    return diff, scale


def _kept_grads(snap: Any, removed: dict[int, torch.Tensor], ref: dict[str, torch.Tensor],
                got: dict[str, torch.Tensor], unverified: set[str]) -> tuple[float, float]:
    """Largest difference between the slim model's parameter gradients and the masked model's
    on the kept entries, and the largest reference gradient."""
    diff = scale = 0.0
    for pname in sorted(set(ref) | set(got)):
        r = ref.get(pname)
        g = got.get(pname)
        if r is not None:
            r = _kept_entries(snap, removed, pname, r)
        if r is None or g is None:
            other = g if r is None else r
            assert other is not None
            if bool(other.abs().max() > 0) if other.numel() else False:
                diff = float("inf")  # a gradient on one side only
            continue
        if r.shape != g.shape:
            unverified.add(pname)
            continue
        diff = max(diff, float((r.double() - g.double()).abs().max()) if r.numel() else 0.0)
        scale = max(scale, float(r.double().abs().max()) if r.numel() else 0.0)
    return diff, scale


def _kept_entries(snap: Any, removed: dict[int, torch.Tensor], pname: str, t: torch.Tensor) -> torch.Tensor:
    """The entries of the unpruned parameter ``pname``'s tensor ``t`` (a gradient) that the
    removal keeps."""
    vid = snap.graph.params.get(pname)
    if vid is not None:
        for d, ax in enumerate(snap.graph.values[vid].axes):
            m = keep_mask(snap.spaces, ax, removed)
            if m is not None:
                t = t.index_select(d, m.nonzero().squeeze(1).to(t.device))
    return t


def _with_noise(snap: Any, removed: dict[int, torch.Tensor], ref_model: torch.nn.Module, checks: list[Check],
                conditions: list[tuple[str, Call, dict[str, bool] | None]], grad_ok: bool) -> list[Check]:
    """``checks`` with each one's noise floor: the masked original against a copy of itself whose
    floating parameters each moved by ``NOISE_ULPS`` units in the last place (random sign, seeded),
    under the same condition, on the kept entries. Such a copy computes the same function with
    rounding-sized changes, as the slim model does with its shorter sums; in a well-conditioned
    model the floor is tiny, and it is large only where the model itself amplifies rounding
    (decisions on computed values, cancellations), where a pruning defect still moves outputs or
    gradients by far more."""
    twin = copy.deepcopy(ref_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in twin.parameters():
            if t.is_floating_point() and t.numel():
                sign = torch.randint(0, 2, t.shape, generator=gen).to(t.device, t.dtype) * 2 - 1
                t.add_(sign * t.abs().clamp_min(torch.finfo(t.dtype).tiny) * (NOISE_ULPS * torch.finfo(t.dtype).eps))
    by_name = {label: (c, modes) for label, c, modes in conditions}
    out = []
    for check in checks:
        if check.error is not None or check.exact or check.name not in by_name:
            out.append(check)
            continue
        c, modes = by_name[check.name]
        try:
            ref, ref_grads = _run(ref_model, c, modes, grad_ok)
            got, got_grads = _run(twin, c, modes, grad_ok)
        except Exception:  # the masked original ran this condition before: keep the verdict as it is
            out.append(check)
            continue
        noise, _ = _diff(ref, got)
        kept = {n: _kept_entries(snap, removed, n, g) for n, g in got_grads.items()}
        grad_noise, _ = _kept_grads(snap, removed, ref_grads, kept, set())
        out.append(replace(check, noise=noise, grad_noise=grad_noise))
    return out


def _to_float64(call: Call) -> Call:
    out = pytree.tree_map(lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, call)
    return tuple(out[0]), dict(out[1])


def _widen(ref: torch.nn.Module, slim: torch.nn.Module, conditions: list[tuple[str, Call, dict[str, bool] | None]],
           backward: bool) -> bool:
    """Turn both (throwaway) models to float64 if the masked original runs the first condition so
    (on a GPU too: TF32 convolutions and matmuls differ from the masked original by 1e-3
    relative in gradients); else leave them as they were."""
    dtypes = {n: t.dtype for n, t in [*ref.named_parameters(), *ref.named_buffers()]}
    slim_dtypes = {n: t.dtype for n, t in [*slim.named_parameters(), *slim.named_buffers()]}
    _, call, modes = conditions[0]
    try:
        ref.double()
        _run(ref, _to_float64(call), modes, backward)
        slim.double()
    except Exception:  # code that fixes dtypes (float32 masks, kernels without float64), or no memory
        # for double copies (a large model on a GPU): compare as is
        for model, kinds in ((ref, dtypes), (slim, slim_dtypes)):
            for n, t in [*model.named_parameters(), *model.named_buffers()]:
                t.data = t.data.to(kinds[n])
        return False
    return True


def _compare_under(snap: Any, removed: dict[int, torch.Tensor], ref_model: torch.nn.Module, slim: torch.nn.Module,
                   conditions: list[tuple[str, Call, dict[str, bool] | None]], grad_ok: bool, unverified: set[str],
                   wide: bool) -> tuple[list[Check], list[str]]:
    """One :class:`Check` per condition the masked original runs, and why the others were skipped."""
    checks: list[Check] = []
    skipped: list[str] = []
    for label, c, modes in conditions:
        if wide:
            c = _to_float64(c)
        try:
            ref, ref_grads = _run(ref_model, c, modes, grad_ok)
        except Exception as exc:  # the original cannot run like this: nothing to compare with
            skipped.append(f"{label}: the masked original fails there ({type(exc).__name__}: {exc})")
            continue
        try:
            got, got_grads = _run(slim, c, modes, grad_ok)
        except Exception as exc:
            checks.append(Check(label, float("inf"), 0.0, error=f"{type(exc).__name__}: {exc}"))
            continue
        diff, scale = _diff(ref, got)
        gdiff: float | None = None
        gscale = 0.0
        if grad_ok:
            gdiff, gscale = _kept_grads(snap, removed, ref_grads, got_grads, unverified)
        checks.append(Check(label, diff, scale, gdiff, gscale))
    return checks, skipped


def verify_pruning(ir: PruningIR, labels: Sequence[Label], example_inputs: Any = None,
                   example_kwargs: dict[str, Any] | None = None, name: str = "main", *,
                   backward: bool = True, train: bool = True, other_batch_size: bool = True,
                   float64: bool = True) -> VerificationReport:
    """Prune ``labels`` and compare the slim model with the masked original (the original with
    the removed labels' parameter entries set to zero) under what users do next.

    Checks, each listed in the report's ``checks``:

    - the example call (the IR's, or ``example_inputs``/``example_kwargs``), modules in the
      modes they were traced in, and every extra call the IR traced (``extra_calls``, a
      training-mode call for train-only paths) when no inputs are given;
    - ``train``: the same call with every module in training mode (dropout keeps every entry,
      both models start from the same seeds, buffers such as BN statistics are not kept);
    - ``other_batch_size``: the call with one more example in the batch.

    With ``backward`` each check also compares the gradients of a fixed random projection of
    the outputs w.r.t. every kept parameter entry. Neither model's ``.grad`` is touched, and
    ``ir.model`` is not modified. A check whose condition the masked original itself cannot run
    (BatchNorm in training mode with one example) is listed in ``skipped`` with the reason.

    With ``float64`` (default), when a check is not exact in the model's precision and no listed
    reason explains it, both models
    and the floating inputs are compared again in double precision if the masked original runs
    so (CPU or GPU; ``precision`` says which was used): float32 backward passes through
    normalisations of tiny activations amplify rounding to relative errors of 1e-4 to 1e-3 in
    large gradients, and TF32 GPU kernels round that much anyway, which would fake a difference.
    A model that does not run in float64 (code that fixes dtypes: ``.float()`` in forward) is
    judged against its own rounding noise instead: the masked original against a copy whose
    parameters moved by ``NOISE_ULPS`` units in the last place (:attr:`Check.noise`).
    """
    snap = ir.snapshot(name)
    pruned = ir.prune(name, labels=labels)
    call: Call = _as_call(example_inputs, example_kwargs) if (example_inputs is not None or example_kwargs) \
        else snap.example
    removed = ir.check_labels(labels, name)
    ref_model = masked_model(ir, labels, name)
    slim = pruned.model
    conditions: list[tuple[str, Call, dict[str, bool] | None]] = [("example call", call, snap.modes)]
    if example_inputs is None and not example_kwargs:
        conditions += [(f"traced call {k + 2}", (a, k_), modes) for k, (a, k_, modes) in
                       enumerate(getattr(snap, "extra", []))]
    if train:
        conditions.append(("train mode", call, None))
    skipped: list[str] = []
    if other_batch_size:
        bigger = other_batch(*call)
        if bigger is None:
            skipped.append("other batch size: the inputs have no batch axis")
        else:
            b = batch_size(*bigger)
            conditions.append((f"batch {b}", bigger, snap.modes))
    grad_ok = backward and slim.training is not None
    unverified: set[str] = set()
    checks, skipped_here = _compare_under(snap, removed, ref_model, slim, conditions, grad_ok, unverified, False)
    wide = noisy = False
    removed_groups = {lab.group for lab in labels}
    reasons = sorted({n for g in snap.groups if g.gid in removed_groups for n in g.notes})
    if float64 and not reasons and not all(c.exact for c in checks) and not any(c.error for c in checks):
        # a difference in float32 may be rounding amplified by the backward: ask float64
        wide = _widen(ref_model, slim, conditions, grad_ok)
        if wide:
            narrow = checks
            unverified.clear()
            checks, skipped_here = _compare_under(snap, removed, ref_model, slim, conditions, grad_ok, unverified,
                                                  True)
            # a condition that does not run in float64 keeps its float32 verdict (never skipped for it)
            ran = {c.name for c in checks}
            checks += [c for c in narrow if c.name not in ran]
            skipped_here = [r for r in skipped_here if r.split(":", 1)[0] not in {c.name for c in checks}]
        else:  # no float64: is the difference above the masked original's own rounding noise?
            checks = _with_noise(snap, removed, ref_model, checks, conditions, grad_ok)
            noisy = any(c.noise or c.grad_noise for c in checks)
    skipped += skipped_here
    n_before = sum(p.numel() for p in ir.model.parameters())
    n_after = sum(p.numel() for p in slim.parameters())
    worst = max((c.max_abs_diff for c in checks), default=float("inf"))
    scale = max((c.max_reference for c in checks), default=0.0)
    exact = bool(checks) and all(c.exact for c in checks)
    precision = "float64" if wide else "as the model, within its own rounding noise" if noisy else "as the model"
    return VerificationReport(worst, scale, exact, reasons, n_before, n_after, checks, skipped, sorted(unverified),
                              precision)
