"""Objectives: *how much* is pruned, as a fraction of a cost of the original model.

* :class:`Ratio`: the fraction of the target's labels (channels, heads) removed; for the
  fine-grained targets, the fraction of the weights' entries that are zero.
* :class:`Macs`, :class:`Params`: the fraction of the model's multiply-accumulates / parameters
  removed, read off the IR's cost models (no slim model is built to price a candidate).
* :class:`Latency`: the fraction of any ``fn(model) -> float`` removed (e.g.
  :class:`~pruning_ir.latency.MeasuredLatency`, a :class:`~pruning_ir.latency.LatencyLUT`'s
  function): a candidate is priced with ``fn.cost_model(ir)`` when the function has one, else
  built and measured.

:meth:`Objective.measure` prices selections of one IR in absolute units, so a schedule's steps,
each on the slim model of the step before, are compared with the same original cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from .._ir.labels import Label, LabelGroup
    from ..ir import PruningIR

Measure = Callable[["list[Label]"], float]
"""The cost of the model with a selection of labels removed (absolute units)."""


@dataclass(frozen=True)
class Objective:
    """Remove ``fraction`` of a cost (see the module docstring)."""

    fraction: float

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise InvalidInputError(f"{type(self).__name__}(fraction={f!r}): give the fraction of the cost to "
                                    "remove, in (0, 1).")

    def function(self, ir: PruningIR) -> Callable[[nn.Module], float] | None:
        """The cost as a function of a model (``None`` for :class:`Ratio`)."""
        return None

    def measure(self, ir: PruningIR, groups: list[LabelGroup]) -> Measure:
        """The cost of ``ir``'s model with a selection removed (``groups``: the target's groups)."""
        from ..selectors.budget import Evaluator

        fn = self.function(ir)
        assert fn is not None
        return Evaluator(ir, "main", fn)


@dataclass(frozen=True)
class Ratio(Objective):
    """Remove ``fraction`` of the target's labels (or, for fine-grained targets, of the entries)."""

    def measure(self, ir: PruningIR, groups: list[LabelGroup]) -> Measure:
        gids = {g.gid for g in groups}
        total = sum(g.size for g in groups)
        return lambda labels: float(total - sum(1 for lab in labels if lab.group in gids))


@dataclass(frozen=True)
class Macs(Objective):
    """Remove ``fraction`` of the multiply-accumulates of one forward pass on the example inputs."""

    def function(self, ir: PruningIR) -> Callable[[nn.Module], float]:
        from ..latency import MacsLatency

        args, kwargs = ir.snapshot().example
        return MacsLatency(args, kwargs)


@dataclass(frozen=True)
class Params(Objective):
    """Remove ``fraction`` of the parameters."""

    def function(self, ir: PruningIR) -> Callable[[nn.Module], float]:
        from ..latency import ParamsLatency

        return ParamsLatency()


@dataclass(frozen=True)
class Latency(Objective):
    """Remove ``fraction`` of ``fn(model)`` (any latency function; see the module docstring)."""

    fn: Callable[[nn.Module], float] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.fn):
            raise InvalidInputError(f"Latency(fraction, fn={self.fn!r}): give a function model -> float, e.g. "
                                    "pruning_ir.latency.MeasuredLatency(example_inputs).")

    def function(self, ir: PruningIR) -> Callable[[nn.Module], Any]:
        return self.fn
