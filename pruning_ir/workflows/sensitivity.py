"""Sensitivity analysis: the score of ``eval_fn`` with each label group pruned at each ratio.

One *task* is a (group, number of labels removed) pair. The labels removed are the group's
lowest-ranked ones (by the IR's scores; L1 norm of the weights when no criterion has run), so the
same ranking serves the analysis and the pruning that reads it. A task is evaluated on a working
copy of the model with the removed labels' parameter entries set to zero (what the slim model
computes, up to the groups whose notes say masking and pruning differ: for those, the slim model
itself, built without verification); the copy is restored after each task.

Results are kept in a JSON file (:class:`SensitivityStore`), written atomically after every task,
so an analysis stopped at any point (an exception, Ctrl-C, a killed process) continues where it
stopped; a finished file is read back, never recomputed. Under ``torch.distributed`` each rank
evaluates every ``world``-th task into a file of its own; at the end the ranks' results are
gathered and rank 0 writes the final file, which then equals a one-process run's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._distributed import barrier, gather_objects, rank_world, require_same
from .._progress import progress_bar
from ..criteria.joint import MaskedEvaluator, Task, counts
from ..errors import CalibrationError, InvalidInputError
from ..ir import PruningIR

log = logging.getLogger(__name__)

SENS_FORMAT = 1


def fingerprint(ir: PruningIR, ratios: Sequence[Any], order: dict[int, list[int]]) -> str:
    """A hash of what the analysis depends on: the model's parameters (names, shapes, values),
    the IR's prunable groups, the ratios (or other settings) and the ranking."""
    h = hashlib.sha256()
    for name, p in sorted(ir.model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        if p.device.type != "meta":
            h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    groups = [(g.gid, g.size, sorted(g.members)) for g in ir.prunable_label_groups()]
    h.update(json.dumps([groups, list(ratios), order], default=str).encode())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class SensitivityStore:
    """The analysis file ``<dir>/<name>.sens`` and, while it runs, one part file per rank."""

    def __init__(self, directory: Path, name: str, key: str) -> None:
        self.path = directory / f"{name}.sens"
        self.directory, self.name, self.key = directory, name, key

    def part(self, rank: int) -> Path:
        return self.directory / f"{self.name}.sens.part{rank}"

    def finished(self) -> dict[str, Any] | None:
        """The finished analysis with this key, if the file holds one."""
        if not self.path.is_file():
            return None
        data = json.loads(self.path.read_text())
        if data.get("key") != self.key or not data.get("complete"):
            return None
        return data

    def done(self) -> dict[str, float]:
        """Every task result found (``"gid:removed"`` -> score), from all ranks' part files."""
        out: dict[str, float] = {}
        for f in sorted(self.directory.glob(f"{self.name}.sens.part*")):
            with contextlib.suppress(ValueError, OSError):  # a part being replaced right now
                data = json.loads(f.read_text())
                if data.get("key") == self.key:
                    out.update(data["results"])
        return out


def analyse(ir: PruningIR, eval_fn: Callable[..., Any], args: Sequence[Any], ratios: Sequence[float],
            gids: Sequence[int], store: SensitivityStore, order: dict[int, list[int]], progress: bool
            ) -> dict[str, Any]:
    """Run (or resume, or read back) the analysis; returns the finished file's data."""
    finished = store.finished()
    if finished is not None:  # a read-back: no collective call (one rank may read alone)
        return finished
    rank, world = rank_world()
    require_same(store.key, world, "the analysis' fingerprints (model weights, prunable groups, ratios, ranking)")
    groups = {g.gid: g for g in ir.prunable_label_groups()}
    tasks = [Task(gid, n) for gid in gids for n in counts(groups[gid], ratios)]
    results = store.done()
    mine = [t for i, t in enumerate(tasks) if i % world == rank]
    todo = [t for t in mine if f"{t.gid}:{t.removed}" not in results]
    evaluator = MaskedEvaluator(ir, order)
    if rank == 0 and "baseline" not in results:  # the unpruned score: one rank measures it
        results["baseline"] = _score(eval_fn(evaluator.model, *args))
    own = {k: v for k, v in results.items()}
    part = store.part(rank)
    _atomic_write(part, {"key": store.key, "results": own})
    bar = progress_bar(progress, "sensitivity", total=len(todo))
    try:
        for t in todo:
            with evaluator.pruned(t) as model:
                own[f"{t.gid}:{t.removed}"] = _score(eval_fn(model, *args))
            _atomic_write(part, {"key": store.key, "results": own})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    merged = {k: v for part in gather_objects(own, world) for k, v in part.items()}
    data = {"format": SENS_FORMAT, "key": store.key, "complete": True, "baseline": merged.pop("baseline"),
            "ratios": list(ratios), "order": {str(k): v for k, v in order.items() if k in gids},
            "groups": {str(gid): {"size": groups[gid].size, "describe": groups[gid].describe(),
                                  "scores": {str(n): merged[f"{gid}:{n}"] for n in counts(groups[gid], ratios)}}
                       for gid in gids}}
    if rank == 0:
        _atomic_write(store.path, data)
        for f in store.directory.glob(f"{store.name}.sens.part*"):
            f.unlink(missing_ok=True)
    barrier(world)
    return data


def _score(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"eval_fn must return a number (higher = better), got {type(value).__name__}.") from None
    if out != out:
        raise CalibrationError("eval_fn returned NaN.")
    return out


def check_ratios(ratios: Sequence[float]) -> list[float]:
    out = sorted({float(r) for r in ratios})
    if not out or any(not 0 < r < 1 for r in out):
        raise InvalidInputError(f"ratios={list(ratios)!r}: give fractions in (0, 1), e.g. (0.1, 0.2, ..., 0.9).")
    return out
