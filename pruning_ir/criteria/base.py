"""The criterion interface: one score per label of every prunable group.

Every criterion is a context manager and a callable collector::

    with SomeCriterion(ir) as collect:
        for x, y in loader:
            out = collect(x)                 # runs ir.model(x) and returns its output
            loss_fn(out, y).backward()       # only gradient criteria need this
    # on a clean exit the snapshot holds the scores

Criteria that need no data (weight norms, FPGM, BN scale, random) also offer
:meth:`Criterion.score`, which computes and stores the scores at once. Scores are
plain float64 vectors (one entry per label, higher = more important) stored in
``ir.snapshot(name).scores``; selectors read them and nothing else, so criteria and
selectors never import each other.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._ir.measure import named_tensors
from .._progress import progress_bar
from ..errors import CalibrationError, InvalidInputError

if TYPE_CHECKING:
    from .._ir.snapshot import Snapshot
    from ..ir import PruningIR

log = logging.getLogger(__name__)


def check_fresh(ir: PruningIR, name: str) -> None:
    """Refuse to score a snapshot whose model no longer has the traced shapes."""
    snap = ir.snapshot(name)
    tensors = named_tensors(ir.model)
    for pname, vid in snap.graph.params.items():
        traced = snap.graph.values[vid].shape
        t = tensors.get(pname)
        if t is None or tuple(t.shape) != traced:
            now = "missing" if t is None else f"shape {tuple(t.shape)}"
            raise CalibrationError(
                f"snapshot {name!r} no longer matches its model: {pname!r} is {now} but was traced with "
                f"shape {traced} (the model was pruned in place or edited after tracing). Calibrate the IR "
                "that prune() returned, or build a new PruningIR(model, ...)."
            )


def all_reduce_sum(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Sum float64 tensors over the ranks of the default process group (no-op when
    ``torch.distributed`` is not initialised). One collective call for all of them."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    flat = torch.cat([t.reshape(-1).double() for t in tensors])
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        flat = flat.cuda()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu()
    out: list[torch.Tensor] = []
    start = 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


class Criterion(ABC):
    """Scores the labels of snapshot ``snapshot_name`` of ``ir``.

    Args:
        ir: the IR to score; its ``model`` is the one calibrated.
        snapshot_name: which snapshot receives the scores.
        progress: show a ``tqdm`` counter of calibration batches (off by default; needs tqdm).

    On a clean exit from the ``with`` block the scores replace any previous ones; after
    an exception nothing is stored, and every hook the criterion installed is removed
    in both cases.
    """

    name: ClassVar[str] = "criterion"
    needs_data: ClassVar[bool] = False

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *, progress: bool = False) -> None:
        from ..ir import PruningIR

        if not isinstance(ir, PruningIR):
            raise InvalidInputError(
                f"{type(self).__name__} needs a PruningIR, got {type(ir).__name__}: "
                f"build one with PruningIR(model, example_inputs=(x,)) and pass it."
            )
        self.ir = ir
        self.snapshot_name = snapshot_name
        if ir._snapshots:
            ir.snapshot(snapshot_name)  # a missing name fails here, not in the with-block
        self.progress = progress
        self.calls = 0
        self._active = False
        self._deferred = False
        self._bar: Any = None

    @property
    def snap(self) -> Snapshot:
        """The snapshot scored."""
        return self.ir.snapshot(self.snapshot_name)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Criterion:
        if self._active:
            raise CalibrationError(f"{type(self).__name__} is already collecting; do not nest it in itself.")
        self.calls = 0
        # an IR built without example inputs is traced on the first batch (see __call__)
        self._deferred = not self.ir.is_traced(self.snapshot_name)
        if not self._deferred:
            check_fresh(self.ir, self.snapshot_name)
            self._attach()
        self._active = True
        self._bar = progress_bar(self.progress, desc=f"calibrating ({self.name})")
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model on one calibration batch (same signature as the model) and return its output."""
        if not self._active:
            raise CalibrationError(
                f"{type(self).__name__} collects only inside its with-block: "
                f"`with {type(self).__name__}(ir) as collect: out = collect(x)`."
            )
        if self._deferred:
            self.ir.create_snapshot(self.snapshot_name, example_inputs=args, example_kwargs=kwargs)
            self._deferred = False
            self._attach()
        out = self._run(args, kwargs)
        self.calls += 1
        if self._bar is not None:
            self._bar.update(1)
        return out

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._active = False
        deferred, self._deferred = self._deferred, False
        try:
            if not deferred:
                self._detach()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if exc_type is None:
            if deferred:
                raise CalibrationError(
                    f"{type(self).__name__} collected no batch, and the PruningIR was built without example inputs, "
                    "so the model is still untraced: call collect(x) on at least one batch inside the with-block.")
            self._store(self._finish())

    def score(self) -> dict[int, torch.Tensor]:
        """Compute and store the scores now (criteria that need no calibration data)."""
        if self.needs_data:
            raise CalibrationError(
                f"{type(self).__name__} scores from calibration data: use "
                f"`with {type(self).__name__}(ir) as collect:` and call collect(...) on your batches."
            )
        check_fresh(self.ir, self.snapshot_name)
        scores = self._finish()
        self._store(scores)
        return scores

    # ------------------------------------------------------------------ for subclasses
    def _attach(self) -> None:  # noqa: B027  (optional hook, most criteria install nothing)
        """Install hooks before calibration (default: nothing)."""

    def _detach(self) -> None:  # noqa: B027
        """Remove every hook :meth:`_attach` installed (must not raise)."""

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.ir.model(*args, **kwargs)

    @abstractmethod
    def _finish(self) -> dict[int, torch.Tensor]:
        """Scores of every prunable group (gid -> one value per label, higher = keep)."""

    def _store(self, scores: dict[int, torch.Tensor]) -> None:
        out: dict[int, torch.Tensor] = {}
        for g in self.snap.prunable_groups:
            s = scores[g.gid].detach().double().cpu()
            if s.shape != (g.size,):
                raise CalibrationError(f"{self.name}: group g{g.gid} got {tuple(s.shape)} scores, expected {g.size}.")
            bad = ~torch.isfinite(s)
            if bool(bad.any()):
                raise CalibrationError(
                    f"{self.name}: {int(bad.sum())} labels of group g{g.gid} ({g.describe()}) got non-finite "
                    "scores (an overflow in mixed precision or a loss that is NaN); check the loss, or "
                    "calibrate in float32."
                )
            out[g.gid] = s
        self.snap.scores = out
        self.snap.score_source = repr(self)
        self.ir.mark_scored(self.snapshot_name)
        log.info("%s scored %d groups (%d labels)", self.name, len(out), sum(int(s.numel()) for s in out.values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def require_weights(crit: Criterion, t: torch.Tensor, name: str) -> None:
    if t.device.type == "meta":
        raise CalibrationError(
            f"{crit.name}: parameter {name!r} is on the meta device (no values to score). "
            "Load real weights into the model before scoring."
        )
