"""A cost as a polynomial in the kept sizes of the IR's axes, compiled into flat ``numpy`` index
arrays (see :mod:`pruning_ir.cost.macs` for what it counts)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .._ir.snapshot import Snapshot
from .._ir.spaces import Layout, SpaceTable
from .._rules.base import Axis

if TYPE_CHECKING:
    pass


@dataclass
class Poly:
    """A cost compiled into index arrays.

    Slots: every prunable group's labels laid end to end (``n_slots`` in all). A *factor* is
    a slot range ``[f_lo, f_hi)``; its value is the number of kept slots in it. A *term* is
    ``t_coef`` times the product of a run of factors (runs start at ``t_start``). A variable
    *axis* is ``a_const`` plus the sum of a run of terms (runs start at ``a_start``). A
    *monomial* is ``m_coef`` times the product of a run of axes (ids ``m_axes``, runs start
    at ``m_start``). The cost is ``const`` plus the sum of the monomials. Runs are never
    empty, so ``reduceat`` needs no special case.
    """

    n_slots: int
    f_lo: np.ndarray
    f_hi: np.ndarray
    t_start: np.ndarray
    t_coef: np.ndarray
    a_start: np.ndarray
    a_const: np.ndarray
    m_axes: np.ndarray
    m_start: np.ndarray
    m_coef: np.ndarray
    m_tag: np.ndarray
    const: int
    const_by_tag: dict[int, int]

    def monomials(self, fc: np.ndarray) -> np.ndarray:
        """Monomial values from factor values ``fc`` (last dim: factors; leading dims: a batch)."""
        if self.m_coef.size == 0:
            return np.zeros((*fc.shape[:-1], 0), dtype=np.int64)
        tv = np.multiply.reduceat(fc, self.t_start, axis=-1) * self.t_coef
        av = np.add.reduceat(tv, self.a_start, axis=-1) + self.a_const
        return np.multiply.reduceat(av[..., self.m_axes], self.m_start, axis=-1) * self.m_coef

    def total(self, fc: np.ndarray) -> np.ndarray:
        """The cost (an int64 array of the batch shape)."""
        return self.monomials(fc).sum(axis=-1) + self.const

    def factors(self, kept: np.ndarray) -> np.ndarray:
        """Factor values for a 0/1 int64 vector of kept slots."""
        csum = np.zeros(self.n_slots + 1, dtype=np.int64)
        np.cumsum(kept, out=csum[1:])
        return csum[self.f_hi] - csum[self.f_lo]


class Builder:
    """Collects monomials over axis layouts (deduplicated) and compiles them into a :class:`Poly`."""

    def __init__(self, snap: Snapshot) -> None:
        self.sp: SpaceTable = snap.spaces
        self.leaf_slot: dict[int, tuple[int, int]] = {}
        off = 0
        for g in snap.prunable_groups:
            self.leaf_slot[g.leaf] = (off, g.size)
            off += g.size
        self.n_slots = off
        self._axis_ids: dict[Layout, tuple[int, int]] = {}
        self.axes: list[tuple[int, list[tuple[int, list[tuple[int, int]]]]]] = []
        self.monos: list[tuple[int, list[int], int]] = []
        self.const_by_tag: dict[int, int] = {}

    def axis(self, ax: Axis) -> tuple[int, int]:
        """``(size, -1)`` for an axis that no label changes, else ``(0, variable axis id)``."""
        if isinstance(ax, int):
            return ax, -1
        got = self._axis_ids.get(ax)
        if got is not None:
            return got
        const = 0
        terms: list[tuple[int, list[tuple[int, int]]]] = []
        for t in self.sp.normalize(ax):
            coef = 1
            var: list[tuple[int, int]] = []
            for leaf, s, e in t:
                slot = self.leaf_slot.get(leaf)
                if slot is None:
                    coef *= e - s
                else:
                    var.append((slot[0] + s, slot[0] + e))
            if not var:
                const += coef
            elif coef:
                terms.append((coef, var))
        if terms:
            self.axes.append((const, terms))
            got = (0, len(self.axes) - 1)
        else:
            got = (const, -1)
        self._axis_ids[ax] = got
        return got

    def add(self, coef: int, axes: Iterable[Axis], tag: int) -> None:
        """Add ``coef * prod(sizes of axes)`` to the cost, attributed to ``tag``."""
        var: list[int] = []
        for ax in axes:
            c, a = self.axis(ax)
            if a < 0:
                coef *= c
            else:
                var.append(a)
        if coef == 0:
            return
        if var:
            self.monos.append((coef, var, tag))
        else:
            self.const_by_tag[tag] = self.const_by_tag.get(tag, 0) + coef

    def compile(self) -> Poly:
        f_lo: list[int] = []
        f_hi: list[int] = []
        t_start: list[int] = []
        t_coef: list[int] = []
        a_start: list[int] = []
        a_const: list[int] = []
        for const, terms in self.axes:
            a_start.append(len(t_start))
            a_const.append(const)
            for coef, var in terms:
                t_start.append(len(f_lo))
                t_coef.append(coef)
                for lo, hi in var:
                    f_lo.append(lo)
                    f_hi.append(hi)
        m_axes: list[int] = []
        m_start: list[int] = []
        for _, ids, _ in self.monos:
            m_start.append(len(m_axes))
            m_axes.extend(ids)

        def arr(x: list[int]) -> np.ndarray:
            return np.asarray(x, dtype=np.int64)

        return Poly(self.n_slots, arr(f_lo), arr(f_hi), arr(t_start), arr(t_coef), arr(a_start), arr(a_const),
                     arr(m_axes), arr(m_start), arr([c for c, _, _ in self.monos]),
                     arr([t for _, _, t in self.monos]), sum(self.const_by_tag.values()), dict(self.const_by_tag))


@dataclass
class Perturbations:
    """What removing one slot of each *piece* changes, as flat index arrays.

    A piece is a run of slots of one prunable group that lie in exactly the same factors, so
    removing any of its slots saves the same. Removing one slot lowers by one every factor
    that contains the piece; only the terms, axes and monomials above those factors change,
    so each piece carries just that sub-polynomial:

    * touched terms ``pt_term`` (factor runs at ``pt_fstart`` over ``ptf_factor`` with
      ``ptf_dec`` = 1 where the factor contains the piece); the touched terms of one axis are
      adjacent, and each touched axis (of each piece) starts a run at ``pa_start``;
    * touched monomials ``pm_mono`` of piece ``pm_piece`` (axis runs at ``pm_start`` over
      ``pma_axis``, with ``pma_pa`` the touched-axis entry, or -1 for an unchanged axis).
    """

    p_lo: np.ndarray
    p_hi: np.ndarray
    p_gid: np.ndarray
    pt_term: np.ndarray
    pt_fstart: np.ndarray
    ptf_factor: np.ndarray
    ptf_dec: np.ndarray
    pa_start: np.ndarray
    pm_piece: np.ndarray
    pm_mono: np.ndarray
    pm_start: np.ndarray
    pma_axis: np.ndarray
    pma_pa: np.ndarray
    _keys: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(init=False, default=None)

    def _mono_deltas(self, poly: Poly, kept: np.ndarray) -> np.ndarray:
        """For every touched (piece, monomial) entry, what removing one slot of the piece
        subtracts from the monomial (valid for pieces with a kept slot)."""
        fc = poly.factors(kept)
        tv = np.multiply.reduceat(fc, poly.t_start) * poly.t_coef
        av = np.add.reduceat(tv, poly.a_start) + poly.a_const
        mv = np.multiply.reduceat(av[poly.m_axes], poly.m_start) * poly.m_coef
        # a piece with a kept slot has every containing factor >= 1, so the decrement is valid
        tv_new = np.multiply.reduceat(fc[self.ptf_factor] - self.ptf_dec, self.pt_fstart) * poly.t_coef[self.pt_term]
        d_axis = np.append(np.add.reduceat(tv[self.pt_term] - tv_new, self.pa_start), 0)
        vals = av[self.pma_axis] - d_axis[self.pma_pa]  # -1 picks the appended 0
        mv_new = np.multiply.reduceat(vals, self.pm_start) * poly.m_coef[self.pm_mono]
        out: np.ndarray = mv[self.pm_mono] - mv_new
        return out

    def _no_kept(self, poly: Poly, kept: np.ndarray) -> np.ndarray:
        csum = np.zeros(poly.n_slots + 1, dtype=np.int64)
        np.cumsum(kept, out=csum[1:])
        out: np.ndarray = csum[self.p_hi] == csum[self.p_lo]
        return out

    def savings(self, poly: Poly, kept: np.ndarray) -> np.ndarray:
        """Cost saved by removing one kept slot of each piece (0 for pieces with none kept)."""
        saving = np.zeros(self.p_lo.size, dtype=np.int64)
        if self.pm_mono.size == 0:
            return saving
        np.add.at(saving, self.pm_piece, self._mono_deltas(poly, kept))
        saving[self._no_kept(poly, kept)] = 0
        return saving

    def tag_keys(self, poly: Poly, n_tags: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct touched (piece, tag) pairs and, per touched monomial entry, its pair."""
        if self._keys is None:
            key = self.pm_piece * n_tags + poly.m_tag[self.pm_mono]
            uniq, inv = np.unique(key, return_inverse=True)
            self._keys = (uniq // n_tags, uniq % n_tags, inv.reshape(-1))
        return self._keys

    def tag_deltas(self, poly: Poly, kept: np.ndarray, n_tags: int,
                   exact_float: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(piece, tag, delta)``: removing one kept slot of ``piece`` lowers ``tag`` by ``delta``
        (0 for pieces with no kept slot); one entry per touched (piece, tag) pair."""
        k_piece, k_tag, inv = self.tag_keys(poly, n_tags)
        if self.pm_mono.size == 0:
            return k_piece, k_tag, np.zeros(0, dtype=np.int64)
        d = self._mono_deltas(poly, kept)
        if exact_float:  # every partial sum is below 2**53: float sums are exact, and faster
            delta = np.bincount(inv, weights=d, minlength=k_piece.size).astype(np.int64)
        else:
            delta = np.zeros(k_piece.size, dtype=np.int64)
            np.add.at(delta, inv, d)
        delta[self._no_kept(poly, kept)[k_piece]] = 0
        return k_piece, k_tag, delta


def perturbations(poly: Poly, snap: Snapshot, leaf_slot: dict[int, tuple[int, int]]) -> Perturbations:
    nf, nt, na = poly.f_lo.size, poly.t_start.size, poly.a_start.size
    term_of_factor = np.repeat(np.arange(nt), np.diff(np.append(poly.t_start, nf))).tolist()
    axis_of_term = np.repeat(np.arange(na), np.diff(np.append(poly.a_start, nt))).tolist()
    t_bounds = np.append(poly.t_start, nf).tolist()
    m_bounds = np.append(poly.m_start, poly.m_axes.size).tolist()
    m_axes = poly.m_axes.tolist()
    monos_of_axis: dict[int, list[int]] = {}
    for m in range(poly.m_start.size):
        for a in m_axes[m_bounds[m] : m_bounds[m + 1]]:
            monos_of_axis.setdefault(a, []).append(m)
    f_lo, f_hi = poly.f_lo.tolist(), poly.f_hi.tolist()
    starts = [off for off, _ in leaf_slot.values()]
    facs_of_group: dict[int, list[int]] = {}
    for f in range(nf):
        facs_of_group.setdefault(bisect.bisect_right(starts, f_lo[f]) - 1, []).append(f)
    gids = [g.gid for g in snap.prunable_groups]
    out: dict[str, list[int]] = {k: [] for k in ("p_lo", "p_hi", "p_gid", "pt_term", "pt_fstart", "ptf_factor",
                                                 "ptf_dec", "pa_start", "pm_piece", "pm_mono", "pm_start",
                                                 "pma_axis", "pma_pa")}
    n_pa = 0
    for gi, (off, size) in enumerate(leaf_slot.values()):
        facs = facs_of_group.get(gi, [])
        cuts = sorted({off, off + size, *(f_lo[f] for f in facs), *(f_hi[f] for f in facs)})
        for lo, hi in itertools.pairwise(cuts):
            piece = len(out["p_lo"])
            out["p_lo"].append(lo)
            out["p_hi"].append(hi)
            out["p_gid"].append(gids[gi])
            inside = {f for f in facs if f_lo[f] <= lo and hi <= f_hi[f]}
            pa_of_axis: dict[int, int] = {}
            for t in sorted({term_of_factor[f] for f in inside}):  # terms of one axis are adjacent
                a = axis_of_term[t]
                if a not in pa_of_axis:
                    pa_of_axis[a] = n_pa
                    out["pa_start"].append(len(out["pt_term"]))
                    n_pa += 1
                out["pt_term"].append(t)
                out["pt_fstart"].append(len(out["ptf_factor"]))
                for f in range(t_bounds[t], t_bounds[t + 1]):
                    out["ptf_factor"].append(f)
                    out["ptf_dec"].append(int(f in inside))
            for m in sorted({m for a in pa_of_axis for m in monos_of_axis.get(a, [])}):
                out["pm_piece"].append(piece)
                out["pm_mono"].append(m)
                out["pm_start"].append(len(out["pma_axis"]))
                for a in m_axes[m_bounds[m] : m_bounds[m + 1]]:
                    out["pma_axis"].append(a)
                    out["pma_pa"].append(pa_of_axis.get(a, -1))
    return Perturbations(**{k: np.asarray(v, dtype=np.int64) for k, v in out.items()})
