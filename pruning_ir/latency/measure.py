"""Latency functions: ``fn(model) -> float`` callables for budget-aware selectors.

* :class:`MeasuredLatency` times real forward passes (milliseconds, median of repeats) on the
  model's own device, CPU or CUDA, with :class:`torch.utils.benchmark.Timer` (which sets the
  thread count and synchronises the accelerator around every timed call).
* :class:`MacsLatency` and :class:`ParamsLatency` return MACs and parameter counts. They also
  have ``cost_model(ir, snapshot_name)``, the same quantity read off the IR
  (:class:`~pruning_ir.cost.MacsModel` / :class:`~pruning_ir.cost.ParamsModel`), so a selector
  can evaluate candidates without building slim models.

A latency function refuses a candidate by raising
:class:`~pruning_ir.errors.LatencyMeasurementError`; selectors count it as over the budget.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.benchmark import Timer
from torch.utils.benchmark.utils.timer import timer as _sync_clock
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..cost import CostModel, MacsModel, ParamsModel
from ..errors import InvalidInputError, LatencyMeasurementError
from ..ir import _as_call

if TYPE_CHECKING:
    from ..ir import PruningIR

__all__ = ["LatencyMeasurementError", "MacsLatency", "MeasuredLatency", "ParamsLatency"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""A clock in seconds; the default synchronises the accelerator before reading the time."""


# ------------------------------------------------------------------------------------------ timing
def _check_count(value: Any, what: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidInputError(f"{what}={value!r}: give an integer >= {low}.")
    return value


def _resolve_threads(num_threads: int | None) -> int:
    return torch.get_num_threads() if num_threads is None else num_threads


def time_calls(fn: Callable[[], Any], *, warmup: int, repeats: int, num_threads: int, number: int = 1,
               clock: Clock | None = None, before: Callable[[], Any] | None = None) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` timed blocks of ``number`` calls each.

    The blocks run inside :meth:`torch.utils.benchmark.Timer.timeit`, which sets the torch
    thread count to ``num_threads`` (and restores it) and disables the garbage collector;
    every block is bracketed by ``clock`` (default: Timer's clock, which synchronises CUDA).
    ``before`` (e.g. a cache flush) runs untimed before every block. ``warmup`` untimed blocks
    come first (``Timer`` itself adds at least two more).
    """
    clk = _sync_clock if clock is None else clock
    samples: list[float] = []

    def block() -> None:
        if before is not None:
            before()
        t0 = clk()
        for _ in range(number):
            fn()
        samples.append((clk() - t0) / number)

    Timer(stmt="block()", globals={"block": block}, num_threads=num_threads, timer=clk).timeit(
        number=warmup + repeats)
    return samples[-repeats:]


def median_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median of ``values`` (order statistics:
    the ranks ``n/2 -+ z sqrt(n)/2``, the normal approximation of the binomial; 95% for the
    default ``z``). Timing samples are skewed with outliers, so no normality is assumed."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci of no values")
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return xs[lo], xs[max(lo, hi)]


def median_rel_half_width(values: Sequence[float], z: float = 1.96) -> float:
    """The larger side of :func:`median_ci` around the median, as a fraction of the median
    (``inf`` or ``nan`` when an interval end is not finite)."""
    med = statistics.median(values)
    lo, hi = median_ci(values, z)
    if med == 0:  # a clock that did not move: exact if the whole interval is 0
        return 0.0 if lo == hi == 0 else math.inf
    return max(hi - med, med - lo) / med


def time_pairs(a: Callable[[], Any], b: Callable[[], Any], *, warmup: int, repeats: int, num_threads: int,
               clock: Clock | None = None) -> list[tuple[float, float]]:
    """Seconds per call of ``a`` and of ``b``, timed back to back in ``repeats`` pairs.

    The pairs alternate their order (``a b``, ``b a``, ``a b``, ...), so a load that grows or
    shrinks steadily over a pair hits both calls alike on average. Runs inside
    :meth:`torch.utils.benchmark.Timer.timeit` like :func:`time_calls` (thread count, garbage
    collector off); ``warmup`` untimed pairs come first.
    """
    clk = _sync_clock if clock is None else clock
    pairs: list[tuple[float, float]] = []

    def block() -> None:
        flip = len(pairs) % 2 == 1
        first, second = (b, a) if flip else (a, b)
        t0 = clk()
        first()
        t1 = clk()
        second()
        t2 = clk()
        pairs.append((t2 - t1, t1 - t0) if flip else (t1 - t0, t2 - t1))

    Timer(stmt="block()", globals={"block": block}, num_threads=num_threads, timer=clk).timeit(
        number=warmup + repeats)
    return pairs[-repeats:]


def _model_device(model: nn.Module, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.device:
    """The device of the model's first parameter or buffer, else of its first input tensor, else CPU."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    for leaf in pytree.tree_leaves((tuple(args), kwargs)):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return torch.device("cpu")


def _to_device(obj: Any, device: torch.device) -> Any:
    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) and t.device != device else t, obj)


class MeasuredLatency:
    """Wall-clock latency of one forward pass in milliseconds: ``latency_fn(model) -> float``.

    Runs ``model(*example_inputs, **example_kwargs)`` under :func:`torch.no_grad` in eval mode
    (every module's ``training`` flag is restored afterwards), ``warmup`` untimed runs, then
    returns the median of ``repeats`` timed runs. The device is the model's (its parameters,
    else buffers, else the inputs); inputs on another device are moved there once per call.
    CUDA work is synchronised around every timed run.

    **Paired (drift-cancelling) mode.** With ``reference=`` (typically the unpruned model), every
    call times the model and the reference back to back in ``repeats`` pairs of alternating
    order and returns ``reference_ms x`` the median per-pair ratio ``model / reference``. A
    change of the machine's speed (another job starting, frequency scaling, thermal throttling)
    slows both runs of a pair alike and cancels in the ratio, where an absolute measurement
    reports it as the model's latency; the result stays in milliseconds *of the reference's
    first measurement*, so targets set as a fraction of the reference's latency keep their
    meaning. ``reference_ms`` is the reference's median in the first call unless given. Each
    call costs twice the runs.

    Args:
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs
            (as for :class:`~pruning_ir.PruningIR`).
        example_kwargs: extra keyword inputs.
        warmup: untimed runs (pairs, in paired mode) before timing (the first also checks that
            the model runs; ``Timer`` adds two more).
        repeats: timed runs (pairs); the result is their median (of ratios).
        num_threads: torch CPU threads while timing (default: ``torch.get_num_threads()`` at
            call time).
        timer: the clock in seconds (default: :mod:`torch.utils.benchmark`'s, which
            synchronises the accelerator); for tests and custom clocks.
        reference: a model to time alongside every measured model (paired mode). It must run on
            the example inputs; it is not modified (its modes are restored).
        reference_ms: the reference's latency to scale ratios by (default: measured in the first
            call, then kept).
        rel_precision: time until the 95% confidence interval of the median (of the ratios, in
            paired mode) is within this fraction of it on both sides (e.g. ``0.015``): after the
            first ``repeats`` runs (pairs), as many again at a time, up to ``max_repeats``. The
            interval of every call is in :attr:`ci`. On a shared machine a median of 20 runs of a
            model of a few milliseconds can be 3-5% off; this buys the precision a latency
            target needs where it is needed, and only there.
        max_repeats: the cap for ``rel_precision`` (default ``10 x repeats``; paired mode may add
            one pair to keep the two orders balanced).

    Raises:
        LatencyMeasurementError: the model fails to run on the inputs, or lives on ``meta``.
        InvalidInputError: the reference fails to run.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> fn = MeasuredLatency((torch.randn(2, 8),), warmup=1, repeats=3)
        >>> fn(nn.Linear(8, 4)) > 0
        True
        >>> big = nn.Sequential(nn.Linear(8, 512), nn.Linear(512, 4))
        >>> paired = MeasuredLatency((torch.randn(2, 8),), warmup=1, repeats=5, reference=big)
        >>> paired(big) > 0 and paired.reference_ms is not None
        True
    """

    def __init__(self, example_inputs: Any, example_kwargs: dict[str, Any] | None = None, *, warmup: int = 3,
                 repeats: int = 20, num_threads: int | None = None, timer: Clock | None = None,
                 reference: nn.Module | None = None, reference_ms: float | None = None,
                 rel_precision: float | None = None, max_repeats: int | None = None) -> None:
        self.args, self.kwargs = _as_call(example_inputs, example_kwargs)
        self.warmup = _check_count(warmup, "warmup", 0)
        self.repeats = _check_count(repeats, "repeats", 1)
        self.num_threads = None if num_threads is None else _check_count(num_threads, "num_threads", 1)
        if timer is not None and not callable(timer):
            raise InvalidInputError(f"timer={timer!r} is not callable: give a function returning seconds.")
        if reference is not None and not isinstance(reference, nn.Module):
            raise InvalidInputError(f"reference={reference!r}: give the nn.Module to time alongside (e.g. the "
                                    "unpruned model).")
        if reference_ms is not None and (isinstance(reference_ms, bool) or not isinstance(reference_ms, (int, float))
                                         or not math.isfinite(reference_ms) or reference_ms <= 0):
            raise InvalidInputError(f"reference_ms={reference_ms!r}: give a positive number of milliseconds.")
        if reference_ms is not None and reference is None:
            raise InvalidInputError("reference_ms= needs reference= (the model it is the latency of).")
        if rel_precision is not None and (isinstance(rel_precision, bool) or not isinstance(rel_precision, (int, float))
                                          or not 0 < rel_precision < 1):
            raise InvalidInputError(f"rel_precision={rel_precision!r}: give the wanted half-width of the 95% "
                                    "confidence interval as a fraction of the median, in (0, 1) (e.g. 0.01).")
        self.rel_precision = None if rel_precision is None else float(rel_precision)
        if max_repeats is None:
            self.max_repeats = self.repeats if rel_precision is None else 10 * self.repeats
        else:
            self.max_repeats = _check_count(max_repeats, "max_repeats", 1)
        if self.max_repeats < self.repeats:
            raise InvalidInputError(f"max_repeats={max_repeats!r} is below repeats={repeats!r}: it caps the timed "
                                    "runs (pairs) that rel_precision may add, so give at least repeats.")
        self.timer = timer
        self.reference = reference
        self.reference_ms: float | None = None if reference_ms is None else float(reference_ms)
        """Milliseconds that a ratio of 1.0 stands for (paired mode)."""
        self.samples: list[float] = []
        """Seconds per timed run of the model in the last call."""
        self.reference_samples: list[float] = []
        """Seconds per timed run of the reference in the last call (paired mode)."""
        self.ratios: list[float] = []
        """Per-pair ``model / reference`` ratios of the last call (paired mode)."""
        self.ci: tuple[float, float] = (math.nan, math.nan)
        """95% confidence interval, in milliseconds, of the last call's result (the median run, or
        ``reference_ms x`` the median ratio): see :func:`median_ci`."""

    @property
    def drift_cancelling(self) -> bool:
        """Whether readings are ratios to a reference (paired mode): selectors then compare them
        as they are, without re-measuring the unpruned model next to them."""
        return self.reference is not None

    def _runner(self, model: nn.Module) -> Callable[[], None]:
        device = _model_device(model, self.args, self.kwargs)
        if device.type == "meta":
            raise LatencyMeasurementError(f"{type(model).__name__} is on the meta device: it cannot be timed. "
                                          "Materialise it on a real device first (model.to_empty(device=...)).")
        args, kwargs = _to_device((self.args, self.kwargs), device)

        def run() -> None:
            with torch.no_grad():
                model(*args, **kwargs)
        return run

    def __call__(self, model: nn.Module) -> float:
        """Median latency of ``model``'s forward pass in milliseconds (paired mode: the reference's
        milliseconds times the median ratio)."""
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"MeasuredLatency times nn.Modules, got {type(model).__name__}.")
        run = self._runner(model)
        ref = self.reference
        modes = [(m, m.training) for m in model.modules()]
        if ref is not None:
            modes += [(m, m.training) for m in ref.modules()]
        threads = _resolve_threads(self.num_threads)
        model.eval()
        try:
            try:
                run()
            except Exception as exc:
                raise LatencyMeasurementError(f"{type(model).__name__} failed to run on the example inputs while "
                                              f"measuring its latency: {type(exc).__name__}: {exc}") from exc
            if ref is None:
                self.samples = time_calls(run, warmup=max(self.warmup - 1, 0), repeats=self.repeats,
                                          num_threads=threads, clock=self.timer)
                while not self._precise(self.samples):
                    self.samples += time_calls(run, warmup=0, repeats=self._more(self.samples),
                                               num_threads=threads, clock=self.timer)
                lo, hi = median_ci(self.samples)
                self.ci = (1e3 * lo, 1e3 * hi)
                return 1e3 * statistics.median(self.samples)
            ref.eval()
            try:
                ref_run = self._runner(ref)
                ref_run()
            except Exception as exc:
                raise InvalidInputError(f"MeasuredLatency: the reference {type(ref).__name__} failed to run on the "
                                        f"example inputs: {type(exc).__name__}: {exc}") from exc
            try:
                pairs = time_pairs(run, ref_run, warmup=max(self.warmup - 1, 0), repeats=self.repeats,
                                   num_threads=threads, clock=self.timer)
                while not self._precise([a / b if b > 0 else math.inf for a, b in pairs]):
                    more = self._more(pairs)  # an even count keeps the two orders balanced
                    pairs += time_pairs(run, ref_run, warmup=0, repeats=more + more % 2, num_threads=threads,
                                        clock=self.timer)
            except Exception as exc:
                raise LatencyMeasurementError(f"{type(model).__name__} failed while measuring its latency: "
                                              f"{type(exc).__name__}: {exc}") from exc
        finally:
            for m, mode in modes:
                m.training = mode
        self.samples = [a for a, _ in pairs]
        self.reference_samples = [b for _, b in pairs]
        self.ratios = [a / b if b > 0 else math.inf for a, b in pairs]
        if self.reference_ms is None:
            self.reference_ms = 1e3 * statistics.median(self.reference_samples)
        lo, hi = median_ci(self.ratios)
        self.ci = (self.reference_ms * lo, self.reference_ms * hi)
        return self.reference_ms * statistics.median(self.ratios)

    def _precise(self, values: Sequence[float]) -> bool:
        """Whether timing can stop: no ``rel_precision`` asked, the cap reached, or the 95%
        interval of the median within ``rel_precision`` of it on both sides."""
        if self.rel_precision is None or len(values) >= self.max_repeats:
            return True
        return median_rel_half_width(values) <= self.rel_precision  # False for inf / nan

    def _more(self, done: Sequence[Any]) -> int:
        """Runs (pairs) to add before checking the precision again: as many as so far (the
        interval shrinks with the square root of the count), within the cap."""
        return max(1, min(len(done), self.max_repeats - len(done)))

    def __repr__(self) -> str:
        paired = "" if self.reference is None else f", reference={type(self.reference).__name__}"
        precision = "" if self.rel_precision is None else (f", rel_precision={self.rel_precision}, "
                                                           f"max_repeats={self.max_repeats}")
        return (f"MeasuredLatency(warmup={self.warmup}, repeats={self.repeats}, "
                f"num_threads={self.num_threads}{paired}{precision})")


# ----------------------------------------------------------------------------------------- MACs
def _prod(xs: Sequence[int]) -> int:
    return math.prod(int(x) for x in xs)


def _flops_sdpa(q: Sequence[int], k: Sequence[int], v: Sequence[int], *args: Any, out_shape: Any = None,
                **kwargs: Any) -> int:
    """``(..., S, D)`` q/k/v: ``q·kᵀ`` and ``p·v`` over the query's leading dims (GQA counted per query head)."""
    return 2 * _prod(q[:-1]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))


def _flops_addbmm(bias: Any, b1: Sequence[int], b2: Sequence[int], *args: Any, out_shape: Any = None,
                  **kwargs: Any) -> int:
    return 2 * _prod(b1) * int(b2[-1])


def _flops_mv(mat: Sequence[int], vec: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * _prod(mat)


def _flops_addmv(bias: Any, mat: Sequence[int], vec: Sequence[int], *args: Any, out_shape: Any = None,
                 **kwargs: Any) -> int:
    return 2 * _prod(mat)


def _flops_dot(a: Sequence[int], b: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * int(a[0])


def _flops_mm(a: Sequence[int], b: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * _prod(a) * int(b[-1])


def _flops_linear(x: Sequence[int], w: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * _prod(x) * int(w[0])


def _flops_grouped_mm(a: Sequence[int], b: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``(M, K) x (G, K, N)``, ``(M, K) x (K, N)`` (offsets split M or K) and ``(G, M, K) x (G, K, N)``."""
    return 2 * _prod(a) * int(b[-1])


def _conv_flops(transposed: bool) -> Callable[..., int]:
    def f(x: Sequence[int], w: Sequence[int], *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(conv_flop_count(list(x), list(w), list(out_shape), transposed=transposed))
    return f


_aten = torch.ops.aten


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the ops that :class:`~pruning_ir.cost.MacsModel` counts and
    ``FlopCounterMode`` (torch 2.13) does not; ops missing from this torch build are skipped."""
    wanted: dict[str, Callable[..., int]] = {
        "_scaled_dot_product_flash_attention_for_cpu": _flops_sdpa,
        "_scaled_dot_product_fused_attention_overrideable": _flops_sdpa,
        "_scaled_dot_product_attention_math": _flops_sdpa,
        "addbmm": _flops_addbmm,
        "mv": _flops_mv,
        "addmv": _flops_addmv,
        "dot": _flops_dot,
        "vdot": _flops_dot,
        "_int_mm": _flops_mm,
        "mkldnn_linear": _flops_linear,
        "_grouped_mm": _flops_grouped_mm,
        "mkldnn_convolution": _conv_flops(False),
        "_conv_depthwise2d": _conv_flops(False),
        "slow_conv3d_forward": _conv_flops(False),
        "slow_conv_dilated2d": _conv_flops(False),
        "slow_conv_dilated3d": _conv_flops(False),
        "_nnpack_spatial_convolution": _conv_flops(False),
        "miopen_convolution": _conv_flops(False),
        "slow_conv_transpose2d": _conv_flops(True),
        "slow_conv_transpose3d": _conv_flops(True),
    }
    out: dict[Any, Callable[..., int]] = {}
    for name, f in wanted.items():
        packet = getattr(_aten, name, None)
        if packet is not None:
            out[packet] = f
    return out


MACS_EXTRA_FLOPS: dict[Any, Callable[..., int]] = _extra_formulas()
"""``FlopCounterMode(custom_mapping=...)`` entries (ATen op packet -> FLOPs from shapes) that make
its count agree with :class:`~pruning_ir.cost.MacsModel` on ops it lacks."""


class _RunsInEval:
    """Calls ``model(*args, **kwargs)`` under ``no_grad`` in eval mode, restoring every module's mode."""

    def __init__(self, example_inputs: Any, example_kwargs: dict[str, Any] | None = None) -> None:
        self.args, self.kwargs = _as_call(example_inputs, example_kwargs)

    def _run(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"{type(self).__name__} needs an nn.Module, got {type(model).__name__}.")
        modes = [(m, m.training) for m in model.modules()]
        args, kwargs = _to_device((self.args, self.kwargs), _model_device(model, self.args, self.kwargs))
        model.eval()
        try:
            with torch.no_grad():
                model(*args, **kwargs)
        except Exception as exc:
            raise LatencyMeasurementError(f"{type(model).__name__} failed to run on the example inputs: "
                                          f"{type(exc).__name__}: {exc}") from exc
        finally:
            for m, mode in modes:
                m.training = mode


class MacsLatency(_RunsInEval):
    """Multiply-accumulates of one forward pass as a latency function: ``fn(model) -> float``.

    Counts with :class:`torch.utils.flop_counter.FlopCounterMode` (its FLOPs / 2) on the
    example inputs, in eval mode under ``no_grad``, plus formulas for the ops it lacks
    (:data:`MACS_EXTRA_FLOPS`: CPU attention, ``addbmm``, ``mv``, ``dot``, ``_grouped_mm``, ...),
    so that on a slim model it equals :meth:`MacsModel.cost <pruning_ir.cost.CostModel.cost>` of
    the labels that made it (leaf modules aside: the IR does not see inside them).
    :meth:`cost_model` gives that model, which needs no forward at all. Counting works on
    ``meta`` models too (nothing is computed).

    Args:
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs
            (moved to the model's device when they are elsewhere).
        example_kwargs: extra keyword inputs.

    Raises:
        LatencyMeasurementError: the model fails to run on the inputs.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> MacsLatency((torch.randn(2, 8),))(nn.Linear(8, 4))   # 2 * 8 * 4
        64.0
    """

    def __call__(self, model: nn.Module) -> float:
        """MACs of ``model`` on the example inputs."""
        with FlopCounterMode(display=False, custom_mapping=MACS_EXTRA_FLOPS) as counter:
            self._run(model)
        return counter.get_total_flops() / 2

    def cost_model(self, ir: PruningIR, snapshot_name: str = "main") -> CostModel | None:
        """The same MACs read off ``ir``'s snapshot for any selection of labels (no forward), or
        ``None`` when the IR was traced on other inputs (another batch size or sequence length):
        its MACs would not be in this function's units, so a selector then calls the function on
        candidate models instead (a budget of ``0.5 * fn(model)`` stays half of *these* MACs)."""
        model = MacsModel(ir, snapshot_name)
        own = self(ir.model)
        if abs(own - model.baseline()) > 1e-6 * max(own, 1.0):
            log.info("MacsLatency: the IR's example inputs give %d MACs, this function's inputs %d; candidates "
                     "are counted on this function's inputs", model.baseline(), own)
            return None
        return model

    def __repr__(self) -> str:
        return "MacsLatency()"


class ParamsLatency:
    """Number of parameter elements (tied parameters once) as a latency function.

    Example:
        >>> from torch import nn
        >>> ParamsLatency()(nn.Linear(8, 4))
        36.0
    """

    def __call__(self, model: nn.Module) -> float:
        """Parameter count of ``model``."""
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"ParamsLatency needs an nn.Module, got {type(model).__name__}.")
        return float(sum(p.numel() for p in model.parameters()))

    def cost_model(self, ir: PruningIR, snapshot_name: str = "main") -> CostModel:
        """The same count read off ``ir``'s snapshot for any selection of labels."""
        return ParamsModel(ir, snapshot_name)

    def __repr__(self) -> str:
        return "ParamsLatency()"
