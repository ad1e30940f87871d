"""Timing one op of a model alone, on random inputs of the shapes it would see at some widths."""

from __future__ import annotations

import logging
import statistics
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .._ir.axes import kept_size
from .._ir.graph import Graph, Node, ValueRef, set_path
from .._ir.ops import op_packet
from .._ir.spaces import SpaceTable
from .timing import sync_clock, time_calls

log = logging.getLogger(__name__)

DEFAULT_FLUSH_BYTES = 64 * 2**20
"""Bytes written between two timed op calls when the device's last cache size is unknown."""


class _Spec(NamedTuple):
    """A tensor argument to make: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _dtype(name: str) -> torch.dtype:
    got = getattr(torch, name.rsplit(".", 1)[-1], None)
    return got if isinstance(got, torch.dtype) else torch.float32


def arg_specs(graph: Graph, sp: SpaceTable, node: Node, kept: dict[int, torch.Tensor]) -> dict[str, Any]:
    """The node's arguments with every tensor replaced by a :class:`_Spec` of its kept shape and
    every channel-size integer (a fact, e.g. ``groups``) by its kept value."""
    kw: dict[str, Any] = {k: v for k, v in node.kwargs.items() if not k.startswith("__")}
    for fact in node.facts:
        kw = set_path(kw, fact.path, kept_size(sp, fact.layout, kept))

    def spec(obj: Any) -> Any:
        if isinstance(obj, ValueRef):
            v = graph.values[obj.vid]
            shape = (tuple(kept_size(sp, ax, kept) for ax in v.axes) if len(v.axes) == len(v.shape)
                     else tuple(v.shape))
            return _Spec(shape, _dtype(v.dtype))
        if isinstance(obj, list):
            return [spec(o) for o in obj]
        if isinstance(obj, tuple) and not isinstance(obj, _Spec):
            return tuple(spec(o) for o in obj)
        if isinstance(obj, dict):
            return {k: spec(o) for k, o in obj.items()}
        return obj

    out: dict[str, Any] = spec(kw)
    return out


def freeze(obj: Any) -> Any:
    """A hashable key for an argument structure."""
    if isinstance(obj, _Spec):
        return obj
    if isinstance(obj, dict):
        return ("d", tuple((k, freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return ("l" if isinstance(obj, list) else "t", tuple(freeze(o) for o in obj))
    try:
        hash(obj)
    except TypeError:
        return ("r", repr(obj))
    return obj


def _materialise(obj: Any, device: torch.device, gen: torch.Generator) -> Any:
    if isinstance(obj, _Spec):
        if obj.dtype.is_floating_point or obj.dtype.is_complex:
            return torch.randn(obj.shape, dtype=obj.dtype, device=device, generator=gen)
        if obj.dtype == torch.bool:
            return torch.ones(obj.shape, dtype=obj.dtype, device=device)
        return torch.zeros(obj.shape, dtype=obj.dtype, device=device)
    if isinstance(obj, list):
        return [_materialise(o, device, gen) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(o, device, gen) for o in obj)
    if isinstance(obj, dict):
        return {k: _materialise(o, device, gen) for k, o in obj.items()}
    return obj


def _cache_bytes(device: torch.device) -> int:
    """Size of the device's largest cache (CUDA L2, CPU cache levels from Linux sysfs), 0 if unknown."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    if device.type != "cpu":
        return 0
    sizes = [0]
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * unit)
        except (OSError, ValueError):
            continue
    return max(sizes)


def cache_flusher(device: torch.device) -> tuple[Callable[[int], None], int]:
    """``flush(nbytes)`` writes ``nbytes`` (at most twice the device's largest cache, 64 MiB when
    unknown) to push what an op touched out of the caches; returns it and that limit."""
    limit = min(2 * _cache_bytes(device) or DEFAULT_FLUSH_BYTES, 2**30)
    buf = torch.empty(limit // 4, dtype=torch.float32, device=device)

    def flush(nbytes: int) -> None:
        buf[: max(nbytes, 0) // 4].fill_(1.0)
    return flush, limit


def _op_clock(device: torch.device) -> Callable[[], float]:
    return sync_clock if device.type != "cpu" else timeit.default_timer


def _time_op(op: Any, kwargs: dict[str, Any], *, warmup: int, repeats: int, num_threads: int,
             device: torch.device, flush: Callable[[], None]) -> float:
    """Median seconds of ``op(**kwargs)`` over ``repeats`` calls, each after a cache flush."""

    def call() -> None:
        with torch.no_grad():
            op(**kwargs)

    return statistics.median(time_calls(call, warmup=warmup, repeats=repeats, num_threads=num_threads,
                                        clock=_op_clock(device), before=flush))


def dispatch_seconds(device: torch.device, *, warmup: int, repeats: int, num_threads: int) -> float:
    """Median seconds of a one-element ``add`` on ``device``: what any op costs at least."""
    one = torch.ones(1, device=device)
    return statistics.median(time_calls(lambda: torch.add(one, one), warmup=warmup, repeats=repeats,
                                        num_threads=num_threads, number=100))


def measure_op(node: Node, specs: dict[str, Any], device: torch.device, gen: torch.Generator, warmup: int,
             repeats: int, threads: int, flush: Callable[[], None]) -> float | None:
    try:
        op = op_packet(node.op)
        kwargs = _materialise(specs, device, gen)
        return 1e3 * _time_op(op, kwargs, warmup=warmup, repeats=repeats, num_threads=threads, device=device,
                              flush=flush)
    except Exception as exc:  # the op refuses random inputs (data-dependent arguments)
        log.debug("LatencyLUT: %s in '%s' not timed: %s: %s", node.op, node.module, type(exc).__name__, exc)
        return None
