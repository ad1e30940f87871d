"""Latency functions and latency models for budget-aware selection.

* Latency functions, ``fn(model) -> float``, for ``latency_calculation_function``:
  :class:`MeasuredLatency` (wall-clock milliseconds, median of repeats, CPU or CUDA),
  :class:`MacsLatency` (multiply-accumulates) and :class:`ParamsLatency` (parameters). The
  last two also give ``cost_model(ir)``: the same quantity read off the IR, no forward needed.
* :class:`LatencyLUT`: a NetAdapt-style lookup table of per-op latencies measured once, then
  queried like a :class:`~pruning_ir.cost.CostModel` (``baseline``, ``cost``,
  ``cost_from_removed``, ``label_costs``) without building or running any model.

A latency function refuses a candidate by raising :class:`LatencyMeasurementError`.
"""

from __future__ import annotations

from .lut import LatencyLUT
from .measure import LatencyMeasurementError, MacsLatency, MeasuredLatency, ParamsLatency

__all__ = ["LatencyLUT", "LatencyMeasurementError", "MacsLatency", "MeasuredLatency", "ParamsLatency"]
