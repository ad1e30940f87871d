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

import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .._ir.axes import slot_map
from .._ir.labels import Label, LabelGroup, build_groups
from .._ir.masks import label_masks
from .._ir.ops import BACKWARD_ALIGNED
from .._ir.snapshot import Issue, Snapshot
from .._rewrite.slim import meta_copy as _meta_copy
from .._rewrite.verify import VerifyFailure, size_refused
from .._trace.run import call_modes, flat_tensors, run_call
from ..calls import ExampleCall
from ..errors import PruningIRError
from .options import BuildOptions, PruneOptions
from .prune import prune_snapshot
from .trace import trace_snapshot

log = logging.getLogger(__name__)

_REAL_PROBE_LIMIT = 50_000_000  # parameters
_INDIVIDUAL_LIMIT = 16  # groups probed one by one up to this many


def _to_meta(obj: Any) -> Any:
    return pytree.tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, obj)


def _probe_pair(model: nn.Module, meta_model: nn.Module | None, snap: Snapshot, options: BuildOptions
                ) -> tuple[nn.Module, Snapshot] | None:
    """A model and its snapshot to probe with: ``model`` itself for a meta model, else its meta
    copy ``meta_model`` traced anew (a meta trace is compared with meta runs: backends decompose
    some ops differently), else ``model`` itself when it cannot run on meta (or has no meta copy)
    but is small enough to probe for real."""
    if _on_meta_device(model):
        return model, replace(snap, cache={})
    if meta_model is not None:
        try:
            args, kwargs = _to_meta(snap.example)
            extra = tuple(ExampleCall(_to_meta(a), _to_meta(k), train=_uniform_mode(modes))
                          for a, k, modes in snap.extra)
            meta_options = replace(options, soft_tracing=True, probe=False, extra_calls=extra, auto_calls=False)
            return meta_model, trace_snapshot(meta_model, args, kwargs, meta_options, snap.name)
        except Exception as exc:
            log.debug("meta probe unavailable for %s: %s", type(model).__name__, exc)
    if sum(p.numel() for p in model.parameters()) <= _REAL_PROBE_LIMIT:
        return model, replace(snap, cache={})
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


def _varying_output_shapes(model: nn.Module, snap: Snapshot) -> str | None:
    """Why no pruned model can be checked, when the unpruned one already changes its output
    shapes between runs (random sampling decides them); ``None`` otherwise. Costs two runs,
    and only when the trace recorded a random op."""
    if not snap.graph.outputs or not any(i.kind == "random" for i in snap.issues):
        return None
    expected = [tuple(s) for s in snap.output_shapes]
    for _ in range(2):
        try:
            shapes = [tuple(t.shape) for t in run_call(model, snap.calls()[0])]
        except Exception:  # not this check's business: the probes will say what fails
            return None
        if shapes[: len(expected)] != expected:
            return (f"pruning it cannot be checked: the unpruned {type(model).__name__} itself changes "
                    f"its output shapes from run to run ({shapes} instead of {expected}: random sampling in "
                    "forward)")
    return None


_STEPS = (2, 4, 8, 16, 32)
"""Alignments tried for a group whose one-label probe fails because the model stops running
(a kernel that needs, say, 16-byte strides accepts widths in multiples of 4 floats)."""
_STEP_PROBES = 32  # extra probes spent on alignments per build, at most


@dataclass(frozen=True)
class _Failure:
    """Why a probe failed: ``reason`` (for the report); ``kind``, as
    :class:`~pruning_ir._rewrite.verify.VerifyFailure`'s (``"raised"``, ``"shapes"``, ``"graph"``,
    ``"trace"``) or ``"backward"`` (backward raised) or ``"other"``; ``module`` where it raised;
    ``cause`` the exception the slim model raised."""

    reason: str
    kind: str
    module: str | None = None
    cause: BaseException | None = None

    @classmethod
    def of(cls, exc: VerifyFailure) -> _Failure:
        return cls(exc.summary, exc.kind, exc.module, exc.cause)

    @property
    def kernel(self) -> bool:
        """The slim model raised (forward or backward), not at a view of a Python-held size:
        possibly a kernel's alignment."""
        return self.kind in ("raised", "backward") and not size_refused(self.cause)


def _backward_fails(model: nn.Module, snap: Snapshot) -> _Failure | None:
    """Why the slim ``model`` cannot run backward from its example call's outputs, or ``None``.
    Backward kernels can need more than forward ones (a grouped matmul's gradient transposes its
    operands, so an axis that forward reads contiguously needs 16-byte strides there)."""
    if not any(p.requires_grad for p in model.parameters()):
        return None
    args, kwargs, modes = snap.calls()[0]
    # the call's tensors may be the user's own (probing for real): no gradient reaches them
    args, kwargs = pytree.tree_map_only(torch.Tensor, lambda t: t.detach(), (args, kwargs))
    try:
        # backward inside: leaving call_modes writes the buffers back (a version bump of
        # position ids that the embedding's backward holds)
        with torch.enable_grad(), call_modes(model, modes):
            out = model(*args, **kwargs)
            flat = [t for t in flat_tensors(out) if t.requires_grad and t.is_floating_point()]
            if flat:
                torch.stack([t.sum() for t in flat]).sum().backward()
    except Exception as exc:  # the slim model's backward is what is probed
        return _Failure(f"the slim {type(model).__name__} does not run backward from the example inputs' "
                        f"outputs: {type(exc).__name__}: {exc}", "backward", None, exc)
    finally:
        model.zero_grad(set_to_none=True)
    return None


def _joint_counts(groups: list[LabelGroup]) -> dict[int, int]:
    """Labels each group loses in a joint probe: groups of one size lose different numbers
    (1, 2, 3, ... steps, wrapping at the size), so that Python code coupling two such groups by
    their *count* (``x.reshape(b, c, -1)`` of a conv's output with ``c`` read off its input) is
    not hidden by equal removals."""
    seen: dict[int, int] = {}
    out: dict[int, int] = {}
    for g in groups:
        k = seen.get(g.size, 0)
        seen[g.size] = k + 1
        slots = max(1, (g.size - 1) // g.step)
        out[g.gid] = (k % slots + 1) * g.step
    return out


_TIE_PROBES = 32  # probes spent looking for count-coupled partners per build, at most
_TIE_ROUNDS = 64  # ties made per build, at most


def probe_groups(model: nn.Module, snap: Snapshot, options: BuildOptions
                 ) -> tuple[list[tuple[LabelGroup, str]], dict[int, int]]:
    """Prunable groups of ``snap`` whose removal breaks the model (or cannot be checked),
    with the reason; and the groups (by leaf) that prune when their kept size stays a multiple
    of some step. Groups that break the model alone but run when pruned together with another
    group of their size (by the same count) are tied to it in ``snap``'s space table first."""
    meta_model = None if _on_meta_device(model) else _meta_copy_or_none(model)
    if meta_model is not None and _reusable(snap):
        try:  # the meta copy checked against this trace: when every probe passes, no meta trace is needed
            return _probe(snap, meta_model, _on_meta(snap), options, optimistic=True)
        except _Doubt as exc:
            log.debug("probing %s against its own trace: %s; probing on a meta trace", type(model).__name__, exc)
    pair = _probe_pair(model, meta_model, snap, options)
    if pair is None:
        snap.issues.append(Issue("probe", "", "", "model too large to probe for real and cannot run on meta: "
                                 "groups were not probed"))
        return [], {}
    return _probe(snap, *pair, options, optimistic=False)


class _Doubt(Exception):
    """A probe against the model's own (real-device) trace failed: the failure may be a backend's
    other decomposition of an op, so the probe starts again on a meta trace."""


def _on_meta_device(model: nn.Module) -> bool:
    """Whether ``model`` is itself on meta (then its snapshot is a meta trace)."""
    return all(p.device.type == "meta" for p in model.parameters())


def _reusable(snap: Snapshot) -> bool:
    """Whether a meta copy of the model may be probed against ``snap`` itself: its code reads no
    tensor values (meta tensors have none) and draws nothing at random (checking whether its
    output shapes vary runs the copy, which then goes on to be traced if a probe fails)."""
    return not any(i.kind in ("data_dependent", "random") for i in snap.issues)


def _meta_copy_or_none(model: nn.Module) -> nn.Module | None:
    try:
        return _meta_copy(model)
    except Exception as exc:  # the probe then says what it can do without one
        log.debug("no meta copy of %s: %s", type(model).__name__, exc)
        return None


def _on_meta(snap: Snapshot) -> Snapshot:
    """``snap`` with its calls' tensors on meta (the graph and groups shared: nothing of them
    changes while every probe passes)."""
    extra = [(_to_meta(a), _to_meta(k), modes) for a, k, modes in snap.extra]
    return replace(snap, cache={}, example=_to_meta(snap.example), extra=extra)


def _probe(snap: Snapshot, probe_model: nn.Module, probe_snap: Snapshot, options: BuildOptions, optimistic: bool
           ) -> tuple[list[tuple[LabelGroup, str]], dict[int, int]]:
    """The probes of :func:`probe_groups`, run on ``probe_model`` described by ``probe_snap``;
    ``optimistic``: raise :class:`_Doubt` at the first failure (and repair nothing)."""
    varying = _varying_output_shapes(probe_model, probe_snap)
    if varying is not None:
        if optimistic:
            raise _Doubt(varying)
        return [(g, varying) for g in snap.prunable_groups], {}
    return _Prober(snap, probe_model, probe_snap, options, optimistic).run()


class _Prober:
    """One build's probes: prune labels of groups of ``probe_snap`` from ``probe_model``, find the
    groups that break it (bisecting joint probes), their alignments and count-coupled partners."""

    def __init__(self, snap: Snapshot, probe_model: nn.Module, probe_snap: Snapshot, options: BuildOptions,
                 optimistic: bool) -> None:
        self.snap, self.model, self.probe_snap, self.optimistic = snap, probe_model, probe_snap, optimistic
        # a user's prune pays as many repairs; the probed model is sliced into copies
        self.prune_options = PruneOptions(leaf_modules=options.leaf_modules, repair=not optimistic)
        self.by_signature = {_signature(probe_snap, g): g for g in probe_snap.prunable_groups}
        # backward is probed where it can fail when forward ran: kernels whose backward needs
        # alignments forward does not (grouped matmuls), and modules with run-time patches (their
        # gradients are replayed); only where the unpruned model's own backward runs (RWKV writes
        # in place), checked on a copy (probing for real, probe_model is the user's model)
        self.kernels = any(n.op in BACKWARD_ALIGNED for n in probe_snap.graph.nodes)
        self._baseline: bool | None = None  # whether the unpruned model's backward runs, once asked
        self.bad: list[tuple[LabelGroup, str]] = []
        self.steps: dict[int, int] = {}
        self.step_budget = _STEP_PROBES
        self.tie_budget = _TIE_PROBES

    def backward(self) -> bool:
        if self._baseline is None:
            no_verify = replace(self.prune_options, verify=False)
            unpruned = prune_snapshot(self.probe_snap, self.model, {}, no_verify).model
            self._baseline = _backward_fails(unpruned, self.probe_snap) is None
        return self._baseline

    def attempt(self, groups: list[LabelGroup], counts: dict[int, int] | None = None, count: int = 1
                ) -> _Failure | None:
        """Why pruning the last ``count`` labels of each of ``groups`` (``counts``: per group id)
        breaks the model, or ``None``."""
        labels = []
        for g in groups:
            twin = self.by_signature.get(_signature(self.snap, g))
            if twin is None:
                return _Failure(f"group g{g.gid} has no twin in the meta trace", "other")
            n = counts.get(g.gid, count) if counts is not None else count
            labels += [Label(self.probe_snap.owner, twin.gid, twin.size - 1 - k) for k in range(n)]
        try:
            slim = prune_snapshot(self.probe_snap, self.model, label_masks(self.probe_snap, labels),
                                  self.prune_options)
        except VerifyFailure as exc:
            return _Failure.of(exc)
        except PruningIRError as exc:
            last = exc.__cause__
            if isinstance(last, VerifyFailure):  # repairs ran out: what the last verification found
                return _Failure.of(last)
            return _Failure(str(exc), "other")
        if (self.kernels or slim.patched) and self.backward():
            return _backward_fails(slim.model, self.probe_snap)
        return None

    def fails(self, groups: list[LabelGroup], counts: dict[int, int] | None = None, count: int = 1
              ) -> _Failure | None:
        err = self.attempt(groups, counts, count)
        if err is not None and self.optimistic:
            raise _Doubt(err.reason)
        return err

    def aligned(self, g: LabelGroup, err: _Failure) -> int | None:
        """The smallest step at which ``g`` prunes, when a kernel refused the one-label probe."""
        if not err.kernel:
            return None  # the model ran (a size mismatch found by verification), or a reshape of
            # a Python-held size refused it: not an alignment
        for k in _STEPS:
            if g.size % k or g.size <= k or self.step_budget <= 0:
                continue
            self.step_budget -= 1
            again = self.fails([g], count=k)
            if again is None:
                return k
            if again.kind in ("raised", "backward") and not again.kernel:
                return None  # past the kernel, a Python-held size refuses it: no step helps
        return None

    def partner(self, g: LabelGroup, err: _Failure, candidates: list[LabelGroup]) -> LabelGroup | None:
        """A group of ``g``'s size, with parameters in the module the probe failed in, that lets
        the model run when it loses as many labels as ``g``: Python code sizes one by the other."""
        if err.kind != "raised":
            return None
        where = err.module or ""  # not known: any group of its size
        for h in candidates:
            if self.tie_budget <= 0:
                return None
            if h.gid == g.gid or h.size != g.size or h.step != g.step:
                continue
            if where and not any(m.startswith(where + ".") for m, _ in h.members):
                continue
            self.tie_budget -= 1
            if self.fails([g, h]) is None:
                return h
        return None

    def tie(self, g: LabelGroup, h: LabelGroup, err: _Failure) -> LabelGroup:
        """Unify ``g`` and ``h`` in both snapshots; the merged group of ``snap``."""
        snap, probe_snap = self.snap, self.probe_snap
        tg, th = self.by_signature[_signature(snap, g)], self.by_signature[_signature(snap, h)]
        for sn, a, b in ((snap, g, h), (probe_snap, tg, th)):
            sn.spaces.unify((((a.leaf, 0, a.size),),), (((b.leaf, 0, b.size),),))
            sn.groups = build_groups(sn.graph, sn.spaces)
            sn.cache.clear()
        self.by_signature = {_signature(probe_snap, x): x for x in probe_snap.prunable_groups}
        snap.issues.append(Issue("probe", err.module or "", f"{g.describe()} + {h.describe()}",
                                 "these channels are pruned together (the same labels): Python code sizes one by "
                                 f"the other's count, pruning one alone breaks the model ({err.reason})"))
        root = snap.spaces.find(g.leaf)
        return next(x for x in snap.groups if x.leaf == root)

    def run(self) -> tuple[list[tuple[LabelGroup, str]], dict[int, int]]:
        snap = self.snap
        groups = list(snap.prunable_groups)
        counts = _joint_counts(groups)
        # few groups: probe each alone (a joint probe can pass by coincidence, e.g. a Python
        # ``c // 2`` that happens to match); many: probe jointly, each group of a size losing a
        # different count (see _joint_counts), and bisect failures
        stack = [[g] for g in groups] if len(groups) <= _INDIVIDUAL_LIMIT else [groups]
        ties = 0
        while stack:
            groups = stack.pop()
            if not groups:
                continue
            err = self.fails(groups, counts if len(groups) > 1 else None)
            if err is None:
                continue
            if len(groups) > 1:
                half = len(groups) // 2
                stack += [groups[:half], groups[half:]]
                continue
            g = groups[0]
            step = self.aligned(g, err)
            if step is not None:
                self.steps[g.leaf] = step
                continue
            broken = {snap.spaces.find(x.leaf) for x, _ in self.bad}
            candidates = [x for x in snap.prunable_groups if snap.spaces.find(x.leaf) not in broken]
            h = self.partner(g, err, candidates) if ties < _TIE_ROUNDS else None
            if h is None:
                self.bad.append((g, f"pruning it breaks the model's Python code ({err.reason})"))
                continue
            ties += 1
            merged = self.tie(g, h, err)
            # group objects on the stack are stale now: re-read them by leaf
            live = {x.leaf: x for x in snap.prunable_groups}
            find = snap.spaces.find
            stack = [[live[find(x.leaf)] for x in part if find(x.leaf) in live and find(x.leaf) != merged.leaf]
                     for part in stack]
            stack.append([merged])  # the merged group may break the model elsewhere
            counts = _joint_counts(list(snap.prunable_groups))
        return self.bad, self.steps


def apply_probe(model: nn.Module, snap: Snapshot, options: BuildOptions) -> None:
    """Make the groups of ``snap`` that fail their probe unprunable, with the reason, and report
    them; give the groups that prune only in multiples their ``step``. (The probe is part of
    building ``snap``: nobody holds it yet.)"""
    bad, steps = probe_groups(model, snap, options)
    if not bad and not steps:
        return
    find = snap.spaces.find
    for leaf, step in steps.items():
        snap.spaces.step[find(leaf)] = step
    for g, reason in bad:
        snap.spaces.rigid[find(g.leaf)] = reason
    snap.groups = build_groups(snap.graph, snap.spaces)
    gid = {g.leaf: g.gid for g in snap.groups}
    for g, reason in bad:
        snap.issues.append(Issue("probe", "", f"g{gid.get(find(g.leaf), g.gid)}", reason))
    snap.cache.clear()
