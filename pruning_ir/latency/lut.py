"""A NetAdapt-style latency lookup table: per-op latencies measured once, queried for any selection.

:class:`LatencyLUT` times every MAC-carrying op of a snapshot's graph (convolutions, matrix
products, attention: the nodes :class:`~pruning_ir.cost.MacsModel` counts) alone, at a few
uniform widths, plus the whole model (and its slim copy at the smallest width). A query then
predicts the latency of any selection of labels from the IR's shapes alone: no model is built
or run.

Model of the latency (all in milliseconds)::

    latency(S) = sum over MAC nodes n of  L_n(macs_n(S) / macs_n(full))  +  overhead(S)

* ``L_n`` is piecewise linear in the node's **MACs fraction**: the points are the node's
  measured latency at each width (its MACs fraction there comes from the IR), made
  non-decreasing, and the first segment is extended below the smallest width (clamped at 0);
  with a single width the latency is taken proportional to the MACs.
  The MACs fraction is exact for any selection (read off the IR like ``MacsModel``), so a
  node pruned unevenly (only its output channels, only some heads) lands on the curve at the
  uniform width of equal MACs.
* ``overhead`` is everything the MAC nodes do not explain (normalisations, activations, adds,
  pooling, Python and dispatch, and how much slower the ops run inside the model than alone):
  ``measured full latency - sum of L_n(1)``, clamped at 0. It is modelled as
  ``fixed + variable * e(S)`` where ``e(S)`` is the fraction of the elements written by the other
  ops that the selection keeps (read off the IR): those ops are memory-bound, so their time
  follows the tensor sizes rather than the MACs, and part of the overhead (Python, dispatch)
  does not shrink at all. ``fixed`` and ``variable`` come from a **two-point fit**: the slim
  model at the smallest width is built (``ir.prune``) and measured too, interleaved with the
  full model, and the overhead at both widths fixes the line (clamped to non-negative parts;
  the baseline stays the measured latency). When there is no smaller width, or that model cannot
  be built or run, ``fixed`` is estimated as the number of other ops times the measured latency
  of a one-element ``add`` (:attr:`LatencyLUT.overhead_fit` says which).

Measurements are deduplicated: a node is timed once per distinct ``(op, argument shapes and
values)``, so the repeated blocks of a ResNet stage cost one measurement per width, and a node
whose shapes do not depend on any label is timed once. Arguments are fresh random contiguous
tensors on the model's device (integer tensors are zeros); a node whose op cannot be called that
way is reported in :attr:`LatencyLUT.unmeasured` and its time is left in the overhead. Every
timed call follows a **cache flush**: inside the model the other layers run between two calls
of an op, so its weights come from memory when the model's parameters and activations at that
width exceed the caches, and the flush writes that many bytes (at most twice the device's
largest cache). Timed with warm caches, ResNet-50's convolutions summed to 0.68x their time
inside the model (0.66x at half width); after a full flush, 0.88x (0.89x).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import timeit
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from .._ir.axes import kept_size
from .._ir.graph import Graph, Node, ValueRef, set_path
from .._ir.labels import Label
from .._ir.snapshot import Snapshot
from .._ir.spaces import Layout, SpaceTable
from ..cost import MAC_OPS, CostModel, ParamsModel
from ..errors import InvalidInputError, LatencyMeasurementError
from .measure import MeasuredLatency, _model_device, _resolve_threads, _sync_clock, time_calls

if TYPE_CHECKING:
    from ..ir import PruningIR

__all__ = ["LatencyLUT"]

log = logging.getLogger(__name__)

_DEFAULT_FLUSH_BYTES = 64 * 2**20
"""Bytes written between two timed op calls when the device's last cache size is unknown."""


# ------------------------------------------------------------------------------------ per-node terms
def _value_axes(graph: Graph, vid: int) -> Sequence[Layout | int]:
    v = graph.values[vid]
    return v.axes if len(v.axes) == len(v.shape) else v.shape


class _NodeTerms(CostModel):
    """MACs of every MAC-carrying node under its own tag (tags ``1..``), and tag 0: the
    elements written by every other node (leaf modules included).

    Builds on :class:`~pruning_ir.cost.CostModel`'s compiled polynomial; adds per-tag
    evaluation and per-(piece, tag) savings of removing one label.
    """

    unit = "MACs"

    def __init__(self, ir: PruningIR, snapshot_name: str) -> None:
        self.nodes: list[Node] = []
        self.n_other = 0
        self.uncounted: list[str] = []
        super().__init__(ir, snapshot_name)
        self.n_tags = len(self._tags)
        self._const = np.zeros(self.n_tags, dtype=np.float64)
        for tag, c in self._poly.const_by_tag.items():
            self._const[tag] += c
        self.full = self.values(np.ones(self._poly.n_slots, dtype=np.int64))
        self._safe_full = np.where(self.full > 0, self.full, 1.0)
        self._keys: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _collect(self, snap: Snapshot, builder: Any) -> None:
        graph = snap.graph
        other = self._tag("<elements written by the other ops>")
        for node in graph.nodes:
            formula = None if node.leaf else MAC_OPS.get(node.op)
            monos = None
            if formula is not None:
                try:
                    monos = formula(graph, node)
                except Exception as exc:  # a form MacsModel does not understand either
                    self.uncounted.append(f"{node.op} in '{node.module or '<root>'}': {exc}")
            if monos is None:
                self.n_other += 1
                for vid in node.outputs:
                    if vid >= 0:
                        builder.add(1, _value_axes(graph, vid), other)
                continue
            tag = self._tag(f"#{node.nid} {node.op} {node.module or '<root>'}")
            self.nodes.append(node)
            for coef, axes in monos:
                builder.add(coef, axes, tag)

    # ------------------------------------------------------------------------------ evaluation
    def values(self, kept: np.ndarray) -> np.ndarray:
        """Per-tag value (float64) for a 0/1 vector of kept slots."""
        poly = self._poly
        out = self._const.copy()
        if poly.m_coef.size:
            mv = poly.monomials(poly.factors(kept))
            out += np.bincount(poly.m_tag, weights=mv, minlength=self.n_tags)
        return out

    def fractions(self, values: np.ndarray, tags: np.ndarray | None = None) -> np.ndarray:
        """Values over their full values (tags ``tags``, default all); 1 where the full value is 0."""
        if tags is None:
            return np.where(self.full > 0, values / self._safe_full, 1.0)
        return np.where(self.full[tags] > 0, values / self._safe_full[tags], 1.0)

    def kept_from_labels(self, labels: Iterable[Label] | None) -> np.ndarray:
        return self._kept_from_labels(labels)

    def kept_from_removed(self, removed: Mapping[int, Any]) -> np.ndarray:
        return self._kept_from_removed(removed)

    def piece_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        pert = self._pieces()
        return pert.p_lo, pert.p_hi

    def slot_ranges(self) -> dict[int, tuple[int, int]]:
        """Prunable group id -> ``(first slot, size)``."""
        return {gid: self._leaf_slot[leaf] for gid, leaf in self._gid_leaf.items()}

    def piece_tag_deltas(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What removing one slot of each piece subtracts from each tag it touches.

        Returns ``(piece, tag, delta)`` arrays, one entry per touched (piece, tag) pair (the
        per-tag split of :meth:`CostModel.label_costs`' savings).
        """
        pert = self._pieces()
        poly = self._poly
        if self._keys is None:
            key = pert.pm_piece * self.n_tags + poly.m_tag[pert.pm_mono]
            uniq, inv = np.unique(key, return_inverse=True)
            self._keys = (uniq // self.n_tags, uniq % self.n_tags, inv.reshape(-1))
        k_piece, k_tag, inv = self._keys
        if pert.pm_mono.size == 0:
            return k_piece, k_tag, np.zeros(0, dtype=np.float64)
        # the same arithmetic as the savings of CostModel.label_costs, kept per monomial
        fc = poly.factors(kept)
        tv = np.multiply.reduceat(fc, poly.t_start) * poly.t_coef
        av = np.add.reduceat(tv, poly.a_start) + poly.a_const
        mv = np.multiply.reduceat(av[poly.m_axes], poly.m_start) * poly.m_coef
        tv_new = np.multiply.reduceat(fc[pert.ptf_factor] - pert.ptf_dec, pert.pt_fstart) * poly.t_coef[pert.pt_term]
        d_axis = np.append(np.add.reduceat(tv[pert.pt_term] - tv_new, pert.pa_start), 0)
        vals = av[pert.pma_axis] - d_axis[pert.pma_pa]
        mv_new = np.multiply.reduceat(vals, pert.pm_start) * poly.m_coef[pert.pm_mono]
        delta = np.bincount(inv, weights=mv[pert.pm_mono] - mv_new, minlength=k_piece.size)
        return k_piece, k_tag, delta


# -------------------------------------------------------------------------------- op measurement
class _Spec(NamedTuple):
    """A tensor argument to make: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _dtype(name: str) -> torch.dtype:
    got = getattr(torch, name.rsplit(".", 1)[-1], None)
    return got if isinstance(got, torch.dtype) else torch.float32


def _arg_specs(graph: Graph, sp: SpaceTable, node: Node, kept: dict[int, torch.Tensor]) -> dict[str, Any]:
    """The node's arguments with every tensor replaced by a :class:`_Spec` of its kept shape and
    every channel-size integer (a fact, e.g. ``groups``) by its kept value."""
    kw: dict[str, Any] = {k: v for k, v in node.kwargs.items() if not k.startswith("__")}
    for fact in node.facts:
        kw = set_path(kw, fact.path, kept_size(sp, fact.layout, kept))

    def spec(obj: Any) -> Any:
        if isinstance(obj, ValueRef):
            v = graph.values[obj.vid]
            shape = (tuple(kept_size(sp, ax, kept) for ax in v.axes) if len(v.axes) == len(v.shape)
                     else tuple(v.shape))
            return _Spec(shape, _dtype(v.dtype))
        if isinstance(obj, list):
            return [spec(o) for o in obj]
        if isinstance(obj, tuple) and not isinstance(obj, _Spec):
            return tuple(spec(o) for o in obj)
        if isinstance(obj, dict):
            return {k: spec(o) for k, o in obj.items()}
        return obj

    out: dict[str, Any] = spec(kw)
    return out


def _freeze(obj: Any) -> Any:
    """A hashable key for an argument structure."""
    if isinstance(obj, _Spec):
        return obj
    if isinstance(obj, dict):
        return ("d", tuple((k, _freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return ("l" if isinstance(obj, list) else "t", tuple(_freeze(o) for o in obj))
    try:
        hash(obj)
    except TypeError:
        return ("r", repr(obj))
    return obj


def _materialise(obj: Any, device: torch.device, gen: torch.Generator) -> Any:
    if isinstance(obj, _Spec):
        if obj.dtype.is_floating_point or obj.dtype.is_complex:
            return torch.randn(obj.shape, dtype=obj.dtype, device=device, generator=gen)
        if obj.dtype == torch.bool:
            return torch.ones(obj.shape, dtype=obj.dtype, device=device)
        return torch.zeros(obj.shape, dtype=obj.dtype, device=device)
    if isinstance(obj, list):
        return [_materialise(o, device, gen) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(o, device, gen) for o in obj)
    if isinstance(obj, dict):
        return {k: _materialise(o, device, gen) for k, o in obj.items()}
    return obj


def _resolve_op(name: str) -> Any:
    ns, _, op = name.partition(".")
    return getattr(getattr(torch.ops, ns), op)


def _cache_bytes(device: torch.device) -> int:
    """Size of the device's largest cache (CUDA L2, CPU cache levels from Linux sysfs), 0 if unknown."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    if device.type != "cpu":
        return 0
    sizes = [0]
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * unit)
        except (OSError, ValueError):
            continue
    return max(sizes)


def _cache_flusher(device: torch.device) -> tuple[Callable[[int], None], int]:
    """``flush(nbytes)`` writes ``nbytes`` (at most twice the device's largest cache, 64 MiB when
    unknown) to push what an op touched out of the caches; returns it and that limit."""
    limit = min(2 * _cache_bytes(device) or _DEFAULT_FLUSH_BYTES, 2**30)
    buf = torch.empty(limit // 4, dtype=torch.float32, device=device)

    def flush(nbytes: int) -> None:
        buf[: max(nbytes, 0) // 4].fill_(1.0)
    return flush, limit


def _op_clock(device: torch.device) -> Callable[[], float]:
    return _sync_clock if device.type != "cpu" else timeit.default_timer


def _time_op(op: Any, kwargs: dict[str, Any], *, warmup: int, repeats: int, num_threads: int,
             device: torch.device, flush: Callable[[], None]) -> float:
    """Median seconds of ``op(**kwargs)`` over ``repeats`` calls, each after a cache flush."""

    def call() -> None:
        with torch.no_grad():
            op(**kwargs)

    return statistics.median(time_calls(call, warmup=warmup, repeats=repeats, num_threads=num_threads,
                                        clock=_op_clock(device), before=flush))


def _dispatch_seconds(device: torch.device, *, warmup: int, repeats: int, num_threads: int) -> float:
    """Median seconds of a one-element ``add`` on ``device``: what any op costs at least."""
    one = torch.ones(1, device=device)
    return statistics.median(time_calls(lambda: torch.add(one, one), warmup=warmup, repeats=repeats,
                                        num_threads=num_threads, number=100))


# ------------------------------------------------------------------------------------------ the LUT
class LatencyLUT:
    """Per-op latency lookup table (NetAdapt-style): measured once, queried like a cost model.

    Args:
        ir: the IR whose labels are costed; its model must be on a real device (CPU, CUDA).
        snapshot_name: which snapshot (its example inputs are what the model is timed on).
        widths: fractions of every prunable group's labels kept at which each MAC node is timed
            (``1.0`` is always added).
        repeats: timed runs per measurement, each op call after a cache flush (the median is kept).
        warmup: untimed runs before each measurement.
        num_threads: torch CPU threads while timing (default: ``torch.get_num_threads()``).

    Queries (:meth:`baseline`, :meth:`cost`, :meth:`cost_from_removed`, :meth:`label_costs`,
    :meth:`marginal_costs`, :meth:`breakdown`) use the IR's shapes only: no forward, no model.
    The model of the latency, how it interpolates and what it measures are in the module
    docstring of :mod:`pruning_ir.latency.lut`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR, UniformLabelSelector
        >>> model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(16, 32),))
        >>> lut = LatencyLUT(ir, repeats=3, warmup=1)
        >>> half = UniformLabelSelector(0.5).select(ir)
        >>> 0 < lut.cost(half) <= lut.baseline()
        True
    """

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *,
                 widths: Sequence[float] = (1.0, 0.75, 0.5, 0.25), repeats: int = 10, warmup: int = 2,
                 num_threads: int | None = None) -> None:
        ws = self._check_widths(widths)
        for what, v, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InvalidInputError(f"LatencyLUT({what}={v!r}): give an integer >= {low}.")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise InvalidInputError(f"LatencyLUT(num_threads={num_threads!r}): give an integer >= 1 or None.")
        t_start = time.perf_counter()
        self._name = snapshot_name
        snap = ir.snapshot(snapshot_name)
        args, kwargs = snap.example
        device = _model_device(ir.model, args, kwargs)
        if device.type == "meta":
            raise InvalidInputError("LatencyLUT times the model and its ops: the IR's model is on the meta device. "
                                    "Build the IR from a model on the device to measure (CPU, CUDA).")
        threads = _resolve_threads(num_threads)
        self.widths = ws
        self.device = device
        terms = _NodeTerms(ir, snapshot_name)
        self._terms = terms
        self.unmeasured: list[str] = list(terms.uncounted)
        """Nodes that may carry MACs but were not timed (their time stays in the overhead)."""

        # every MAC node alone at every width
        graph, sp = snap.graph, snap.spaces
        gen = torch.Generator(device=device).manual_seed(0)
        flush_to, flush_limit = _cache_flusher(device)
        params = ParamsModel(ir, snapshot_name)
        elem_bytes = next((p.element_size() for p in ir.model.parameters() if p.is_floating_point()), 4)
        cache: dict[Any, float | None] = {}
        points: list[dict[float, list[float]]] = [{} for _ in terms.nodes]
        failed: set[int] = set()
        removed_at: dict[float, dict[int, np.ndarray]] = {}
        frac_at: dict[float, np.ndarray] = {}
        for w in ws:
            kept_leaf, removed = self._uniform(snap, w)
            removed_at[w] = removed
            values = terms.values(terms.kept_from_removed(removed))
            frac = frac_at[w] = terms.fractions(values)
            # between two calls of an op the model touches its parameters and activations
            touched = elem_bytes * (params.cost_from_removed(removed) + int(values[0]))
            nbytes = min(touched, flush_limit)

            def flush(n: int = nbytes) -> None:
                flush_to(n)
            for i, node in enumerate(terms.nodes):
                if i in failed:
                    continue
                specs = _arg_specs(graph, sp, node, kept_leaf)
                key = (node.op, _freeze(specs))
                if key not in cache:
                    cache[key] = self._measure(node, specs, device, gen, warmup, repeats, threads, flush)
                ms = cache[key]
                if ms is None:
                    failed.add(i)
                    continue
                points[i].setdefault(float(frac[i + 1]), []).append(ms)
        self.n_measurements = len(cache)
        """Distinct op calls timed."""
        tables: list[list[tuple[float, float]]] = [[(1.0, 0.0)]]  # the overhead, once known
        for i, pts in enumerate(points):
            if i in failed or not pts:
                tables.append([(1.0, 0.0)])
                where = terms.nodes[i].module or "<root>"
                self.unmeasured.append(f"{terms.nodes[i].op} in '{where}': the op could not be called alone")
            else:
                table = sorted((x, statistics.fmean(ys)) for x, ys in pts.items())
                if len(table) == 1 and table[0][0] > 0.0:  # one width: proportional to the MACs
                    table.insert(0, (0.0, 0.0))
                tables.append(table)
        self._x, self._y, self._slope = self._compile(tables)
        self._rows = np.arange(terms.n_tags)

        # the whole model, and the slim model at the smallest width for the overhead's fit
        fn = MeasuredLatency(args, kwargs, warmup=warmup, repeats=repeats, num_threads=threads)
        w_min = ws[-1]
        small = self._slim(ir, snapshot_name, snap, removed_at[w_min]) if w_min < 1.0 else None
        full_runs: list[float] = []
        small_runs: list[float] = []
        for _ in range(1 if small is None else 2):  # interleaved: both see the same machine load
            full_runs.append(fn(ir.model))
            if small is not None:
                try:
                    small_runs.append(fn(small))
                except LatencyMeasurementError as exc:
                    log.warning("LatencyLUT: the slim model at width %g failed to run (%s); the overhead is "
                                "split with the dispatch estimate", w_min, exc)
                    small = None
        del small
        self.measured_ms = statistics.fmean(full_runs)
        """Measured latency of the unpruned model on the snapshot's example inputs (ms)."""
        ops_ms = self._ops_ms(np.ones(terms.n_tags))
        overhead = max(self.measured_ms - ops_ms, 0.0)
        self.dispatch_ms: float | None = None
        """Measured latency of a one-element ``add`` (ms), when the overhead split used it."""
        self.overhead_fit = ""
        """How the overhead was split into its fixed and variable parts."""
        fixed = -1.0
        e_min = float(frac_at[w_min][0])
        if small_runs and e_min < 1.0:
            small_overhead = max(statistics.fmean(small_runs) - self._ops_ms(frac_at[w_min]), 0.0)
            variable = min(max((overhead - small_overhead) / (1.0 - e_min), 0.0), overhead)
            fixed = overhead - variable
            self.overhead_fit = f"two-point fit at widths 1.0 and {w_min:g} (slim model measured)"
        if fixed < 0.0:
            self.dispatch_ms = 1e3 * _dispatch_seconds(device, warmup=warmup, repeats=repeats, num_threads=threads)
            fixed = min(overhead, terms.n_other * self.dispatch_ms)
            self.overhead_fit = f"dispatch estimate: {terms.n_other} ops x {self.dispatch_ms:.3g} ms fixed"
        self.overhead_ms = (fixed, overhead - fixed)
        """The overhead at full width: ``(fixed, variable)`` in ms (see the module docstring)."""
        tables[0] = [(0.0, fixed), (1.0, overhead)]
        self._x, self._y, self._slope = self._compile(tables)
        self._baseline = float(self._latencies(self._rows, np.ones(terms.n_tags)).sum())
        self.build_seconds = time.perf_counter() - t_start
        """Wall-clock time of the construction (s)."""
        if self.unmeasured:
            log.warning("LatencyLUT: %d MAC-carrying nodes not timed (their time is in the overhead): %s",
                        len(self.unmeasured), "; ".join(self.unmeasured[:5]))
        log.info("LatencyLUT: %d MAC nodes, %d measurements, measured %.3f ms = ops %.3f + overhead %.3f "
                 "(fixed %.3f; %s), built in %.1fs", len(terms.nodes), self.n_measurements, self.measured_ms,
                 ops_ms, overhead, fixed, self.overhead_fit, self.build_seconds)

    def _ops_ms(self, frac: np.ndarray) -> float:
        """Sum of the MAC nodes' latencies (before the overhead's table is set, its row is 0)."""
        return float(self._latencies(self._rows[1:], frac[1:]).sum())

    @staticmethod
    def _uniform(snap: Snapshot, w: float) -> tuple[dict[int, torch.Tensor], dict[int, np.ndarray]]:
        """Every prunable group keeps its first ``round(w * size)`` labels (at least one): kept
        masks per group leaf, removed masks per group id (both empty at ``w = 1``)."""
        kept_leaf: dict[int, torch.Tensor] = {}
        removed: dict[int, np.ndarray] = {}
        if w < 1.0:
            for g in snap.prunable_groups:
                keep = np.zeros(g.size, dtype=bool)
                keep[: max(1, math.floor(w * g.size + 0.5))] = True
                kept_leaf[g.leaf] = torch.from_numpy(keep)
                removed[g.gid] = ~keep
        return kept_leaf, removed

    @staticmethod
    def _slim(ir: PruningIR, name: str, snap: Snapshot, removed: dict[int, np.ndarray]) -> torch.nn.Module | None:
        labels = [Label(snap.owner, gid, int(i)) for gid, m in removed.items() for i in np.flatnonzero(m)]
        try:
            return ir.prune(name, labels=labels).model
        except Exception as exc:  # fall back to the dispatch estimate of the fixed overhead
            log.warning("LatencyLUT: could not prune to the smallest width (%s: %s); the overhead is split with "
                        "the dispatch estimate", type(exc).__name__, exc)
            return None

    # ------------------------------------------------------------------------------ construction
    @staticmethod
    def _check_widths(widths: Sequence[float]) -> list[float]:
        try:
            ws = {float(w) for w in widths}
        except (TypeError, ValueError):
            raise InvalidInputError(f"LatencyLUT(widths={widths!r}): give fractions in (0, 1].") from None
        if any(not 0.0 < w <= 1.0 for w in ws):
            raise InvalidInputError(f"LatencyLUT(widths={widths!r}): every width must be in (0, 1].")
        return sorted(ws | {1.0}, reverse=True)

    @staticmethod
    def _measure(node: Node, specs: dict[str, Any], device: torch.device, gen: torch.Generator, warmup: int,
                 repeats: int, threads: int, flush: Callable[[], None]) -> float | None:
        try:
            op = _resolve_op(node.op)
            kwargs = _materialise(specs, device, gen)
            return 1e3 * _time_op(op, kwargs, warmup=warmup, repeats=repeats, num_threads=threads, device=device,
                                  flush=flush)
        except Exception as exc:  # the op refuses random inputs (data-dependent arguments)
            log.debug("LatencyLUT: %s in '%s' not timed: %s: %s", node.op, node.module, type(exc).__name__, exc)
            return None

    @staticmethod
    def _compile(tables: list[list[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pad the tables to one length and make them non-decreasing: the latency at a width is
        at most the latency at any larger width (noise otherwise breaks monotonicity)."""
        k = max(2, max(len(t) for t in tables))
        x = np.zeros((len(tables), k))
        y = np.zeros((len(tables), k))
        for r, t in enumerate(tables):
            xs = [p[0] for p in t]
            ys = np.minimum.accumulate(np.asarray([p[1] for p in t])[::-1])[::-1].tolist()
            for j in range(len(t), k):  # flat padding beyond the last point (the full width)
                xs.append(xs[-1] + 1.0 + j)
                ys.append(ys[-1])
            x[r], y[r] = xs, ys
        slope = np.diff(y, axis=1) / np.diff(x, axis=1)
        return x, y, slope

    # ------------------------------------------------------------------------------ evaluation
    def _latencies(self, tags: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Piecewise-linear latency of each ``tags[i]`` at MACs (elements) fraction ``frac[i]``."""
        seg = (frac[:, None] >= self._x[tags, 1:-1]).sum(axis=1)
        val = self._y[tags, seg] + (frac - self._x[tags, seg]) * self._slope[tags, seg]
        out: np.ndarray = np.maximum(val, 0.0)
        return out

    def _per_tag(self, kept: np.ndarray) -> np.ndarray:
        return self._latencies(self._rows, self._terms.fractions(self._terms.values(kept)))

    def baseline(self) -> float:
        """Predicted latency with nothing removed (ms): the measured latency when the ops explain
        no more than it, else the sum of the ops' latencies."""
        return self._baseline

    def cost(self, removed_labels: Iterable[Label] | None = None) -> float:
        """Predicted latency (ms) with ``removed_labels`` removed (``None``: nothing removed).

        Labels are checked like :meth:`~pruning_ir.PruningIR.check_labels` (same errors)."""
        return float(self._per_tag(self._terms.kept_from_labels(removed_labels)).sum())

    def cost_from_removed(self, removed: Mapping[int, torch.Tensor | np.ndarray]) -> float:
        """Predicted latency (ms) for bool masks of removed slots per prunable group id (no label
        validation: a mask may remove a whole group)."""
        return float(self._per_tag(self._terms.kept_from_removed(removed)).sum())

    def label_costs(self, removed_labels: Iterable[Label] | None = None) -> dict[int, np.ndarray]:
        """For every prunable group, the predicted latency saved (ms) by removing each label in
        addition to ``removed_labels`` (a float64 vector over the group's slots; 0 for removed
        slots). Exact under the table's model: each node's MACs (and the elements written)
        after the removal, read off the IR, are looked up on its curve."""
        terms = self._terms
        kept = terms.kept_from_labels(removed_labels)
        values = terms.values(kept)
        now = self._latencies(self._rows, terms.fractions(values))
        k_piece, k_tag, delta = terms.piece_tag_deltas(kept)
        p_lo, p_hi = terms.piece_bounds()
        saving = np.zeros(p_lo.size, dtype=np.float64)
        if delta.size:
            after = terms.fractions(values[k_tag] - delta, k_tag)
            np.add.at(saving, k_piece, now[k_tag] - self._latencies(k_tag, after))
        csum = np.zeros(kept.size + 1, dtype=np.int64)
        np.cumsum(kept, out=csum[1:])
        saving[csum[p_hi] == csum[p_lo]] = 0.0  # no kept slot left in the piece
        per_slot = np.repeat(np.maximum(saving, 0.0), p_hi - p_lo) * kept  # >= 0 up to rounding anyway
        return {gid: per_slot[off : off + size] for gid, (off, size) in terms.slot_ranges().items()}

    def marginal_costs(self, removed_labels: Iterable[Label] | None = None) -> dict[int, float]:
        """For every prunable group id, the mean predicted saving (ms) of removing one more of
        its kept labels given ``removed_labels``."""
        out: dict[int, float] = {}
        kept = self._terms.kept_from_labels(removed_labels)
        ranges = self._terms.slot_ranges()
        for gid, costs in self.label_costs(removed_labels).items():
            off, size = ranges[gid]
            k = kept[off : off + size].astype(bool)
            out[gid] = float(costs[k].mean()) if k.any() else 0.0
        return out

    def breakdown(self, removed_labels: Iterable[Label] | None = None) -> dict[str, float]:
        """Predicted latency (ms) per MAC node (``"#nid op module"``) and of the overhead."""
        per = self._per_tag(self._terms.kept_from_labels(removed_labels))
        names = ["<overhead: the other ops>"] + [f"#{n.nid} {n.op} {n.module or '<root>'}" for n in self._terms.nodes]
        return {name: float(v) for name, v in zip(names, per)}

    def __repr__(self) -> str:
        fixed, var = self.overhead_ms
        return (f"LatencyLUT({self._baseline:.4g} ms unpruned on {self.device}: {len(self._terms.nodes)} MAC nodes, "
                f"{self.n_measurements} measurements at widths {self.widths}, overhead {fixed:.3g} fixed + "
                f"{var:.3g} ms variable; measured {self.measured_ms:.4g} ms)")
