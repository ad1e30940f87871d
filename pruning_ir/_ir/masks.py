"""Labels -> removed-slot masks in one vectorised pass (the hot path of ``PruningIR.check_labels``).

:func:`removed_masks` applies every rule of :func:`label_masks` to
all labels at once (numpy over one flat ``(owner, group, index)`` array) and answers
``None`` as soon as any label breaks one; ``label_masks`` then runs its per-label loop,
which finds the first offending label and raises its error. So valid selections take
the fast path and invalid ones get exactly the errors they always got.

What the rules need from the snapshot (each group's slot offset, size, prunability, step)
is computed once per ``snap.groups`` list and cached on the snapshot.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LabelError
from .axes import emptied_axis
from .labels import Label, LabelGroup
from .snapshot import Snapshot


@dataclass(frozen=True)
class GroupTable:
    """Per group id: ``off`` (start of its slots in one flat vector), ``size``, ``prunable``,
    ``step``; ``leaf`` and ``total`` (slots of all groups). ``groups`` is the list it was built
    from (held, so that a replaced ``snap.groups`` is noticed by identity)."""

    groups: list[LabelGroup]
    off: np.ndarray  # (G,) int64
    size: np.ndarray  # (G,) int64
    prunable: np.ndarray  # (G,) bool
    step: np.ndarray  # (G,) int64
    leaf: list[int]
    total: int


def group_table(snap: Snapshot) -> GroupTable | None:
    """The snapshot's :class:`GroupTable` (cached); ``None`` if two groups share a leaf (the
    per-label loop merges those, the flat layout cannot)."""
    got = snap.cache.get("group_table")
    if isinstance(got, GroupTable) and got.groups is snap.groups:
        return got
    groups = snap.groups
    leaves = [g.leaf for g in groups]
    if len(set(leaves)) != len(leaves) or any(g.gid != i for i, g in enumerate(groups)):
        return None
    size = np.asarray([g.size for g in groups], dtype=np.int64)
    off = np.zeros(len(groups), dtype=np.int64)
    np.cumsum(size[:-1], out=off[1:])
    table = GroupTable(groups, off, size, np.asarray([g.prunable for g in groups], dtype=np.bool_),
                       np.asarray([g.step for g in groups], dtype=np.int64), leaves, int(size.sum()))
    snap.cache["group_table"] = table
    return table


def checked_labels(snap: Snapshot, labels: Sequence[Label], check_step: bool = True
                   ) -> tuple[GroupTable, np.ndarray, np.ndarray] | None:
    """The rules of :func:`label_masks` on every label at once: the group
    table and the labels' group ids and indices (one array each) when all hold, ``None`` as
    soon as one breaks (the caller then asks ``label_masks``, which names the culprit).
    ``check_step=False`` accepts kept counts off a group's step (a search's intermediate points,
    never pruned). The one validator of labels: ``label_masks`` and the cost models use it.

    O(len(labels)) in numpy plus O(groups touched); no per-label Python objects (they would
    also wake the cyclic GC over the whole IR).
    """
    table = group_table(snap)
    if table is None or not labels or set(map(type, labels)) != {Label}:
        return None
    try:
        ogi = np.fromiter(itertools.chain.from_iterable(labels), dtype=np.int64, count=3 * len(labels))
    except (TypeError, ValueError, OverflowError):
        return None
    owner, g, i = ogi.reshape(-1, 3).T  # (N,) each
    if bool((owner != snap.owner).any()):
        return None
    if int(g.min()) < 0 or int(g.max()) >= len(table.leaf):
        return None
    size = table.size[g]
    if int(i.min()) < 0 or bool((i >= size).any()) or not bool(table.prunable[g].all()):
        return None
    first = np.unique(table.off[g] + i, return_index=True)[1]  # each slot once (duplicates allowed)
    removed = np.bincount(g[first], minlength=len(table.leaf))  # labels per group
    n_kept = table.size - removed
    touched = removed > 0
    if bool((n_kept[touched] == 0).any()):
        return None  # a group lost every label
    if check_step and bool(((table.step > 1) & touched & (n_kept % table.step != 0)).any()):
        return None  # a kept count off its group's step
    return table, g, i


def removed_masks(snap: Snapshot, labels: Sequence[Label]) -> dict[int, torch.Tensor] | None:
    """Group leaf -> bool mask of removed slots (leaves in order of their first label), the
    answer of ``label_masks`` for labels it accepts; ``None`` when any label breaks a rule
    (see :func:`checked_labels`)."""
    if not labels:
        return {}
    got = checked_labels(snap, labels)
    if got is None:
        return None
    table, g, i = got
    mask = np.zeros(table.total, dtype=np.bool_)
    mask[table.off[g] + i] = True
    touched, first = np.unique(g, return_index=True)
    touched = touched[np.argsort(first, kind="stable")]  # groups in order of their first label
    start, size = table.off[touched], table.size[touched]
    mask_t = torch.from_numpy(mask)
    return {table.leaf[gid]: mask_t[o:o + n].clone()
            for gid, o, n in zip(touched.tolist(), start.tolist(), size.tolist())}


def label_masks(snap: Snapshot, labels: Sequence[Label]) -> dict[int, torch.Tensor]:
    """Validate ``labels`` against ``snap``; return group leaf -> bool mask of removed slots.

    Valid selections take :func:`removed_masks`'s vectorised path; otherwise the labels are
    walked one by one to raise :class:`~pruning_ir.errors.LabelError` naming the first culprit.
    """
    fast = removed_masks(snap, labels)  # valid labels, vectorised; None: find the culprit below
    if fast is not None:
        _refuse_empty_axes(snap, fast)
        return fast
    chosen: dict[int, list[int]] = {}
    for lab in labels:
        if not isinstance(lab, Label):
            raise LabelError(f"expected pruning_ir Labels, got {type(lab).__name__} ({lab!r}). "
                             "Get labels from a selector or ir.labels(group).")
        if lab.owner != snap.owner:
            raise LabelError(
                f"{lab!r} belongs to another IR or snapshot (labels are tied to the snapshot that "
                "made them; after prune() select again from the returned IR)."
            )
        if not 0 <= lab.group < len(snap.groups) or not 0 <= lab.index < snap.groups[lab.group].size:
            raise LabelError(f"{lab!r} is out of range for snapshot {snap.name!r}.")
        g = snap.groups[lab.group]
        if not g.prunable:
            raise LabelError(f"{lab!r}: group g{g.gid} ({g.describe()}) is not prunable: {g.reason}.")
        chosen.setdefault(g.leaf, []).append(lab.index)
    by_leaf = {g.leaf: g for g in snap.groups}
    removed: dict[int, torch.Tensor] = {}
    for leaf, idx in chosen.items():
        mask = torch.zeros(by_leaf[leaf].size, dtype=torch.bool)
        mask[torch.tensor(idx, dtype=torch.long)] = True
        removed[leaf] = mask
    for g in snap.groups:
        m = removed.get(g.leaf)
        if m is not None and bool(m.all()):
            raise LabelError(f"the labels remove every channel of group g{g.gid} ({g.describe()}); "
                             "keep at least one.")
        if m is not None and g.step > 1 and (g.size - int(m.sum())) % g.step:
            raise LabelError(f"the labels leave {g.size - int(m.sum())} channels in group g{g.gid} "
                             f"({g.describe()}), whose kernels need a multiple of {g.step} (group.step): "
                             "remove a number of its labels that keeps a multiple, or use a selector (they "
                             "round to it).")
    _refuse_empty_axes(snap, removed)
    return removed


def trusted_masks(snap: Snapshot, labels: Sequence[Label]) -> dict[int, torch.Tensor]:
    """Group leaf -> removed slots of ``labels`` without validating them (trusted callers)."""
    fast = removed_masks(snap, labels)
    if fast is not None:
        return fast
    removed: dict[int, torch.Tensor] = {}
    for lab in labels:
        g = snap.groups[lab.group]
        removed.setdefault(g.leaf, torch.zeros(g.size, dtype=torch.bool))[lab.index] = True
    return removed


def _refuse_empty_axes(snap: Snapshot, removed: dict[int, torch.Tensor]) -> None:
    """Refuse a selection that keeps labels in every group but empties a parameter axis made of
    parts of groups (a concatenation of slices: ``cat(h[:, 2:6], h[:, 9:12])`` loses all its
    channels when the labels behind both slices go)."""
    hit = emptied_axis(snap, removed)
    if hit is not None:
        pname, d, _ = hit
        raise LabelError(
            f"the labels keep some channels of every group but none of {pname}'s axis {d}, which is made of "
            "parts of several groups (slices or a concatenation); keep at least one of its channels "
            "(e.g. remove fewer labels of the groups behind it; the selectors do).")
