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
from torch.utils.flop_counter import FlopCounterMode

from .._trace.run import evaluating
from ..cost import CostModel, MacsModel, ParamsModel
from ..errors import InvalidInputError, LatencyMeasurementError
from ..ir import _as_call
from .flops import flop_formulas
from .timing import (
    Clock,
    check_count,
    median_ci,
    median_rel_half_width,
    model_device,
    resolve_threads,
    time_calls,
    time_pairs,
    to_device,
)

if TYPE_CHECKING:
    from ..ir import PruningIR

__all__ = ["LatencyMeasurementError", "MacsLatency", "MeasuredLatency", "ParamsLatency"]

log = logging.getLogger(__name__)

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
        self.warmup = check_count(warmup, "warmup", 0)
        self.repeats = check_count(repeats, "repeats", 1)
        self.num_threads = None if num_threads is None else check_count(num_threads, "num_threads", 1)
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
            self.max_repeats = check_count(max_repeats, "max_repeats", 1)
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
        device = model_device(model, self.args, self.kwargs)
        if device.type == "meta":
            raise LatencyMeasurementError(f"{type(model).__name__} is on the meta device: it cannot be timed. "
                                          "Materialise it on a real device first (model.to_empty(device=...)).")
        args, kwargs = to_device((self.args, self.kwargs), device)

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
        threads = resolve_threads(self.num_threads)
        with evaluating(model, *([ref] if ref is not None else [])):
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


class _RunsInEval:
    """Calls ``model(*args, **kwargs)`` under ``no_grad`` in eval mode, restoring every module's mode."""

    def __init__(self, example_inputs: Any, example_kwargs: dict[str, Any] | None = None) -> None:
        self.args, self.kwargs = _as_call(example_inputs, example_kwargs)

    def _run(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"{type(self).__name__} needs an nn.Module, got {type(model).__name__}.")
        args, kwargs = to_device((self.args, self.kwargs), model_device(model, self.args, self.kwargs))
        try:
            with evaluating(model), torch.no_grad():
                model(*args, **kwargs)
        except Exception as exc:
            raise LatencyMeasurementError(f"{type(model).__name__} failed to run on the example inputs: "
                                          f"{type(exc).__name__}: {exc}") from exc


class MacsLatency(_RunsInEval):
    """Multiply-accumulates of one forward pass as a latency function: ``fn(model) -> float``.

    Counts with :class:`torch.utils.flop_counter.FlopCounterMode` (its FLOPs / 2) on the
    example inputs, in eval mode under ``no_grad``, plus formulas for the ops it lacks
    (:func:`flop_formulas`: CPU attention, ``addbmm``, ``mv``, ``dot``, ``_grouped_mm``, ...: the
    cost model's own formulas),
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
        with FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
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
