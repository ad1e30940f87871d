"""Schedules: how much of the objective each step of a pruning run reaches.

A schedule turns the objective's final fraction into the fraction reached after each step, always
of the *original* model's cost: ``OneShot()`` (everything at once), ``Linear(steps)`` or
``AGP(steps)`` (Zhu & Gupta 2017's cubic ``s_t = s_f (1 - (1 - t/n)^3)``: large steps while the
network has redundancy, small ones near the end). The same fractions drive
:class:`~pruning_ir.workflows.IterativePruning` and NNI's ``AGP_Pruner``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

SCHEDULES = ("one_shot", "linear", "agp")


def schedule_fractions(kind: str, final: float, steps: int) -> list[float]:
    """Fraction of the cost removed after each of ``steps`` steps, ending at ``final``.

    Example:
        >>> [round(f, 4) for f in schedule_fractions("agp", 0.5, 2)]
        [0.4375, 0.5]
    """
    if kind not in SCHEDULES:
        raise InvalidInputError(f"schedule={kind!r}: give one of {SCHEDULES}.")
    if not 0 < final < 1:
        raise InvalidInputError(f"target={final!r}: give the fraction of the cost to remove, in (0, 1).")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidInputError(f"steps={steps!r}: give an int >= 1.")
    if kind == "one_shot":
        return [final]
    if kind == "linear":
        return [final * (t + 1) / steps for t in range(steps)]
    return [final * (1 - (1 - (t + 1) / steps) ** 3) for t in range(steps)]


@dataclass(frozen=True)
class Schedule:
    """A schedule kind and its number of steps (see the module docstring)."""

    kind: str = "one_shot"
    steps: int = 1

    def __post_init__(self) -> None:
        schedule_fractions(self.kind, 0.5, self.steps)  # a kind or step count that cannot work fails here

    def fractions(self, final: float) -> list[float]:
        """The fraction of the original cost removed after each step."""
        return schedule_fractions(self.kind, final, self.steps)


def OneShot() -> Schedule:
    """Everything in one step."""
    return Schedule("one_shot", 1)


def Linear(steps: int) -> Schedule:
    """``steps`` equal steps."""
    return Schedule("linear", steps)


def AGP(steps: int) -> Schedule:
    """``steps`` steps on the cubic AGP schedule."""
    return Schedule("agp", steps)
