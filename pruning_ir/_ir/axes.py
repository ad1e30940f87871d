"""From layouts to indices: which entries of an axis survive, and which slot of a
group each entry belongs to. Used by scoring, slicing and the masking oracle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .spaces import Layout, SpaceTable, term_size


def keep_mask(sp: SpaceTable, layout: Layout, removed: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Boolean mask of the axis' surviving entries, or ``None`` when all survive.

    ``removed`` maps a group leaf to a bool vector (True = slot removed).
    """
    norm = sp.normalize(layout)
    if not any(leaf in removed for t in norm for leaf, _, _ in t):
        return None
    return normalized_keep_mask(norm, removed)


def removed_axes(snap: Any, removed: dict[int, torch.Tensor]) -> Iterator[tuple[str, int, torch.Tensor]]:
    """``(tensor name, axis, keep mask)`` for every parameter or buffer axis of the snapshot that loses
    entries under ``removed`` (group leaf -> removed slots), in the graph's order."""
    for pname, vid in snap.graph.params.items():
        for d, ax in enumerate(snap.graph.values[vid].axes):
            m = keep_mask(snap.spaces, ax, removed)
            if m is not None:
                yield pname, d, m


def normalized_keep_mask(norm: Layout, removed: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """:func:`keep_mask` of an already normalised layout."""
    parts: list[torch.Tensor] = []
    for t in norm:
        m = torch.ones(1, dtype=torch.bool)
        for leaf, s, e in t:
            r = removed.get(leaf)
            f = torch.ones(e - s, dtype=torch.bool) if r is None else ~r[s:e]
            m = (m[:, None] & f[None, :]).reshape(-1)
        parts.append(m)
    mask = torch.cat(parts) if parts else torch.ones(0, dtype=torch.bool)
    return None if bool(mask.all()) else mask


def slot_map(sp: SpaceTable, layout: Layout, leaf: int) -> torch.Tensor:
    """For every entry of the axis, its slot in group ``leaf`` (``-1`` if none)."""
    norm = sp.normalize(layout)
    parts: list[torch.Tensor] = []
    for t in norm:
        n = term_size(t)
        out = torch.full((n,), -1, dtype=torch.long)
        stride = n
        idx = torch.arange(n)
        for lf, s, e in t:
            stride //= e - s
            if lf == leaf:
                out = (idx // stride) % (e - s) + s
        parts.append(out)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def kept_size(sp: SpaceTable, layout: Layout, kept: dict[int, torch.Tensor]) -> int:
    """Size of the axis after removal (``kept`` maps leaf -> bool vector of kept slots)."""
    total = 0
    for t in sp.normalize(layout):
        n = 1
        for leaf, s, e in t:
            k = kept.get(leaf)
            n *= (e - s) if k is None else int(k[s:e].sum())
        total += n
    return total


def partial_param_axes(snap: Any) -> list[tuple[str, int, Layout, set[int]]]:
    """Parameter axes made of parts of groups (slices, concatenations): ``(name, axis, layout,
    group leaves)``. Keeping labels in every group does not keep such an axis non-empty
    (``cat(h[:, 2:6], h[:, 9:12])`` loses all its channels when the labels behind both slices
    go). Cached on the snapshot."""
    got = snap.cache.get("partial_param_axes")
    if got is None:
        got = []
        sp = snap.spaces
        for pname, vid in snap.graph.params.items():
            for d, ax in enumerate(snap.graph.values[vid].axes):
                norm = sp.normalize(ax)
                leaves = {leaf for t in norm for leaf, _, _ in t}
                whole = len(norm) == 1 and all(e - s == sp.size[leaf] for leaf, s, e in norm[0])
                if leaves and not whole:
                    got.append((pname, d, ax, leaves))
        snap.cache["partial_param_axes"] = got
    return got  # type: ignore[no-any-return]


def emptied_axis(snap: Any, removed: dict[int, torch.Tensor]) -> tuple[str, int, Layout] | None:
    """The first parameter axis that ``removed`` (group leaf -> removed slots) empties, if any."""
    kept = None
    for pname, d, ax, leaves in partial_param_axes(snap):
        if leaves.isdisjoint(removed):
            continue
        kept = kept if kept is not None else {leaf: ~m for leaf, m in removed.items()}
        if kept_size(snap.spaces, ax, kept) == 0:
            return pname, d, ax
    return None
