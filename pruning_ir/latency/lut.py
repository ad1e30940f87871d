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
  model at the smallest width is built (``ir.prune``) and measured too, paired with the full
  model (``MeasuredLatency(reference=...)``: its ratio to the full model, drift-cancelling),
  and the overhead at both widths fixes the line (clamped to non-negative parts;
  the baseline stays the measured latency). When there is no smaller width, or that model cannot
  be built or run, ``fixed`` is estimated as the number of other ops times the measured latency
  of a one-element ``add`` (:attr:`LatencyLUT.overhead_fit` says which).

**Calibration.** The ops are timed alone, and the two-point fit cannot explain a model that
runs *faster* than its ops alone (the overhead is clamped at 0: on a loaded CPU the op timings
after cache flushes can sum to more than the model) nor a slim model slower than the ops and
the largest fixed overhead allow. Predictions are therefore mapped by an affine
``scale x table + shift`` (:attr:`LatencyLUT.calibration`) that reproduces both measured models,
the unpruned one and the slim one at the smallest width; it is the identity when the fit
already does. Without a slim model, only a scale, from the unpruned model's latency, when the
ops alone exceed it.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._ir.labels import Label
from .._ir.snapshot import Snapshot
from ..cost import NodeCostModel, ParamsModel, TagSavings
from ..errors import InvalidInputError, LatencyMeasurementError
from .measure import MeasuredLatency
from .ops import arg_specs, cache_flusher, dispatch_seconds, freeze, measure_op
from .timing import model_device, resolve_threads

if TYPE_CHECKING:
    from ..ir import PruningIR

__all__ = ["LatencyLUT"]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ per-node terms
class _Fractions:
    """Per-tag values of a :class:`~pruning_ir.cost.NodeCostModel` as fractions of their full values."""

    def __init__(self, terms: NodeCostModel) -> None:
        self.full = terms.tag_costs().astype(np.float64)
        self._safe = np.where(self.full > 0, self.full, 1.0)

    def __call__(self, values: np.ndarray, tags: np.ndarray | None = None) -> np.ndarray:
        """Values over their full values (tags ``tags``, default all); 1 where the full value is 0."""
        if tags is None:
            return np.where(self.full > 0, values / self._safe, 1.0)
        return np.where(self.full[tags] > 0, values / self._safe[tags], 1.0)


@dataclass(frozen=True)
class _Timing:
    """How every op and model is timed."""

    warmup: int
    repeats: int
    threads: int
    device: torch.device


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
        ws = self._check_args(widths, repeats, warmup, num_threads)
        t_start = time.perf_counter()
        self._name = snapshot_name
        snap = ir.snapshot(snapshot_name)
        args, kwargs = snap.example
        device = model_device(ir.model, args, kwargs)
        if device.type == "meta":
            raise InvalidInputError("LatencyLUT times the model and its ops: the IR's model is on the meta device. "
                                    "Build the IR from a model on the device to measure (CPU, CUDA).")
        timing = _Timing(warmup, repeats, resolve_threads(num_threads), device)
        self.widths = ws
        self.device = device
        terms = NodeCostModel(ir, snapshot_name)
        self._terms = terms
        self._frac = _Fractions(terms)
        self._rows = np.arange(len(terms.tags))
        self.unmeasured: list[str] = list(terms.uncounted)
        """Nodes that may carry MACs but were not timed (their time stays in the overhead)."""
        tables, removed_at, frac_at = self._time_nodes(ir, snap, timing)
        self._x, self._y, self._slope = self._compile(tables)
        w_min = ws[-1]
        full_runs, small_runs = self._time_models(ir, snap, removed_at[w_min] if w_min < 1.0 else None, timing)
        self.measured_ms = statistics.fmean(full_runs)
        """Measured latency of the unpruned model on the snapshot's example inputs (ms)."""
        ops_ms = self._ops_ms(np.ones(len(terms.tags)))
        overhead = max(self.measured_ms - ops_ms, 0.0)
        fixed = self._split_overhead(overhead, frac_at[w_min], w_min, small_runs, timing)
        tables[0] = [(0.0, fixed), (1.0, overhead)]
        self._x, self._y, self._slope = self._compile(tables)
        self._calibrate(frac_at[w_min], small_runs, ops_ms)
        self.build_seconds = time.perf_counter() - t_start
        """Wall-clock time of the construction (s)."""
        if self.unmeasured:
            log.warning("LatencyLUT: %d MAC-carrying nodes not timed (their time is in the overhead): %s",
                        len(self.unmeasured), "; ".join(self.unmeasured[:5]))
        log.info("LatencyLUT: %d MAC nodes, %d measurements, measured %.3f ms = ops %.3f + overhead %.3f "
                 "(fixed %.3f; %s), calibration %.3g x + %.3g ms, built in %.1fs", len(terms.nodes),
                 self.n_measurements, self.measured_ms, ops_ms, overhead, fixed, self.overhead_fit,
                 *self.calibration, self.build_seconds)

    def _time_nodes(self, ir: PruningIR, snap: Snapshot, timing: _Timing
                    ) -> tuple[list[list[tuple[float, float]]], dict[float, dict[int, np.ndarray]],
                               dict[float, np.ndarray]]:
        """Every MAC node alone at every width: its table of ``(MACs fraction, ms)`` points (row 0,
        the overhead, is filled in later), and the uniform selection and tag fractions per width."""
        terms = self._terms
        graph, sp = snap.graph, snap.spaces
        gen = torch.Generator(device=timing.device).manual_seed(0)
        flush_to, flush_limit = cache_flusher(timing.device)
        params = ParamsModel(ir, self._name)
        elem_bytes = next((p.element_size() for p in ir.model.parameters() if p.is_floating_point()), 4)
        cache: dict[Any, float | None] = {}
        points: list[dict[float, list[float]]] = [{} for _ in terms.nodes]
        failed: set[int] = set()
        removed_at: dict[float, dict[int, np.ndarray]] = {}
        frac_at: dict[float, np.ndarray] = {}
        for w in self.widths:
            kept_leaf, removed = self._uniform(snap, w)
            removed_at[w] = removed
            values = terms.tag_costs_from_removed(removed).astype(np.float64)
            frac = frac_at[w] = self._frac(values)
            # between two calls of an op the model touches its parameters and activations
            touched = elem_bytes * (params.cost_from_removed(removed) + int(values[0]))
            nbytes = min(touched, flush_limit)

            def flush(n: int = nbytes) -> None:
                flush_to(n)
            for i, node in enumerate(terms.nodes):
                if i in failed:
                    continue
                specs = arg_specs(graph, sp, node, kept_leaf)
                key = (node.op, freeze(specs))
                if key not in cache:
                    cache[key] = measure_op(node, specs, timing.device, gen, timing.warmup, timing.repeats,
                                            timing.threads, flush)
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
        return tables, removed_at, frac_at

    def _time_models(self, ir: PruningIR, snap: Snapshot, removed: dict[int, np.ndarray] | None, timing: _Timing
                     ) -> tuple[list[float], list[float]]:
        """The whole model twice, and the slim model at the smallest width (``removed``) once,
        paired with the unpruned one (for the overhead's fit)."""
        args, kwargs = snap.example
        fn = MeasuredLatency(args, kwargs, warmup=timing.warmup, repeats=timing.repeats, num_threads=timing.threads)
        small = self._slim(ir, self._name, snap, removed) if removed is not None else None
        full_runs = [fn(ir.model) for _ in range(2)]
        small_runs: list[float] = []
        if small is not None:
            # paired with the unpruned model (drift-cancelling): the ratio of the two is what the
            # fit needs, and a change of the machine's load between two absolute runs would bend it
            paired = MeasuredLatency(args, kwargs, warmup=timing.warmup, repeats=timing.repeats,
                                     num_threads=timing.threads, reference=ir.model,
                                     reference_ms=statistics.fmean(full_runs))
            try:
                small_runs.append(paired(small))
            except LatencyMeasurementError as exc:
                log.warning("LatencyLUT: the slim model at width %g failed to run (%s); the overhead is "
                            "split with the dispatch estimate", self.widths[-1], exc)
        return full_runs, small_runs

    def _split_overhead(self, overhead: float, frac_min: np.ndarray, w_min: float, small_runs: list[float],
                        timing: _Timing) -> float:
        """The fixed part of the overhead (the rest varies with the elements the other ops
        write): a two-point fit when the slim model was measured, else the dispatch estimate."""
        self.dispatch_ms: float | None = None
        """Measured latency of a one-element ``add`` (ms), when the overhead split used it."""
        self.overhead_fit = ""
        """How the overhead was split into its fixed and variable parts."""
        fixed = -1.0
        e_min = float(frac_min[0])
        if small_runs and e_min < 1.0:
            small_overhead = max(statistics.fmean(small_runs) - self._ops_ms(frac_min), 0.0)
            variable = min(max((overhead - small_overhead) / (1.0 - e_min), 0.0), overhead)
            fixed = overhead - variable
            self.overhead_fit = f"two-point fit at widths 1.0 and {w_min:g} (slim model measured)"
        if fixed < 0.0:
            self.dispatch_ms = 1e3 * dispatch_seconds(timing.device, warmup=timing.warmup, repeats=timing.repeats,
                                                      num_threads=timing.threads)
            fixed = min(overhead, self._terms.n_other * self.dispatch_ms)
            self.overhead_fit = f"dispatch estimate: {self._terms.n_other} ops x {self.dispatch_ms:.3g} ms fixed"
        self.overhead_ms = (fixed, overhead - fixed)
        """The overhead at full width: ``(fixed, variable)`` in ms (see the module docstring)."""
        return fixed

    def _calibrate(self, frac_min: np.ndarray, small_runs: list[float], ops_ms: float) -> None:
        """The affine map from the tables' sum to ms that reproduces both measured models."""
        self.calibration = (1.0, 0.0)
        """``(scale, shift)``: predictions are ``scale x`` the table's sum ``+ shift`` (ms), the
        affine map that reproduces both measured models (see the module docstring)."""
        ones = np.ones(len(self._rows))
        raw_full = float(self._latencies(self._rows, ones).sum())
        if small_runs:
            raw_small = float(self._latencies(self._rows, frac_min).sum())
            m_full, m_small = self.measured_ms, statistics.fmean(small_runs)
            if raw_full > raw_small and m_full > m_small:
                scale = (m_full - m_small) / (raw_full - raw_small)
                if abs(scale - 1.0) > 1e-6 or abs(m_full - raw_full) > 1e-6 * m_full:
                    self.calibration = (scale, m_full - scale * raw_full)
        elif raw_full > 0 and ops_ms > self.measured_ms:  # the ops alone take longer than the model
            self.calibration = (self.measured_ms / raw_full, 0.0)
        self._baseline = self.calibration[0] * raw_full + self.calibration[1]

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
    def _check_args(widths: Sequence[float], repeats: int, warmup: int, num_threads: int | None) -> list[float]:
        """The widths to time, largest first (1.0 always among them); clear errors for bad arguments."""
        try:
            ws = {float(w) for w in widths}
        except (TypeError, ValueError):
            raise InvalidInputError(f"LatencyLUT(widths={widths!r}): give fractions in (0, 1].") from None
        if any(not 0.0 < w <= 1.0 for w in ws):
            raise InvalidInputError(f"LatencyLUT(widths={widths!r}): every width must be in (0, 1].")
        for what, v, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InvalidInputError(f"LatencyLUT({what}={v!r}): give an integer >= {low}.")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise InvalidInputError(f"LatencyLUT(num_threads={num_threads!r}): give an integer >= 1 or None.")
        return sorted(ws | {1.0}, reverse=True)

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

    def _per_tag(self, values: np.ndarray) -> np.ndarray:
        """The table's latency of each tag (before the calibration)."""
        return self._latencies(self._rows, self._frac(values.astype(np.float64)))

    def _predict(self, values: np.ndarray) -> float:
        scale, shift = self.calibration
        return max(scale * float(self._per_tag(values).sum()) + shift, 0.0)

    def baseline(self) -> float:
        """Predicted latency with nothing removed (ms): the measured latency of the unpruned model
        (the calibration maps the table onto it), unless the measurements give no usable
        calibration and the ops alone take longer than the model (then the ops' sum)."""
        return self._baseline

    def cost(self, removed_labels: Iterable[Label] | None = None) -> float:
        """Predicted latency (ms) with ``removed_labels`` removed (``None``: nothing removed).

        Labels are checked like :meth:`~pruning_ir.PruningIR.check_labels` (same errors)."""
        return self._predict(self._terms.tag_costs(removed_labels))

    def cost_from_removed(self, removed: Mapping[int, torch.Tensor | np.ndarray]) -> float:
        """Predicted latency (ms) for bool masks of removed slots per prunable group id (no label
        validation: a mask may remove a whole group)."""
        return self._predict(self._terms.tag_costs_from_removed(removed))

    def label_costs(self, removed_labels: Iterable[Label] | None = None) -> dict[int, np.ndarray]:
        """For every prunable group, the predicted latency saved (ms) by removing each label in
        addition to ``removed_labels`` (a float64 vector over the group's slots; 0 for removed
        slots). Exact under the table's model: each node's MACs (and the elements written)
        after the removal, read off the IR, are looked up on its curve."""
        return self._label_costs(self._terms.tag_savings(removed_labels))

    def _label_costs(self, ts: TagSavings) -> dict[int, np.ndarray]:
        values = ts.costs.astype(np.float64)
        now = self._latencies(self._rows, self._frac(values))
        saving = np.zeros(ts.n_pieces, dtype=np.float64)
        if ts.delta.size:
            after = self._frac(values[ts.tag] - ts.delta, ts.tag)
            np.add.at(saving, ts.piece, now[ts.tag] - self._latencies(ts.tag, after))
        # >= 0 up to rounding anyway; a piece with no kept label has no delta, so it saves 0
        return ts.per_label(self.calibration[0] * np.maximum(saving, 0.0))

    def marginal_costs(self, removed_labels: Iterable[Label] | None = None) -> dict[int, float]:
        """For every prunable group id, the mean predicted saving (ms) of removing one more of
        its kept labels given ``removed_labels``."""
        ts = self._terms.tag_savings(removed_labels)
        return {gid: float(c[ts.kept[gid]].mean()) if ts.kept[gid].any() else 0.0
                for gid, c in self._label_costs(ts).items()}

    def breakdown(self, removed_labels: Iterable[Label] | None = None) -> dict[str, float]:
        """Predicted latency (ms) per MAC node (``"#nid op module"``), of the overhead and of the
        calibration's shift (the entries sum to :meth:`cost`, clamping at 0 aside)."""
        scale, shift = self.calibration
        per = scale * self._per_tag(self._terms.tag_costs(removed_labels))
        names = ["<overhead: the other ops>", *self._terms.tags[1:]]
        out = {name: float(v) for name, v in zip(names, per, strict=True)}
        out["<calibration shift>"] = shift
        return out

    def __repr__(self) -> str:
        fixed, var = self.overhead_ms
        return (f"LatencyLUT({self._baseline:.4g} ms unpruned on {self.device}: {len(self._terms.nodes)} MAC nodes, "
                f"{self.n_measurements} measurements at widths {self.widths}, overhead {fixed:.3g} fixed + "
                f"{var:.3g} ms variable, calibration {self.calibration[0]:.3g} x + {self.calibration[1]:.3g} ms; "
                f"measured {self.measured_ms:.4g} ms)")
