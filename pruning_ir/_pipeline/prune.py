"""The prune stage: slice a model to the kept labels, update its attributes, patch literal sizes,
verify (and repair) the slim model against the pruned snapshot."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch import nn

from .._ir.graph import Graph
from .._ir.remap import remap_snapshot
from .._ir.snapshot import Snapshot
from .._rewrite.attributes import update_attributes
from .._rewrite.inplace import Restorer
from .._rewrite.patch import module_edits, patch_literals
from .._rewrite.slim import slim_model
from .._rewrite.verify import retrace
from .options import PruneOptions, PruneResult
from .repair import Choices, verify_or_repair

log = logging.getLogger(__name__)

LOOSE_NOTE = ("verification: sizes along batch, sequence or spatial axes follow the values in this model (see "
              "ir.report()) and differ from the traced ones; they were not compared, channel sizes were")


def prune_snapshot(snap: Snapshot, model: nn.Module, removed: dict[int, torch.Tensor],
                   options: PruneOptions) -> PruneResult:
    """Remove the slots ``removed`` (group leaf -> bool mask) from ``model`` as ``snap`` describes.

    Channel sizes that a module's ``forward`` holds as literals get run-time patches whatever
    ``options.verify`` says (which sizes are literals is learnt once per snapshot and cached in
    ``snap.cache``). With ``verify`` the slim model is re-traced and checked against the pruned
    snapshot, and repaired where that fails (:func:`~pruning_ir._pipeline.repair.verify_or_repair`);
    without, the pruned snapshot is derived only when asked for. An in-place prune that fails
    (raises) leaves ``model`` as it was.
    """
    if not (options.inplace and removed):
        return _prune_snapshot(snap, model, removed, options)
    restore = Restorer(model)
    try:
        return _prune_snapshot(snap, model, removed, options)
    except BaseException:
        restore()
        raise


def _prune_snapshot(snap: Snapshot, model: nn.Module, removed: dict[int, torch.Tensor],
                    options: PruneOptions) -> PruneResult:
    kept = {leaf: ~m for leaf, m in removed.items()}
    slim = slim_model(snap, model, removed, options.inplace)
    guesses: dict[str, list[tuple[str, object]]] = {}
    ambiguous: dict[str, list[tuple[str, int, list[int]]]] = {}
    changes, unresolved, undescribed = update_attributes(slim, snap, kept, guesses, ambiguous)
    for c in changes:
        log.debug("updated %s", c)
    edits = module_edits(snap, kept) if removed else {}
    patched: list[str] = []
    if options.verify and removed:
        new_snap = remap_snapshot(snap, kept)
        first: list[Graph] = []  # the literal-finding forward (if any) is verification's re-trace

        def retrace_first() -> None:
            first.append(retrace(slim, new_snap, 0, options.leaf_modules, unresolved))

        complete = False
        if edits:
            patched, complete = patch_literals(slim, snap, edits, guesses, unresolved, retrace_first)
        choices: dict[str, Choices] = {}
        patched += verify_or_repair(slim, new_snap, edits, patched, unresolved, guesses, ambiguous, choices, options,
                                    first[0] if complete and first else None)
        modules = dict(slim.named_modules()) if choices else {}
        for path, ch in choices.items():
            ch.log(path, modules[path], changes)
        if new_snap.cache.get("loose_verified"):
            changes.append(LOOSE_NOTE)
        snapshot: Snapshot | Callable[[], Snapshot] = new_snap
    else:
        if edits:
            patched = patch_literals(slim, snap, edits, guesses, unresolved)[0]
        snapshot = functools.partial(remap_snapshot, snap, kept)

    changes += [f"{m or '<root>'}: literal sizes in forward patched by hooks" for m in patched]
    return PruneResult(slim, snapshot, changes, patched, undescribed)
