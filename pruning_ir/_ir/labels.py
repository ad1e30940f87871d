"""Labels and label groups: the plain data that criteria, selectors and the rewrite share.

A **label** is one removable channel unit. A **label group** is one coupled
channel space (a leaf of the space table): every parameter axis that mentions
the group loses, for each removed label, the entries whose coordinate in the
group is that label. A group is *structured* when its labels stand for blocks
(attention heads, conv groups): it appears as an outer factor of a product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .graph import Graph
from .spaces import SpaceTable


class Label(NamedTuple):
    """One channel unit: slot ``index`` of group ``group`` of the snapshot ``owner``.

    A tuple, so that selectors over millions of labels stay fast; compare and hash as one.
    """

    owner: int
    group: int
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: the label's slot

    def __repr__(self) -> str:
        return f"Label(g{self.group}[{self.index}])"


@dataclass(frozen=True)
class LabelGroup:
    """One coupled channel space (frozen: a snapshot's groups are rebuilt, never edited).

    ``members`` lists ``(parameter name, axis)`` pairs the group slices;
    ``reason`` says why a group is not prunable; ``notes`` list the places where
    pruning it is not exactly equivalent to masking (normalisation, softmax).
    """

    gid: int
    leaf: int
    size: int
    prunable: bool
    reason: str
    structured: bool
    members: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    origin: str = ""
    step: int = 1
    """The number of kept labels must be a multiple of ``step`` (a kernel's alignment: MoE
    ``_grouped_mm`` needs 16-byte strides); selectors round to it, ``prune`` checks it."""

    def describe(self) -> str:
        where = ", ".join(f"{n}[{d}]" for n, d in self.members[:4])
        if len(self.members) > 4:
            where += f", +{len(self.members) - 4}"
        return where or self.origin


def param_leaves(graph: Graph, sp: SpaceTable, floating_only: bool = False) -> dict[int, list[tuple[str, int]]]:
    """Group leaf -> the (parameter name, axis) pairs whose layout mentions it.

    With ``floating_only`` integer buffers (index tables, position ids) are skipped:
    they hold positions, not channels.
    """
    out: dict[int, list[tuple[str, int]]] = {}
    for name, vid in graph.params.items():
        if floating_only and not _is_float(graph.values[vid].dtype):
            continue
        for d, ax in enumerate(graph.values[vid].axes):
            for leaf in sp.leaves_of(ax):
                out.setdefault(leaf, []).append((name, d))
    return out


def _is_float(dtype: str) -> bool:
    return any(k in dtype for k in ("float", "bfloat", "half", "complex"))


def structured_leaves(graph: Graph, sp: SpaceTable) -> set[int]:
    """Leaves whose labels stand for blocks of channels (attention heads, conv groups):
    an outer factor of a product, in a parameter axis, over a non-rigid inner factor.
    (A conv channel flattened over rigid spatial positions is not structured.)"""
    out: set[int] = set()
    for vid in graph.params.values():
        for ax in graph.values[vid].axes:
            for term in sp.normalize(ax):
                for i, (leaf, s, e) in enumerate(term[:-1]):
                    if e - s > 1 and any(f[0] not in sp.rigid for f in term[i + 1 :]):
                        out.add(leaf)
    return out


def build_groups(graph: Graph, sp: SpaceTable) -> list[LabelGroup]:
    """Label groups of a traced graph, prunable ones first in trace order."""
    members = param_leaves(graph, sp, floating_only=True)
    structured = structured_leaves(graph, sp)
    out: list[LabelGroup] = []
    for leaf in sp.groups():
        mem = members.get(leaf, [])
        size = sp.size[leaf]
        if leaf in sp.rigid:
            ok, reason = False, sp.rigid[leaf]
        elif size < 2:
            ok, reason = False, "a single channel"
        elif not mem:
            ok, reason = False, "touches no parameter"
        else:
            ok, reason = True, ""
        if not mem and not ok:
            continue  # activations-only spaces (batch, sequence, spatial) are not listed
        out.append(LabelGroup(len(out), leaf, size, ok, reason, leaf in structured, mem,
                              list(sp.notes.get(leaf, [])), sp.origin[leaf], getattr(sp, "step", {}).get(leaf, 1)))
    return out
