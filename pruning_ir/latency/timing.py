"""Timing primitives: repeated calls under ``torch.utils.benchmark.Timer``, medians with
distribution-free confidence intervals, and where a model's tensors live."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.benchmark import Timer
from torch.utils.benchmark.utils.timer import timer as sync_clock

from ..errors import InvalidInputError

Clock = Callable[[], float]
"""A clock in seconds; the default synchronises the accelerator before reading the time."""

__all__ = ["Clock", "check_count", "median_ci", "median_rel_half_width", "model_device", "resolve_threads",
           "sync_clock", "time_calls", "time_pairs", "to_device"]


def check_count(value: Any, what: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidInputError(f"{what}={value!r}: give an integer >= {low}.")
    return value


def resolve_threads(num_threads: int | None) -> int:
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
    clk = sync_clock if clock is None else clock
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
    clk = sync_clock if clock is None else clock
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


def model_device(model: nn.Module, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.device:
    """The device of the model's first parameter or buffer, else of its first input tensor, else CPU."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    for leaf in pytree.tree_leaves((tuple(args), kwargs)):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) and t.device != device else t, obj)
