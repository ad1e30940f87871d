"""Probe pruning at build time: find groups whose removal breaks the model's Python code.

Some couplings live in Python, not in ops: a size read from one tensor's shape and used to
reshape another, an assertion on weight shapes. The IR cannot see them, so after label
inference every prunable group is probed: one label is removed from each group, the slim
model is built and run; when that fails, the groups are bisected to find the culprits,
which become unprunable with the error as the reason, unless the model stopped running and
removing a multiple of labels (2, 4, ..., 32) works: then the group prunes in that multiple
(``LabelGroup.step``, a kernel's alignment). Probing runs on a ``meta`` copy of
the model (no weight memory, no arithmetic); a model that cannot run on ``meta`` is probed
for real when it is small, and otherwise not probed (said in the report). A model whose
output shapes are drawn at random (a stochastic duration predictor: VITS) fails every probe
by chance; that is checked first (two runs of the unpruned model, only when the trace saw a
random op), and then every group is unprunable at once instead of after bisecting them all.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._ir.axes import slot_map
from ._ir.infer import Issue
from ._ir.labels import Label, LabelGroup, build_groups
from ._ir.snapshot import Snapshot
from .calls import ExampleCall
from .errors import PruningIRError

if TYPE_CHECKING:
    from .ir import PruningIR

log = logging.getLogger(__name__)

_REAL_PROBE_LIMIT = 50_000_000  # parameters
_INDIVIDUAL_LIMIT = 16  # groups probed one by one up to this many


def _meta_copy(model: nn.Module) -> nn.Module:
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in memo:
            m = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
    return copy.deepcopy(model, memo)


def _to_meta(obj: Any) -> Any:
    return pytree.tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, obj)


def _probe_ir(ir: PruningIR, name: str) -> PruningIR | None:
    """An IR to probe with: ``ir`` itself for a meta model, else one traced on a meta copy (a meta
    trace is compared with meta runs: backends decompose some ops differently), else ``ir``
    itself when the model cannot run on meta but is small enough to probe for real."""
    from .ir import PruningIR

    model = ir.model
    snap = ir.snapshot(name)
    if all(p.device.type == "meta" for p in model.parameters()):
        return PruningIR._from_snapshot(model, replace(snap, cache={}), ir, name)
    try:
        meta_model = _meta_copy(model)
        args, kwargs = _to_meta(snap.example)
        extra = [ExampleCall(_to_meta(a), _to_meta(k), train=_uniform_mode(modes)) for a, k, modes in snap.extra]
        return PruningIR(meta_model, example_inputs=args, example_kwargs=kwargs, leaf_modules=ir.leaf_modules,
                         soft_tracing=True, keep_io_shapes=ir.keep_io_shapes, probe=False, name=name,
                         extra_calls=extra, auto_calls=False)
    except Exception as exc:
        log.debug("meta probe unavailable for %s: %s", type(model).__name__, exc)
    if sum(p.numel() for p in model.parameters()) <= _REAL_PROBE_LIMIT:
        return PruningIR._from_snapshot(model, replace(snap, cache={}), ir, name)
    return None


def _uniform_mode(modes: dict[str, bool]) -> bool | None:
    """``True``/``False`` when every module has that training flag, else ``None`` (as they are)."""
    flags = set(modes.values())
    return flags.pop() if len(flags) == 1 else None


def _signature(snap: Snapshot, g: LabelGroup) -> tuple[object, ...]:
    """Identify a group across two traces of one model: its size, the parameter axes it
    slices, and which entries of its first such axis each label owns (so that the two
    factors of a product over the same axes are told apart)."""
    name, axis = min(g.members)
    layout = snap.graph.values[snap.graph.params[name]].axes[axis]
    return (g.size, tuple(sorted(g.members)), tuple(slot_map(snap.spaces, layout, g.leaf).tolist()))


def _varying_output_shapes(probe_ir: PruningIR, name: str) -> str | None:
    """Why no pruned model can be checked, when the unpruned one already changes its output
    shapes between runs (random sampling decides them); ``None`` otherwise. Costs two runs,
    and only when the trace recorded a random op."""
    from ._rewrite.verify import run_model

    snap = probe_ir.snapshot(name)
    if not snap.graph.outputs or not any(i.kind == "random" for i in snap.issues):
        return None
    expected = [tuple(s) for s in snap.output_shapes]
    for _ in range(2):
        try:
            shapes = [tuple(t.shape) for t in run_model(probe_ir.model, snap)]
        except Exception:  # not this check's business: the probes will say what fails
            return None
        if shapes[: len(expected)] != expected:
            return (f"pruning it cannot be checked: the unpruned {type(probe_ir.model).__name__} itself changes "
                    f"its output shapes from run to run ({shapes} instead of {expected}: random sampling in "
                    "forward)")
    return None


_STEPS = (2, 4, 8, 16, 32)
"""Alignments tried for a group whose one-label probe fails because the model stops running
(a kernel that needs, say, 16-byte strides accepts widths in multiples of 4 floats)."""
_STEP_PROBES = 32  # extra probes spent on alignments per build, at most


def probe_groups(ir: PruningIR, name: str) -> tuple[list[tuple[LabelGroup, str]], dict[int, int]]:
    """Prunable groups of snapshot ``name`` whose removal breaks the model (or cannot be checked),
    with the reason; and the groups (by leaf) that prune when their kept size stays a multiple
    of some step."""
    snap = ir.snapshot(name)
    probe_ir = _probe_ir(ir, name)
    if probe_ir is None:
        snap.issues.append(Issue("probe", "", "", "model too large to probe for real and cannot run on meta: "
                                 "groups were not probed"))
        return [], {}
    probe_snap = probe_ir.snapshot(name)
    probe_snap.cache["warned_untraced"] = True  # the user hears it when they prune, not from the probe
    varying = _varying_output_shapes(probe_ir, name)
    if varying is not None:
        return [(g, varying) for g in snap.prunable_groups], {}
    by_signature = {_signature(probe_snap, g): g for g in probe_snap.prunable_groups}

    def fails(groups: list[LabelGroup], count: int = 1) -> str | None:
        labels = []
        for g in groups:
            twin = by_signature.get(_signature(snap, g))
            if twin is None:
                return f"group g{g.gid} has no twin in the meta trace"
            labels += [Label(probe_snap.owner, twin.gid, twin.size - 1 - k) for k in range(count)]
        try:
            probe_ir.prune(name, labels=labels, verify=True)
        except PruningIRError as exc:
            return str(exc).split(". Some Python code")[0]
        return None

    bad: list[tuple[LabelGroup, str]] = []
    steps: dict[int, int] = {}
    budget = [_STEP_PROBES]

    def aligned(g: LabelGroup, err: str) -> int | None:
        """The smallest step at which ``g`` prunes, when a kernel refused the one-label probe."""
        if "does not run" not in err or "is invalid for input of size" in err:
            return None  # the model ran (a size mismatch found by verification), or a reshape of
            # a Python-held size refused it: not an alignment
        for k in _STEPS:
            if g.size % k or g.size <= k or budget[0] <= 0:
                continue
            budget[0] -= 1
            if fails([g], k) is None:
                return k
        return None

    groups = list(snap.prunable_groups)
    # few groups: probe each alone (a joint probe can pass by coincidence, e.g. a Python
    # ``c // 2`` that happens to match); many: probe jointly and bisect failures
    stack = [[g] for g in groups] if len(groups) <= _INDIVIDUAL_LIMIT else [groups]
    while stack:
        groups = stack.pop()
        if not groups:
            continue
        err = fails(groups)
        if err is None:
            continue
        if len(groups) == 1:
            g = groups[0]
            step = aligned(g, err)
            if step is None:
                bad.append((g, f"pruning it breaks the model's Python code ({err})"))
            else:
                steps[g.leaf] = step
            continue
        half = len(groups) // 2
        stack += [groups[:half], groups[half:]]
    return bad, steps


def apply_probe(ir: PruningIR, name: str) -> None:
    """Make the groups that fail their probe unprunable, with the reason, and report them; give
    the groups that prune only in multiples their ``step``."""
    bad, steps = probe_groups(ir, name)
    if not bad and not steps:
        return
    snap = ir.snapshot(name)
    for leaf, step in steps.items():
        snap.spaces.step[leaf] = step
    for g, reason in bad:
        snap.spaces.rigid[g.leaf] = reason
        snap.issues.append(Issue("probe", "", f"g{g.gid}", reason))
    snap.groups = build_groups(snap.graph, snap.spaces)
    snap.cache.clear()
