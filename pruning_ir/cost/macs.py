"""MACs and parameter counts read off the IR's shapes, for any selection of labels, without a forward.

Every size that a cost depends on is the kept size of an axis layout (see
:mod:`pruning_ir._ir.spaces`): a sum of terms, each a product of ranges ``(leaf, start, stop)``
of label groups. A cost is a polynomial in those axis sizes, built once from the snapshot's
graph and compiled into flat ``numpy`` index arrays, so that evaluating it for a new
selection is a prefix sum over the kept slots and a few ``reduceat`` calls (no re-trace, no
forward, no model).

MAC conventions (one MAC = one multiply-accumulate = two FLOPs of
:class:`torch.utils.flop_counter.FlopCounterMode`; bias additions, normalisations,
activations, softmax, pooling and every elementwise op count zero, as there):

* ``aten.mm``, ``aten.addmm``, ``aten._scaled_mm``, ``aten._int_mm``: ``M·K·N``;
  ``aten.bmm``, ``aten.baddbmm``, ``aten.addbmm``: ``B·M·K·N``; ``aten.matmul``: output
  numel times ``K``; ``aten.linear``: input numel times ``out_features``;
  ``aten.mv``/``aten.addmv``: ``M·K``; ``aten.dot``/``aten.vdot``: ``K``.
* Convolutions (``aten.convolution``, ``aten._convolution``, ``aten.convolution_overrideable``,
  ``aten.cudnn_convolution``, ``aten.mkldnn_convolution``, ``aten._slow_conv2d_forward``,
  ``aten.conv{1,2,3}d``, ``aten.conv_transpose{1,2,3}d``): ``batch · weight numel · spatial``,
  with the output's spatial size for a convolution and the input's for a transposed one
  (groups are in the weight's shape), as in ``FlopCounterMode``.
* Attention (``aten._scaled_dot_product_*``, ``aten.scaled_dot_product_attention``):
  ``batch·heads_q·S_q·S_k·(D_qk + D_v)`` (``q·kᵀ`` and ``p·v``; masks and causality ignored,
  GQA counted with the query heads), as in ``FlopCounterMode``; ``aten._flash_attention_forward``
  and ``aten._efficient_attention_forward`` (``(B, S, H, D)`` layout) the same when not
  variable-length.
* ``aten._grouped_mm`` (MoE experts): ``M·K·N`` for ``(M, K) x (G, K, N)`` and
  ``(M, K) x (K, N)`` with offsets, ``G·M·K·N`` for ``(G, M, K) x (G, K, N)``.

``FlopCounterMode`` of torch 2.13 has no formula for ``aten._scaled_dot_product_flash_attention_for_cpu``
(what SDPA runs on CPU), ``aten.addbmm``, ``aten.mv``/``aten.addmv``, ``aten.dot``/``aten.vdot``,
``aten._int_mm``, ``aten.mkldnn_convolution`` nor ``aten._grouped_mm``, so on models that use them
it reports fewer FLOPs than ``2 x`` these MACs; everywhere else the two agree exactly.

Not counted: leaf modules (recorded as one opaque node, their inside is not in the graph) and
the few MAC-carrying op forms whose shapes are not understood (variable-length flash
attention, unusual ``_grouped_mm`` ranks); :attr:`MacsModel.uncounted` lists them.

Parameter convention (:class:`ParamsModel`): the number of elements of the model's parameters
(not buffers), each tied parameter once, parameters that the trace never touched included
(they keep their size).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._ir.graph import Graph, Node, ValueRef
from .._ir.labels import Label
from .._ir.masks import checked_labels
from .._ir.ops import SDPA
from .._ir.snapshot import Snapshot
from .._ir.spaces import Layout, SpaceTable
from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..ir import PruningIR

__all__ = ["MAC_OPS", "CostModel", "MacsModel", "NodeCostModel", "ParamsModel", "TagSavings"]

Axis = Layout | int
"""A size a cost depends on: an axis layout (its kept size varies with the labels) or a constant."""

Monomial = tuple[int, list[Axis]]
"""``coef * prod(axis sizes)``."""


# ---------------------------------------------------------------------------------------- op formulas
def _axes(graph: Graph, ref: Any) -> list[Axis]:
    """The axis layouts of a tensor argument (its plain sizes when a layout is missing)."""
    if not isinstance(ref, ValueRef):
        raise _NotUnderstood("a tensor argument is missing")
    v = graph.values[ref.vid]
    if len(v.axes) == len(v.shape):
        return list(v.axes)
    return list(v.shape)


def _out_axes(graph: Graph, node: Node, i: int = 0) -> list[Axis]:
    if i >= len(node.outputs) or node.outputs[i] < 0:
        raise _NotUnderstood("the output is missing")
    return _axes(graph, ValueRef(node.outputs[i]))


class _NotUnderstood(Exception):
    """The node carries MACs, but its arguments do not have a form this module models."""


def _mm(a: str, b: str) -> Callable[[Graph, Node], list[Monomial]]:
    def f(graph: Graph, node: Node) -> list[Monomial]:
        x, y = _axes(graph, node.kwargs.get(a)), _axes(graph, node.kwargs.get(b))
        if len(x) != 2 or len(y) != 2:
            raise _NotUnderstood(f"ranks {len(x)} and {len(y)}")
        return [(1, [x[0], x[1], y[1]])]
    return f


def _bmm(a: str, b: str) -> Callable[[Graph, Node], list[Monomial]]:
    def f(graph: Graph, node: Node) -> list[Monomial]:
        x, y = _axes(graph, node.kwargs.get(a)), _axes(graph, node.kwargs.get(b))
        if len(x) != 3 or len(y) != 3:
            raise _NotUnderstood(f"ranks {len(x)} and {len(y)}")
        return [(1, [x[0], x[1], x[2], y[2]])]
    return f


def _mv(a: str) -> Callable[[Graph, Node], list[Monomial]]:
    def f(graph: Graph, node: Node) -> list[Monomial]:
        x = _axes(graph, node.kwargs.get(a))
        if len(x) != 2:
            raise _NotUnderstood(f"rank {len(x)}")
        return [(1, [x[0], x[1]])]
    return f


def _dot(graph: Graph, node: Node) -> list[Monomial]:
    return [(1, _axes(graph, node.kwargs.get("self"))[:1])]


def _matmul(graph: Graph, node: Node) -> list[Monomial]:
    """``torch.matmul`` in all its ranks: output numel times the contracted size."""
    x = _axes(graph, node.kwargs.get("self"))
    y = _axes(graph, node.kwargs.get("other"))
    if not x or not y:
        raise _NotUnderstood("a 0-d operand")
    k = x[-1]
    return [(1, _out_axes(graph, node) + [k])]


def _linear(graph: Graph, node: Node) -> list[Monomial]:
    x, w = _axes(graph, node.kwargs.get("input")), _axes(graph, node.kwargs.get("weight"))
    if len(w) == 1:
        return [(1, x)]
    if len(w) != 2:
        raise _NotUnderstood(f"weight rank {len(w)}")
    return [(1, x + [w[0]])]


def _linear_self(graph: Graph, node: Node) -> list[Monomial]:
    x, w = _axes(graph, node.kwargs.get("self")), _axes(graph, node.kwargs.get("weight"))
    if len(w) != 2:
        raise _NotUnderstood(f"weight rank {len(w)}")
    return [(1, x + [w[0]])]


def _conv(inp: str, transposed: bool | None) -> Callable[[Graph, Node], list[Monomial]]:
    """``batch * prod(weight shape) * prod(spatial)``: output spatial, input spatial when transposed."""

    def f(graph: Graph, node: Node) -> list[Monomial]:
        x, w = _axes(graph, node.kwargs.get(inp)), _axes(graph, node.kwargs.get("weight"))
        tr = bool(node.kwargs.get("transposed", False)) if transposed is None else transposed
        out = _out_axes(graph, node)
        batched = len(x) == len(w)
        if not batched and len(x) != len(w) - 1:
            raise _NotUnderstood(f"input rank {len(x)} with weight rank {len(w)}")
        lead = 1 if batched else 0
        batch: list[Axis] = [x[0]] if batched else []
        spatial = (x if tr else out)[lead + 1 :]
        return [(1, batch + w + spatial)]
    return f


def _sdpa(graph: Graph, node: Node) -> list[Monomial]:
    """``(..., S, D)`` q/k/v: ``batch·S_q·S_k·D_qk + batch·S_q·S_k·D_v`` with the query's batch axes."""
    q = _axes(graph, node.kwargs.get("query"))
    k = _axes(graph, node.kwargs.get("key"))
    v = _axes(graph, node.kwargs.get("value"))
    if len(q) < 2 or len(k) != len(q) or len(v) != len(q):
        raise _NotUnderstood(f"ranks {len(q)}, {len(k)}, {len(v)}")
    common = q[:-1] + [k[-2]]
    return [(1, common + [q[-1]]), (1, common + [v[-1]])]


def _sdpa_bshd(varlen: tuple[str, ...]) -> Callable[[Graph, Node], list[Monomial]]:
    """``(B, S, H, D)`` q/k/v of the private flash / memory-efficient kernels."""

    def f(graph: Graph, node: Node) -> list[Monomial]:
        if any(isinstance(node.kwargs.get(n), ValueRef) for n in varlen):
            raise _NotUnderstood("variable-length (nested) attention")
        q = _axes(graph, node.kwargs.get("query"))
        k = _axes(graph, node.kwargs.get("key"))
        v = _axes(graph, node.kwargs.get("value"))
        if not len(q) == len(k) == len(v) == 4:
            raise _NotUnderstood(f"ranks {len(q)}, {len(k)}, {len(v)}")
        common = [q[0], q[2], q[1], k[1]]
        return [(1, common + [q[3]]), (1, common + [v[3]])]
    return f


def _grouped_mm(graph: Graph, node: Node) -> list[Monomial]:
    a, b = _axes(graph, node.kwargs.get("self")), _axes(graph, node.kwargs.get("mat2"))
    if len(a) == 2 and len(b) == 3:
        return [(1, [a[0], a[1], b[2]])]
    if len(a) == 3 and len(b) == 3:
        return [(1, [a[0], a[1], a[2], b[2]])]
    if len(a) == 2 and len(b) == 2:
        return [(1, [a[0], a[1], b[1]])]
    raise _NotUnderstood(f"ranks {len(a)} and {len(b)}")


MAC_OPS: dict[str, Callable[[Graph, Node], list[Monomial]]] = {
    "aten.mm": _mm("self", "mat2"),
    "aten._scaled_mm": _mm("self", "mat2"),
    "aten._int_mm": _mm("self", "mat2"),
    "aten.addmm": _mm("mat1", "mat2"),
    "aten.bmm": _bmm("self", "mat2"),
    "aten.baddbmm": _bmm("batch1", "batch2"),
    "aten.addbmm": _bmm("batch1", "batch2"),
    "aten.mv": _mv("self"),
    "aten.addmv": _mv("mat"),
    "aten.dot": _dot,
    "aten.vdot": _dot,
    "aten.matmul": _matmul,
    "aten.linear": _linear,
    "aten.convolution": _conv("input", None),
    "aten._convolution": _conv("input", None),
    "aten.convolution_overrideable": _conv("input", None),
    "aten.cudnn_convolution": _conv("self", False),
    "aten.mkldnn_convolution": _conv("self", False),
    "aten._slow_conv2d_forward": _conv("self", False),
    "aten.conv1d": _conv("input", False),
    "aten.conv2d": _conv("input", False),
    "aten.conv3d": _conv("input", False),
    "aten.conv_transpose1d": _conv("input", True),
    "aten.conv_transpose2d": _conv("input", True),
    "aten.conv_transpose3d": _conv("input", True),
    **dict.fromkeys(SDPA, _sdpa),
    "aten._flash_attention_forward": _sdpa_bshd(("cum_seq_q", "cum_seq_k")),
    "aten._efficient_attention_forward": _sdpa_bshd(("cu_seqlens_q", "cu_seqlens_k")),
    "aten._conv_depthwise2d": _conv("self", False),
    "aten.slow_conv3d_forward": _conv("self", False),
    "aten.slow_conv_dilated2d": _conv("self", False),
    "aten.slow_conv_dilated3d": _conv("self", False),
    "aten.slow_conv_transpose2d": _conv("self", True),
    "aten.slow_conv_transpose3d": _conv("self", True),
    "aten._nnpack_spatial_convolution": _conv("input", False),
    "aten.miopen_convolution": _conv("self", False),
    "aten.mkldnn_linear": _linear_self,
    "aten._grouped_mm": _grouped_mm,
}
"""ATen op -> its MACs as monomials over axis sizes. Every other op counts zero."""



def _mac_like(op: str) -> bool:
    """An op outside :data:`MAC_OPS` whose name says it probably multiplies matrices (reported)."""
    name = op.rsplit(".", 1)[-1]
    if "upsample" in name or "backward" in name:
        return False
    return (any(k in name for k in ("attention", "convolution", "conv1d", "conv2d", "conv3d", "conv_transpose",
                                    "conv_depthwise", "slow_conv", "matmul", "einsum", "tensordot"))
            or name.endswith(("mm", "linear")))



# ------------------------------------------------------------------------------------- the polynomial
@dataclass
class _Poly:
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


class _Builder:
    """Collects monomials over axis layouts (deduplicated) and compiles them into a :class:`_Poly`."""

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

    def compile(self) -> _Poly:
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

        return _Poly(self.n_slots, arr(f_lo), arr(f_hi), arr(t_start), arr(t_coef), arr(a_start), arr(a_const),
                     arr(m_axes), arr(m_start), arr([c for c, _, _ in self.monos]),
                     arr([t for _, _, t in self.monos]), sum(self.const_by_tag.values()), dict(self.const_by_tag))


@dataclass
class _Perturbations:
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

    def _mono_deltas(self, poly: _Poly, kept: np.ndarray) -> np.ndarray:
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

    def _no_kept(self, poly: _Poly, kept: np.ndarray) -> np.ndarray:
        csum = np.zeros(poly.n_slots + 1, dtype=np.int64)
        np.cumsum(kept, out=csum[1:])
        out: np.ndarray = csum[self.p_hi] == csum[self.p_lo]
        return out

    def savings(self, poly: _Poly, kept: np.ndarray) -> np.ndarray:
        """Cost saved by removing one kept slot of each piece (0 for pieces with none kept)."""
        saving = np.zeros(self.p_lo.size, dtype=np.int64)
        if self.pm_mono.size == 0:
            return saving
        np.add.at(saving, self.pm_piece, self._mono_deltas(poly, kept))
        saving[self._no_kept(poly, kept)] = 0
        return saving

    def tag_keys(self, poly: _Poly, n_tags: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct touched (piece, tag) pairs and, per touched monomial entry, its pair."""
        if self._keys is None:
            key = self.pm_piece * n_tags + poly.m_tag[self.pm_mono]
            uniq, inv = np.unique(key, return_inverse=True)
            self._keys = (uniq // n_tags, uniq % n_tags, inv.reshape(-1))
        return self._keys

    def tag_deltas(self, poly: _Poly, kept: np.ndarray, n_tags: int,
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


def _perturbations(poly: _Poly, snap: Snapshot, leaf_slot: dict[int, tuple[int, int]]) -> _Perturbations:
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
    return _Perturbations(**{k: np.asarray(v, dtype=np.int64) for k, v in out.items()})


# ------------------------------------------------------------------------------------- public models
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
        builder = _Builder(snap)
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
        self._pert: _Perturbations | None = None
        self._piece_of_slot: np.ndarray | None = None

    def _collect(self, snap: Snapshot, builder: _Builder) -> None:  # pragma: no cover - abstract
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
    def _pieces(self) -> _Perturbations:
        if self._pert is None:
            self._pert = _perturbations(self._poly, self._snap, self._leaf_slot)
        return self._pert

    def _piece_savings(self, kept: np.ndarray) -> np.ndarray:
        return self._pieces().savings(self._poly, kept)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._baseline:,} {self.unit} unpruned, {self._poly.m_coef.size} "
                f"label-dependent terms over {len(self._gid_leaf)} prunable groups)")


class MacsModel(CostModel):
    """Multiply-accumulates of one forward on the IR's example inputs, for any removed labels.

    Conventions (which ops count, and how) are in the module docstring of
    :mod:`pruning_ir.cost.macs`: they match ``torch.utils.flop_counter.FlopCounterMode``
    (its FLOPs / 2) op for op, plus the CPU attention kernel and a few contractions it misses.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR
        >>> from pruning_ir.cost import MacsModel
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
        >>> macs = MacsModel(ir)
        >>> macs.baseline()                       # 2 * (4*16 + 16*3)
        224
        >>> labels = ir.labels(ir.prunable_label_groups()[0])[:4]
        >>> macs.macs(labels)                     # 2 * (4*12 + 12*3)
        168
        >>> macs.marginal_costs(labels)           # group g2 (the hidden units): one more saves 2 * (4 + 3)
        {2: 14.0}
    """

    unit = "MACs"

    def _collect(self, snap: Snapshot, builder: _Builder) -> None:
        self.uncounted: list[str] = []
        """Nodes that may carry MACs but are not counted (leaf modules, forms not understood)."""
        self.counted: dict[str, int] = {}
        """Op -> number of nodes whose MACs are counted."""
        graph = snap.graph
        for node in graph.primary_nodes():  # the example call's (extra calls are not the model's cost)
            where = node.module or "<root>"
            if node.leaf:
                self.uncounted.append(f"leaf module {node.leaf} '{where}' (its inside is not in the graph)")
                continue
            formula = MAC_OPS.get(node.op)
            if formula is None:
                if _mac_like(node.op):
                    self.uncounted.append(f"{node.op} in '{where}': no MAC formula")
                continue
            try:
                monos = formula(graph, node)
            except _NotUnderstood as exc:
                self.uncounted.append(f"{node.op} in '{where}': {exc}")
                continue
            tag = self._tag(f"#{node.nid} {node.op} {where}")
            for coef, axes in monos:
                builder.add(coef, axes, tag)
            self.counted[node.op] = self.counted.get(node.op, 0) + 1

    def macs(self, removed_labels: LabelsArg = None) -> int:
        """MACs of the model with ``removed_labels`` removed (``None``: the unpruned model)."""
        return self.cost(removed_labels)


class ParamsModel(CostModel):
    """Number of parameter elements of the model with labels removed (buffers not counted,
    tied parameters once, parameters that the trace never touched at their full size).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR
        >>> from pruning_ir.cost import ParamsModel
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
        >>> params = ParamsModel(ir)
        >>> hidden = ir.labels(ir.prunable_label_groups()[0])
        >>> params.baseline(), params.params(hidden[:4])   # 4*16+16+16*3+3, then 12 hidden units
        (131, 99)
    """

    unit = "parameters"

    def _collect(self, snap: Snapshot, builder: _Builder) -> None:
        graph = snap.graph
        for name, vid in graph.params.items():
            v = graph.values[vid]
            if v.kind != "param":
                continue
            axes: Sequence[Axis] = v.axes if len(v.axes) == len(v.shape) else v.shape
            builder.add(1, axes, self._tag(name))
        untouched = [(n, p) for n, p in self._ir.model.named_parameters() if n not in graph.params]
        if untouched:
            builder.add(sum(p.numel() for _, p in untouched), (), self._tag("<parameters not in the graph>"))

    def params(self, removed_labels: LabelsArg = None) -> int:
        """Parameter count of the model with ``removed_labels`` removed (``None``: unpruned)."""
        return self.cost(removed_labels)


class NodeCostModel(CostModel):
    """Per-node costs for latency models: the MACs of every MAC-carrying node under its own tag,
    and, under tag 0, the elements written by every other node (leaf modules included).

    The per-tag queries (:meth:`~CostModel.tag_costs`, :meth:`~CostModel.tag_savings`) are what
    it is for: :class:`~pruning_ir.latency.LatencyLUT` looks each node up on its own latency
    curve and the other ops' elements on the overhead's. The total (:meth:`~CostModel.cost`)
    mixes MACs and elements and means little on its own.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR
        >>> from pruning_ir.cost import NodeCostModel
        >>> ir = PruningIR(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)),
        ...                example_inputs=(torch.randn(2, 4),))
        >>> terms = NodeCostModel(ir)
        >>> [len(terms.nodes), terms.tags[0]]
        [2, '<elements written by the other ops>']
        >>> terms.tag_costs().tolist()    # t (64) + relu (32) + t (48) elements; 2*4*16, 2*16*3 MACs
        [144, 128, 96]
    """

    unit = "MACs (nodes) / elements (tag 0)"

    def __init__(self, ir: PruningIR, snapshot_name: str = "main") -> None:
        self.nodes: list[Node] = []
        """The MAC-carrying nodes, node ``i`` under tag ``i + 1``."""
        self.n_other = 0
        """Number of other nodes (their output elements are tag 0)."""
        self.uncounted: list[str] = []
        """MAC-carrying nodes whose form is not understood (counted as other nodes)."""
        super().__init__(ir, snapshot_name)

    def _collect(self, snap: Snapshot, builder: _Builder) -> None:
        graph = snap.graph
        other = self._tag("<elements written by the other ops>")
        for node in graph.primary_nodes():
            formula = None if node.leaf else MAC_OPS.get(node.op)
            monos = None
            if formula is not None:
                try:
                    monos = formula(graph, node)
                except _NotUnderstood as exc:
                    self.uncounted.append(f"{node.op} in '{node.module or '<root>'}': {exc}")
            if monos is None:
                self.n_other += 1
                for vid in node.outputs:
                    if vid >= 0:
                        builder.add(1, _axes(graph, ValueRef(vid)), other)
                continue
            tag = self._tag(f"#{node.nid} {node.op} {node.module or '<root>'}")
            self.nodes.append(node)
            for coef, axes in monos:
                builder.add(coef, axes, tag)
