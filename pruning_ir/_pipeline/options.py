"""What the build and prune stages are told: frozen options, and what a prune hands back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .._ir.snapshot import Snapshot
from ..calls import ExampleCall

MAX_COMBINATIONS = 16
"""Ambiguous attribute combinations a repair tries per module, at most."""
MAX_TRIES = 48
"""Attribute combinations (ambiguous values and guesses put back) a repair tries per module."""
MAX_REPAIRS = 64
"""Verification rounds of one prune (each restores a guessed attribute or patches a module);
every round acts on a module not acted on before, so this bounds a loop that cannot cycle."""


@dataclass(frozen=True)
class BuildOptions:
    """How :func:`~pruning_ir._pipeline.build.build_snapshot` traces and infers (see
    :class:`~pruning_ir.PruningIR` for each field)."""

    leaf_modules: tuple[type[nn.Module] | nn.Module, ...] = ()
    soft_tracing: bool = True
    keep_io_shapes: bool = True
    probe: bool = True
    extra_calls: tuple[ExampleCall, ...] = ()
    auto_calls: bool = True


@dataclass(frozen=True)
class PruneOptions:
    """How :func:`~pruning_ir._pipeline.prune.prune_snapshot` builds and checks a slim model."""

    inplace: bool = False
    verify: bool = True
    leaf_modules: tuple[type[nn.Module] | nn.Module, ...] = ()
    repair_tries: int = MAX_TRIES
    max_repairs: int = MAX_REPAIRS
    repair: bool = True
    """``False``: the first failed verification raises (no repair is tried)."""


@dataclass(frozen=True)
class PruneResult:
    """The slim model, its snapshot (or how to derive it, when verification did not need it),
    the rewrite log, the modules whose literal sizes are patched at run time, and why the Hugging
    Face config could not be updated (``None``: it was, or there is none)."""

    model: nn.Module
    snapshot: Snapshot | Callable[[], Snapshot]
    log: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    undescribed: str | None = None

