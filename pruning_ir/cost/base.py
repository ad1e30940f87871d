"""The cost-model interface: a polynomial cost queried for any selection of labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._ir.labels import Label
from .._ir.masks import checked_labels
from .._ir.snapshot import Snapshot
from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..ir import PruningIR

from .poly import Builder, Perturbations, perturbations

LabelsArg = Iterable[Label] | None


@dataclass(frozen=True)
class TagSavings:
    """Per-tag savings of removing one more label, given a selection (see
    :meth:`CostModel.tag_savings`).

    Labels are grouped into *pieces*: runs of a group's labels that every cost term uses
    alike, so removing any kept label of a piece changes every tag by the same amount. The
    entries are sparse: removing one kept label of piece ``piece[i]`` lowers the cost of tag
    ``tag[i]`` by ``delta[i]`` (0 when the piece has no kept label left); pairs not listed do
    not change.
    """

    piece: np.ndarray
    """Piece of each entry (int64)."""
    tag: np.ndarray
    """Tag of each entry (int64), an index into :attr:`CostModel.tags`."""
    delta: np.ndarray
    """What removing one kept label of the piece subtracts from the tag's cost (int64)."""
    n_pieces: int
    """Number of pieces."""
    pieces: dict[int, np.ndarray]
    """Prunable group id -> piece of each of its labels."""
    kept: dict[int, np.ndarray]
    """Prunable group id -> whether each of its labels is kept in the selection."""
    costs: np.ndarray
    """Each tag's cost at the selection (int64, as :meth:`CostModel.tag_costs`)."""

    def per_label(self, piece_values: np.ndarray) -> dict[int, np.ndarray]:
        """Spread a value per piece to the labels of every group (0 for removed labels)."""
        return {gid: np.where(self.kept[gid], piece_values[p], 0) for gid, p in self.pieces.items()}


class CostModel:
    """A cost (MACs, parameters) that is a polynomial in the kept sizes of the IR's axes.

    Built once from a snapshot; every query then works on the compiled polynomial only:
    no trace, no forward, no model. Labels are checked with
    :meth:`~pruning_ir.PruningIR.check_labels` (same errors as ``prune``).

    Args:
        ir: the IR whose labels are costed.
        snapshot_name: which snapshot of ``ir``.
    """

    unit = "cost"

    def __init__(self, ir: PruningIR, snapshot_name: str = "main") -> None:
        self._ir = ir
        self._name = snapshot_name
        snap = ir.snapshot(snapshot_name)
        self._snap = snap
        builder = Builder(snap)
        self._tags: list[str] = []
        self._collect(snap, builder)
        self._poly = builder.compile()
        self._leaf_slot = dict(builder.leaf_slot)
        self._gid_leaf = {g.gid: g.leaf for g in snap.prunable_groups}
        # per group id: slot offset (-1: not prunable); slot starts of the prunable groups
        self._g_off = np.full(len(snap.groups), -1, dtype=np.int64)
        for gid, leaf in self._gid_leaf.items():
            self._g_off[gid] = self._leaf_slot[leaf][0]
        self._p_start = np.asarray([o for o, _ in self._leaf_slot.values()], dtype=np.int64)
        self._full_fc = self._poly.f_hi - self._poly.f_lo
        # removing labels only shrinks every partial product, so the baseline bounds them all
        if float(self._poly.monomials(self._full_fc.astype(np.float64)).max(initial=0.0)) >= 2.0**62:
            raise OverflowError(f"{type(self).__name__}: a single op's cost exceeds int64; use smaller example inputs")
        self._baseline = int(self._poly.total(self._full_fc))
        self._pert: Perturbations | None = None
        self._piece_of_slot: np.ndarray | None = None

    def _collect(self, snap: Snapshot, builder: Builder) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tag(self, name: str) -> int:
        self._tags.append(name)
        return len(self._tags) - 1

    # ----------------------------------------------------------------------------- selections
    def _kept_from_labels(self, removed_labels: LabelsArg, check_step: bool = True) -> np.ndarray:
        """0/1 vector of kept slots. Labels are checked by the rules of
        :meth:`~pruning_ir.PruningIR.check_labels` (:func:`~pruning_ir._ir.masks.checked_labels`);
        anything they reject goes to ``check_labels`` itself, so the errors are the same.
        ``check_step=False`` accepts kept counts off a group's step (a search's intermediate
        points, never pruned)."""
        kept = np.ones(self._poly.n_slots, dtype=np.int64)
        labels = list(removed_labels) if removed_labels is not None else []
        if not labels:
            return kept
        fast = self._fast_kept(labels, kept, check_step)
        if fast is not None:
            return fast
        kept[:] = 1
        for leaf, mask in self._ir.check_labels(labels, self._name).items():
            off, size = self._leaf_slot[leaf]
            kept[off : off + size] = ~mask.numpy()
        return kept

    def _fast_kept(self, labels: list[Label], kept: np.ndarray, check_step: bool = True) -> np.ndarray | None:
        got = checked_labels(self._snap, labels, check_step)
        if got is None:
            return None
        _, g, i = got
        kept[self._g_off[g] + i] = 0
        return kept

    def _kept_from_removed(self, removed: Mapping[int, Any]) -> np.ndarray:
        kept = np.ones(self._poly.n_slots, dtype=np.int64)
        for gid, mask in removed.items():
            leaf = self._gid_leaf.get(gid)
            if leaf is None:
                raise InvalidInputError(f"group g{gid} is not a prunable group of snapshot {self._name!r}")
            off, size = self._leaf_slot[leaf]
            m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            if m.shape != (size,) or m.dtype != np.bool_:
                raise InvalidInputError(f"group g{gid}: expected a bool mask of {size} removed slots, "
                                        f"got dtype {m.dtype} and shape {m.shape}")
            kept[off : off + size] = ~m
        return kept

    # ----------------------------------------------------------------------------- queries
    def cost(self, removed_labels: LabelsArg = None) -> int:
        """The cost of the model with ``removed_labels`` removed (``None``: nothing removed)."""
        return int(self._poly.total(self._poly.factors(self._kept_from_labels(removed_labels))))

    def baseline(self) -> int:
        """The cost with nothing removed."""
        return self._baseline

    def cost_from_removed(self, removed: Mapping[int, torch.Tensor | np.ndarray]) -> int:
        """The cost for masks of removed slots given per group id (``True`` = removed).

        Skips label validation (a mask may even remove a whole group); for selectors that
        keep masks.
        """
        return int(self._poly.total(self._poly.factors(self._kept_from_removed(removed))))

    def cost_for_counts(self, kept: Mapping[int, int]) -> int:
        """Fast path: the cost when group ``gid`` keeps ``kept[gid]`` labels (others keep all).

        Exact only when the cost does not depend on *which* labels are kept, i.e. every
        axis uses the group's labels as a whole (the usual case: splits and concats refine
        groups). For a group that some axis uses in part (a slice of it contracted on its
        own, as in ``h[:, :5] @ h[:, :5].T``) it raises :class:`ValueError`: use :meth:`cost`.
        """
        fc = self._full_fc.copy()
        for gid, n in kept.items():
            leaf = self._gid_leaf.get(gid)
            if leaf is None:
                raise InvalidInputError(f"group g{gid} is not a prunable group of snapshot {self._name!r}")
            off, size = self._leaf_slot[leaf]
            if not 0 <= n <= size:
                raise InvalidInputError(f"group g{gid} has {size} labels; cannot keep {n}")
            sel = (self._poly.f_lo >= off) & (self._poly.f_hi <= off + size)
            if bool((self._full_fc[sel] != size).any()):
                raise ValueError(f"group g{gid}: the cost depends on which labels are kept (some axis uses "
                                 "part of the group); pass the labels to cost() instead")
            fc[sel] = n
        return int(self._poly.total(fc))

    def label_costs(self, removed_labels: LabelsArg = None) -> dict[int, np.ndarray]:
        """For every prunable group, the cost saved by removing each label in addition to
        ``removed_labels`` (an int64 vector over the group's slots; 0 for removed slots).

        Exact for every label, interactions included: a conv input channel saves less once
        output channels are gone. Removing the last kept label of a group is reported as
        well, although ``prune`` refuses it.
        """
        kept = self._kept_from_labels(removed_labels, check_step=False)
        saving = self._piece_savings(kept)
        pert = self._pieces()
        per_slot = np.repeat(saving, pert.p_hi - pert.p_lo) * kept  # pieces tile the slots in order
        out: dict[int, np.ndarray] = {}
        for gid, leaf in self._gid_leaf.items():
            off, size = self._leaf_slot[leaf]
            out[gid] = per_slot[off : off + size]
        return out

    def marginal_costs(self, removed_labels: LabelsArg = None) -> dict[int, float]:
        """For every prunable group id, the cost saved by removing ONE more label of it given
        ``removed_labels``: the mean over the group's kept labels of what each saves
        (all of a group's labels usually save the same; they differ only where an axis uses
        part of the group). A group's cost depends on what its neighbours keep, so recompute
        after every change of the selection.
        """
        kept = self._kept_from_labels(removed_labels, check_step=False)
        saving = self._piece_savings(kept)
        pert = self._pieces()
        csum = np.zeros(self._poly.n_slots + 1, dtype=np.int64)
        np.cumsum(kept, out=csum[1:])
        n_kept = (csum[pert.p_hi] - csum[pert.p_lo]).astype(np.float64)
        gids = list(self._gid_leaf)
        gi = np.searchsorted(self._p_start, pert.p_lo, side="right") - 1  # pieces -> group order
        num = np.bincount(gi, weights=n_kept * saving.astype(np.float64), minlength=len(gids))
        den = np.bincount(gi, weights=n_kept, minlength=len(gids))
        return {g: float(num[i] / den[i]) if den[i] else 0.0 for i, g in enumerate(gids)}

    def breakdown(self, removed_labels: LabelsArg = None) -> dict[str, int]:
        """The cost split by where it arises (a node for MACs, a parameter for parameters)."""
        per = self.tag_costs(removed_labels)
        return {name: int(per[i]) for i, name in enumerate(self._tags)}

    # ----------------------------------------------------------------------------- per tag
    @property
    def tags(self) -> list[str]:
        """Where the cost arises, in tag order: a node for MACs (``"#nid op module"``), a
        parameter for parameters (the keys of :meth:`breakdown`)."""
        return list(self._tags)

    def tag_costs(self, removed_labels: LabelsArg = None) -> np.ndarray:
        """The cost of each tag (int64, in :attr:`tags` order) with ``removed_labels`` removed."""
        return self._tag_values(self._kept_from_labels(removed_labels))

    def tag_costs_from_removed(self, removed: Mapping[int, torch.Tensor | np.ndarray]) -> np.ndarray:
        """:meth:`tag_costs` for masks of removed slots per group id (no label validation)."""
        return self._tag_values(self._kept_from_removed(removed))

    def tag_savings(self, removed_labels: LabelsArg = None) -> TagSavings:
        """What removing one more label lowers each tag's cost by, given ``removed_labels``
        (exact, interactions included; summed over tags it is :meth:`label_costs`)."""
        kept = self._kept_from_labels(removed_labels)
        pert = self._pieces()
        piece, tag, delta = pert.tag_deltas(self._poly, kept, len(self._tags), self._baseline < 2**53)
        if self._piece_of_slot is None:
            self._piece_of_slot = np.repeat(np.arange(pert.p_lo.size), pert.p_hi - pert.p_lo)
        pos = self._piece_of_slot
        pieces, kept_by = {}, {}
        for gid, leaf in self._gid_leaf.items():
            off, size = self._leaf_slot[leaf]
            pieces[gid] = pos[off : off + size]
            kept_by[gid] = kept[off : off + size].astype(bool)
        return TagSavings(piece, tag, delta, int(pert.p_lo.size), pieces, kept_by, self._tag_values(kept))

    def _tag_values(self, kept: np.ndarray) -> np.ndarray:
        poly = self._poly
        out = np.zeros(len(self._tags), dtype=np.int64)
        if poly.m_coef.size:
            mv = poly.monomials(poly.factors(kept))
            if self._baseline < 2**53:  # every partial sum is below 2**53: float sums are exact, and faster
                out += np.bincount(poly.m_tag, weights=mv, minlength=out.size).astype(np.int64)
            else:
                np.add.at(out, poly.m_tag, mv)
        for tag, c in poly.const_by_tag.items():
            out[tag] += c
        return out

    # ----------------------------------------------------------------------------- internals
    def _pieces(self) -> Perturbations:
        if self._pert is None:
            self._pert = perturbations(self._poly, self._snap, self._leaf_slot)
        return self._pert

    def _piece_savings(self, kept: np.ndarray) -> np.ndarray:
        return self._pieces().savings(self._poly, kept)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._baseline:,} {self.unit} unpruned, {self._poly.m_coef.size} "
                f"label-dependent terms over {len(self._gid_leaf)} prunable groups)")
