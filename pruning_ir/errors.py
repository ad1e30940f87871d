"""Exception hierarchy. Every error the library raises on purpose derives from
:class:`PruningIRError`; messages name the object at fault and say what to do."""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "InvalidInputError",
    "LabelError",
    "LatencyMeasurementError",
    "PruningIRError",
    "RewriteError",
    "SnapshotVersionError",
    "TraceError",
]


class PruningIRError(Exception):
    """Base class of every error raised by ``pruning_ir``."""


class TraceError(PruningIRError):
    """The model could not be lowered to the IR (names the module and the op).

    ``module`` is the path of the innermost module that was running (``""``: the root, ``None``:
    not known); ``raised`` is true when the model's own code raised (the exception is the
    ``__cause__``), false when the engine refused what it saw.
    """

    def __init__(self, message: str, module: str | None = None, raised: bool = False) -> None:
        super().__init__(message)
        self.module = module
        self.raised = raised


class InvalidInputError(PruningIRError, ValueError):
    """An argument has the wrong type or value (a ratio out of range, a non-module, ...)."""


class LabelError(PruningIRError, ValueError):
    """Labels that do not belong to this IR, or that cannot be removed."""


class RewriteError(PruningIRError):
    """The slim module could not be built or failed its verification forward pass."""


class SnapshotVersionError(PruningIRError):
    """A saved IR was written by an incompatible snapshot format version."""


class CalibrationError(PruningIRError):
    """A criterion could not score labels: no calibration data, or an IR whose model changed."""


class LatencyMeasurementError(PruningIRError):
    """Raised by a latency function to refuse a candidate model (it cannot be measured, does
    not fit the device...). Budget-aware selectors treat that candidate as over the budget."""
