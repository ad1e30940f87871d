"""The build stage: :func:`~pruning_ir._pipeline.trace.trace_snapshot` (trace + label inference),
then the probe (which traces a ``meta`` copy the same way and prunes it with
:func:`~pruning_ir._pipeline.prune.prune_snapshot`)."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from typing import Any

from torch import nn

from .._ir.snapshot import Snapshot
from .options import BuildOptions
from .probe import apply_probe
from .trace import trace_snapshot

log = logging.getLogger(__name__)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects that exist now (the model, the libraries) out of garbage collection while
    the block runs: a build allocates enough to trigger full collections, each of which walked the
    whole heap (a third of a tiny Swin's build). Cyclic garbage made inside is still collected."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build_snapshot(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], options: BuildOptions,
                   name: str) -> Snapshot:
    """:func:`trace_snapshot`, then (``options.probe``) the groups whose removal breaks the
    model's Python code made unprunable, count-coupled groups tied, kernel alignments found."""
    with frozen_heap():
        snap = trace_snapshot(model, args, kwargs, options, name)
        if options.probe:
            t0 = time.perf_counter()
            apply_probe(model, snap, options)
            log.info("probed %s in %.3fs", type(model).__name__, time.perf_counter() - t0)
    return snap
