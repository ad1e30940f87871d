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
from .infer import param_leaves, structured_leaves
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


@dataclass
class LabelGroup:
    """One coupled channel space.

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
