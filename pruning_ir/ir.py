"""``PruningIR``: the object users hold. Trace once, select many times, prune."""

from __future__ import annotations

import inspect
import itertools
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._infer.infer import infer
from ._infer.modules import apply_module_constraints
from ._infer.ties import tie_shared_sizes
from ._ir.axes import emptied_axis
from ._ir.graph import Graph, untraced_parameters
from ._ir.labels import Label, LabelGroup, build_groups
from ._ir.lint import lint_snapshot
from ._ir.masks import removed_masks
from ._ir.remap import remap_snapshot
from ._ir.snapshot import Snapshot
from ._rewrite.attributes import update_attributes
from ._rewrite.patch import ModuleEdits, install, module_edits, patch_literals, patch_of
from ._rewrite.slim import slim_model
from ._rewrite.verify import VerifyFailure, verify_forward, verify_graph
from ._trace.conditions import batch_size
from ._trace.recorder import record
from .calls import ExampleCall, as_example_call
from .errors import InvalidInputError, LabelError, RewriteError, SnapshotVersionError

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
"""Version of the pickled IR layout; bumped whenever it changes incompatibly."""

DEFAULT = "main"

_MAX_REPAIRS = 64
"""Verification rounds of one prune (each restores a guessed attribute or patches a module);
every round acts on a module not acted on before, so this bounds a loop that cannot cycle."""


def _as_call(example_inputs: Any, example_kwargs: dict[str, Any] | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if example_inputs is None:
        args: tuple[Any, ...] = ()
    elif isinstance(example_inputs, torch.Tensor):
        args = (example_inputs,)
    elif isinstance(example_inputs, dict):
        return (), {**example_inputs, **(example_kwargs or {})}
    elif isinstance(example_inputs, (list, tuple)):
        args = tuple(example_inputs)
    else:
        raise InvalidInputError(
            f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
            f"inputs, not {type(example_inputs).__name__}. Example: PruningIR(model, example_inputs=(x,))."
        )
    return args, dict(example_kwargs or {})


def _traceable(model: nn.Module) -> nn.Module:
    """``model`` itself, or what ``torch.compile`` wrapped (said in a warning); a clear error for
    modules the engine cannot copy (a ``torch.nn.utils.prune`` mask or old-style ``weight_norm``
    whose computed weight holds an autograd graph) or trace (compiled submodules)."""
    compiled = getattr(torch, "_dynamo", None)
    optimized = getattr(getattr(compiled, "eval_frame", None), "OptimizedModule", ())
    if optimized and isinstance(model, optimized):
        warnings.warn(f"PruningIR: {type(model).__name__} is a torch.compile wrapper; pruning the module it "
                      "compiled (model._orig_mod). Compile the slim model again after pruning.", stacklevel=3)
        model = model._orig_mod
    from torch.nn.utils import prune as nn_prune
    from torch.nn.utils.weight_norm import WeightNorm

    for path, m in model.named_modules():
        where = path or "<root>"
        if optimized and isinstance(m, optimized):
            raise InvalidInputError(
                f"module '{where}' is a torch.compile wrapper inside {type(model).__name__}; build the "
                f"PruningIR on the uncompiled model (replace it by its ._orig_mod) and compile after pruning.")
        for hook in m._forward_pre_hooks.values():
            # these hooks store the weight as a plain attribute computed on every call; after a
            # call with gradients it is a non-leaf tensor, which cannot be deep-copied
            attr = getattr(hook, "_tensor_name", None) or getattr(hook, "name", None)
            if not isinstance(hook, (nn_prune.BasePruningMethod, WeightNorm)) or not isinstance(attr, str):
                continue
            value = getattr(m, attr, None)
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                what = ("a torch.nn.utils.prune mask" if isinstance(hook, nn_prune.BasePruningMethod)
                        else "the old torch.nn.utils.weight_norm")
                raise InvalidInputError(
                    f"module '{where}' carries {what} on {attr!r}, whose computed weight holds an autograd graph "
                    "(the last call ran with gradients) and cannot be copied. Run the model once under "
                    "torch.no_grad() before building the PruningIR, or make it permanent first "
                    f"(torch.nn.utils.prune.remove(module, {attr!r}) / torch.nn.utils.remove_weight_norm(module); "
                    "torch.nn.utils.parametrizations.weight_norm is supported as it is).")
    return model


def padded_mask_call(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, bool]] | None:
    """The example call with a padded ``attention_mask`` (see ``auto_calls``), or ``None`` when
    ``forward`` takes no such argument, the call gives one, or there are no token ids."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None
    if "attention_mask" not in params or "attention_mask" in kwargs or params.index("attention_mask") < len(args):
        return None
    ids = next((t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() == 2
                and not t.is_floating_point() and not t.is_complex() and t.shape[1] > 1), None)
    if ids is None:
        return None
    mask = torch.ones(ids.shape, dtype=torch.long, device=ids.device)
    mask[0, 0] = 0
    return args, {**kwargs, "attention_mask": mask}, {p: m.training for p, m in model.named_modules()}


_MAX_COMBINATIONS = 16
_MAX_TRIES = 48


@dataclass
class _Choices:
    """Attribute values verification may try for one module of a slim model.

    Two kinds of attributes: those that facts of equal old value left *ambiguous* (kept at their
    old value; options: the old value and every new one those facts took, see
    :func:`~pruning_ir._rewrite.attributes.update_attributes`) and those *guessed*, set by
    matching values (options: the new value, then the old one: the guess may be wrong while the
    module's other guesses are right, ``head_dim`` matched a pruned ``v`` while
    ``num_key_value_groups`` was right). The combination in place when verification first
    failed is left out; the others are tried in three rounds: other ambiguous values with every
    guess kept; guesses put back (fewest first) with the ambiguous values as they were; both.
    Ambiguous values go fewest distinct values first (attributes of equal old value mostly keep
    equal values: a one-head attention's ``hidden_size``, ``all_head_size`` and
    ``attention_head_size``), then fewest changes; at most :data:`_MAX_COMBINATIONS` of them,
    and ``limit`` (:data:`_MAX_TRIES` for a user's prune) combinations in all.
    """

    names: list[str]
    olds: list[int]  # before pruning
    start: tuple[int, ...]  # in place at the first failure
    guessed: int  # the last ``guessed`` names are guesses
    every: list[tuple[int, ...]]
    todo: list[tuple[int, ...]]
    narrow: Any = None  # the module's patch edits before a put-back guess widened them

    @classmethod
    def of(cls, ambiguous: list[tuple[str, int, list[int]]], guessed: list[tuple[str, Any]],
           module: nn.Module, limit: int = _MAX_TRIES) -> _Choices:
        names = [n for n, _, _ in ambiguous] + [n for n, _ in guessed]
        olds = [o for _, o, _ in ambiguous] + [o for _, o in guessed]
        options = [[o, *cands] for _, o, cands in ambiguous] + [[getattr(module, n), o] for n, o in guessed]
        start = tuple(opt[0] for opt in options)
        k = len(ambiguous)
        amb = list(itertools.islice(itertools.product(*options[:k]), 4096))
        # attributes of equal old value mostly keep equal values: fewest distinct values first
        amb.sort(key=lambda c: (len(set(c)), sum(v != o for v, o in zip(c, start[:k], strict=True))))
        amb = amb[:_MAX_COMBINATIONS]
        restores = list(itertools.islice(itertools.product(*options[k:]), 4096))
        restores.sort(key=lambda c: sum(v != s for v, s in zip(c, start[k:], strict=True)))
        every = [a + r for a in amb for r in restores[:1]]  # no guess put back
        every += [start[:k] + r for r in restores[1:]]  # guesses put back, ambiguous values as they were
        every += [a + r for r in restores[1:] for a in amb if a != start[:k]]  # both
        every = [c for c in every if c != start][:limit]
        return cls(names, olds, start, len(guessed), every, list(every))

    def rearm(self) -> None:
        """Try every combination again: the module got a patch since, so combinations that
        failed before may be right now."""
        self.todo = list(self.every)

    def try_next(self, module: nn.Module, *, guesses: bool) -> tuple[str, bool] | None:
        """Set the next combination (``guesses=False``: only those keeping every guess); returns
        what was set, for the log, and whether a guess was put back; or puts the starting values
        back and returns ``None`` when none is left."""
        k = len(self.names) - self.guessed
        while self.todo:
            combo = self.todo.pop(0)
            restored = combo[k:] != self.start[k:]
            if restored and not guesses:
                continue
            for name, value in zip(self.names, combo, strict=True):
                setattr(module, name, value)
            return ", ".join(f"{n}={v}" for n, v in zip(self.names, combo, strict=True)), restored
        for name, value in zip(self.names, self.start, strict=True):
            setattr(module, name, value)
        return None

    def fit_patch(self, patch: Any, restored: bool) -> None:
        """While a guess is put back the module's patch rewrites every changing size (those
        computed from the guess adapted by themselves while the patch watched, and are stale
        now); once every guess is in place again, only those it found literal under them (the
        others would also rewrite sizes that merely equal an old value, at another batch size)."""
        if restored:
            if self.narrow is None:
                self.narrow = patch.edits
            patch.widen()
        elif self.narrow is not None:
            patch.edits, self.narrow = self.narrow, None

    def log(self, path: str, module: nn.Module, changes: list[str]) -> None:
        """Bring ``changes`` (the rewrite log) in line with the values kept."""
        k = len(self.names) - self.guessed
        label = path or "<root>"
        for i, (name, old) in enumerate(zip(self.names, self.olds, strict=True)):
            now = getattr(module, name, old)
            if i >= k:
                if now != self.start[i]:  # a guess put back: it no longer happened
                    line = f"{label}.{name}: {_shown(old)} -> {_shown(self.start[i])}"  # as update_generic wrote it
                    if line in changes:
                        changes.remove(line)
                    if now != old:
                        changes.append(f"{label}.{name}: {old} -> {now} (the value verification accepted)")
            elif now != old:
                changes.append(f"{label}.{name}: {old} -> {now} (ambiguous; the value verification accepted)")


def _shown(value: Any) -> Any:
    """An attribute value as the rewrite log shows it (lists for list and tuple sizes)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _refuse_empty_axes(snap: Snapshot, removed: dict[int, torch.Tensor]) -> None:
    """Refuse a selection that keeps labels in every group but empties a parameter axis made of
    parts of groups (a concatenation of slices: ``cat(h[:, 2:6], h[:, 9:12])`` loses all its
    channels when the labels behind both slices go)."""
    hit = emptied_axis(snap, removed)
    if hit is not None:
        pname, d, _ = hit
        raise LabelError(
            f"the labels keep some channels of every group but none of {pname}'s axis {d}, which is made of "
            "parts of several groups (slices or a concatenation); keep at least one of its channels "
            "(e.g. remove fewer labels of the groups behind it; the selectors do).")


def _label_list(labels: Any, where: str) -> Sequence[Label]:
    """``labels`` as a list or tuple (they are read twice), or a clear error for a ratio or a selector."""
    if isinstance(labels, (list, tuple)):
        return labels
    if isinstance(labels, (str, bytes, torch.Tensor)) or not hasattr(labels, "__iter__"):
        raise InvalidInputError(
            f"ir.{where}(labels={labels!r}): labels is a list of Labels, not a {type(labels).__name__}. "
            "Get them from a selector: ir.prune(labels=UniformLabelSelector(0.3).select(ir))."
        )
    return list(labels)


def _same_scores(a: tuple[int, list[tuple[int, torch.Tensor, int]]],
                 b: tuple[int, list[tuple[int, torch.Tensor, int]]]) -> bool:
    """Two ``(owner, [(group id, score tensor, its version)])`` keys name the same tensors, unchanged."""
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(
        ga == gb and sa is sb and va == vb for (ga, sa, va), (gb, sb, vb) in zip(a[1], b[1]))


class PruningIR:
    """Graph IR of a model with its coupled channel labels.

    Args:
        model: the module to prune. It is never modified unless ``prune(..., inplace=True)``.
        example_inputs: what ``model`` is called with while tracing: a tensor, a tuple of
            positional inputs, or a dict of keyword inputs. Tensors on the ``meta`` device
            (with a ``meta`` model) trace without allocating memory.
        example_kwargs: extra keyword inputs (e.g. ``{"use_cache": False}``).
        leaf_modules: module types or instances recorded as one opaque node each; their
            channels are unprunable unless a leaf handler is registered for the class.
        soft_tracing: with ``True`` an op without a channel rule makes the channels it
            touches unprunable (listed in :meth:`report`); with ``False`` it raises
            :class:`~pruning_ir.errors.TraceError` naming the module and the op.
        keep_io_shapes: keep the model's inputs and outputs at their shapes (default).
        probe: after label inference, prune one label of every group on a ``meta`` copy and
            run it; groups whose removal breaks the model's Python code (a size read from one
            tensor and used on another) become unprunable, with the error as the reason.
        name: name of the first snapshot.
        extra_calls: more calls to trace (:class:`~pruning_ir.ExampleCall`, or a tensor / tuple /
            dict as ``example_inputs``): paths the example call does not take (another branch, a
            padded mask, training mode). The IR covers the union of their couplings and every
            prune is verified on each; costs and criteria read the example call.
        auto_calls: trace calls that users make next and the example call may not show:
            (1) when some parameters are not used by any given call and the model is in eval mode,
            the example call once more with every module in training mode, kept if it uses
            parameters the others did not (HF wav2vec2's ``masked_spec_embed``); (2) when
            ``forward`` takes an ``attention_mask`` the example call does not give, and the call
            has a ``(batch, tokens)`` integer input, the call with a padded mask (the first
            example's first token masked): HF attention takes another path with a mask (LLaMA
            under SDPA reads ``num_key_value_groups`` only there). Parameters no call uses are
            listed by :meth:`report`, and ``prune`` warns about them: their channels cannot be
            checked.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR, UniformLabelSelector
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
        >>> [g.size for g in ir.prunable_label_groups()]
        [16]
        >>> slim = ir.prune(labels=UniformLabelSelector(0.25).select(ir)).model
        >>> slim[0].out_features, slim[2].in_features
        (12, 12)
    """

    _repair_tries: int = _MAX_TRIES  # attribute combinations prune's repairs try per module
    _max_repairs: int = _MAX_REPAIRS  # repairs per prune (both per IR, for a caller that wants fewer)

    def __init__(
        self,
        model: nn.Module,
        *,
        example_inputs: Any = None,
        example_kwargs: dict[str, Any] | None = None,
        leaf_modules: Sequence[type[nn.Module] | nn.Module] | None = None,
        soft_tracing: bool = True,
        keep_io_shapes: bool = True,
        probe: bool = True,
        name: str = DEFAULT,
        extra_calls: Sequence[ExampleCall | Any] = (),
        auto_calls: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(
                f"PruningIR needs a torch.nn.Module, got {type(model).__name__}. "
                "Wrap a function in an nn.Module whose forward calls it."
            )
        if example_inputs is None and not example_kwargs:
            raise InvalidInputError(
                f"PruningIR({type(model).__name__}) needs example_inputs to trace the model: "
                "PruningIR(model, example_inputs=(x,)) where model(x) runs."
            )
        model = _traceable(model)
        self._model = model
        self.leaf_modules = list(leaf_modules or [])
        self.soft_tracing = soft_tracing
        self.keep_io_shapes = keep_io_shapes
        self.probe = probe
        self.extra_calls = [as_example_call(c) for c in extra_calls]
        self.auto_calls = auto_calls
        self._snapshots: dict[str, Snapshot | Callable[[], Snapshot]] = {}
        self.rewrite_log: list[str] = []
        self.create_snapshot(name, example_inputs=example_inputs, example_kwargs=example_kwargs)

    # ------------------------------------------------------------------ building
    def create_snapshot(self, name: str = DEFAULT, *, example_inputs: Any = None,
                        example_kwargs: dict[str, Any] | None = None) -> Snapshot:
        """Trace the model on the example inputs and infer its labels as snapshot ``name``."""
        args, kwargs = _as_call(example_inputs, example_kwargs)
        if batch_size(args, kwargs) == 0:
            raise InvalidInputError(
                f"PruningIR({type(self._model).__name__}): the example inputs hold no example (batch size 0), "
                "so no op sees a channel's values and the trace says nothing about them. Give at least one "
                "example, e.g. example_inputs=(torch.randn(1, ...),).")
        t0 = time.perf_counter()
        extra = [(c.args, dict(c.kwargs), c.modes(self._model)) for c in getattr(self, "extra_calls", [])]
        auto = getattr(self, "auto_calls", True)
        padded = padded_mask_call(self._model, args, kwargs) if auto else None
        graph = None
        if padded is not None:
            try:  # one trace with the padded call; without it only if the model refuses such a mask
                graph = record(self._model, args, kwargs, self.leaf_modules, extra=[*extra, padded])
                extra = [*extra, padded]
            except Exception as exc:
                log.info("%s: no padded-mask call (%s: %s)", type(self._model).__name__, type(exc).__name__, exc)
        if graph is None:
            graph = record(self._model, args, kwargs, self.leaf_modules, extra=list(extra))
        if auto and untraced_parameters(self._model, graph):
            graph, extra = self._with_train_call(graph, args, kwargs, extra)
        t1 = time.perf_counter()
        res = infer(graph, soft_tracing=self.soft_tracing, keep_io=self.keep_io_shapes)
        apply_module_constraints(self._model, graph, res)
        tie_shared_sizes(self._model, graph, res)
        groups = build_groups(graph, res.spaces)
        t2 = time.perf_counter()
        out_shapes = [graph.values[v].shape for v in graph.outputs]
        modes = {path: m.training for path, m in self._model.named_modules()}
        snap = Snapshot(name, graph, res.spaces, groups, res.issues, (args, kwargs), out_shapes, modes=modes,
                        extra=extra)
        self._snapshots[name] = snap
        if self.probe:
            from ._probe import apply_probe

            apply_probe(self, name)
        log.info("traced %s: %d nodes in %.3fs, labels inferred in %.3fs", type(self._model).__name__,
                 len(graph.nodes), t1 - t0, t2 - t1)
        return snap

    def _with_train_call(self, graph: Graph, args: tuple[Any, ...], kwargs: dict[str, Any],
                         extra: list[tuple[tuple[Any, ...], dict[str, Any], dict[str, bool]]]
                         ) -> tuple[Graph, list[tuple[tuple[Any, ...], dict[str, Any], dict[str, bool]]]]:
        """Trace again with the example call in training mode appended; keep it only when it uses
        parameters that no call used before (a path only training takes)."""
        modules = list(self._model.named_modules())
        if all(m.training for _, m in modules):
            return graph, extra
        missing = untraced_parameters(self._model, graph)
        train = (args, kwargs, {p: True for p, _ in modules})
        try:
            again = record(self._model, args, kwargs, self.leaf_modules, extra=[*extra, train])
        except Exception as exc:  # training mode does not run on these inputs: keep what we have
            log.info("%s: no training-mode trace (%s: %s)", type(self._model).__name__, type(exc).__name__, exc)
            return graph, extra
        if len(untraced_parameters(self._model, again)) < len(missing):
            log.info("%s: parameters used only in training mode (%s) are traced by a training-mode call",
                     type(self._model).__name__, sorted(set(missing) - set(untraced_parameters(self._model, again))))
            return again, [*extra, train]
        return graph, extra

    @classmethod
    def _from_snapshot(cls, model: nn.Module, snap: Snapshot | Callable[[], Snapshot], like: PruningIR,
                       name: str = DEFAULT) -> PruningIR:
        new = cls.__new__(cls)
        new._model = model
        new.leaf_modules = list(like.leaf_modules)
        new.soft_tracing = like.soft_tracing
        new.keep_io_shapes = like.keep_io_shapes
        new.probe = like.probe
        new.extra_calls = list(getattr(like, "extra_calls", []))
        new.auto_calls = getattr(like, "auto_calls", True)
        new._snapshots = {name: snap}
        new.rewrite_log = []
        return new

    # ------------------------------------------------------------------ access
    @property
    def model(self) -> nn.Module:
        """The model this IR describes (after ``prune``: the slim model)."""
        return self._model

    def snapshot(self, name: str = DEFAULT) -> Snapshot:
        try:
            snap = self._snapshots[name]
        except KeyError:
            raise InvalidInputError(
                f"no snapshot named {name!r}; this IR has {sorted(self._snapshots)}. "
                "Create one with ir.create_snapshot(name, example_inputs=...)."
            ) from None
        if not isinstance(snap, Snapshot):  # derived lazily after prune()
            snap = self._snapshots[name] = snap()
        return snap

    @property
    def graph(self) -> Graph:
        return self.snapshot().graph

    def label_groups(self, name: str = DEFAULT) -> list[LabelGroup]:
        """All label groups that touch a parameter (prunable or not)."""
        return list(self.snapshot(name).groups)

    def prunable_label_groups(self, name: str = DEFAULT) -> list[LabelGroup]:
        return self.snapshot(name).prunable_groups

    def labels(self, group: LabelGroup | int, name: str = DEFAULT) -> list[Label]:
        snap = self.snapshot(name)
        g = snap.groups[group] if isinstance(group, int) else group
        return snap.labels(g)

    def label_scores(self, name: str = DEFAULT) -> dict[int, torch.Tensor]:
        """Score of every label of every prunable group (group id -> float64 vector, higher = keep).

        The scores a criterion stored on the snapshot; groups without one get the mean
        absolute weight each label removes (the default magnitude ranking).
        """
        from ._ir.measure import magnitude_scores

        snap = self.snapshot(name)
        out: dict[int, torch.Tensor] = {}
        default = None
        for g in snap.prunable_groups:
            score = snap.scores.get(g.gid)
            if score is None:
                default = default if default is not None else magnitude_scores(snap, self._model)
                score = default[g.gid]
            out[g.gid] = score
        return out

    def selector_label_groups(self, name: str = DEFAULT) -> list[list[Label]]:
        """Prunable labels per group, in ascending score order (ENOT's contract).

        The labels are built once per snapshot and score vectors (a search selects many times
        from one snapshot) and rebuilt when a criterion writes new scores, a score vector
        changes in place or the weights behind the default scores change. Every call returns
        new lists.
        """
        snap = self.snapshot(name)
        scores = self.label_scores(name)
        # keyed by the score tensors themselves (held by the key, so no id is reused) and their versions
        key = (snap.owner, [(gid, s, s._version) for gid, s in scores.items()])
        cached = snap.cache.get("selector_label_groups")
        if cached is not None and _same_scores(cached[0], key):
            return [list(labs) for labs in cached[1]]
        out = []
        for gid, score in scores.items():
            order = torch.argsort(score, stable=True).tolist()
            out.append(list(map(Label, repeat(snap.owner, len(order)), repeat(gid, len(order)), order)))
        snap.cache["selector_label_groups"] = (key, out)
        return [list(labs) for labs in out]

    # ------------------------------------------------------------------ pruning
    def check_labels(self, labels: Sequence[Label], name: str = DEFAULT) -> dict[int, torch.Tensor]:
        """Validate ``labels``; return group leaf -> bool mask of removed slots."""
        snap = self.snapshot(name)
        labels = _label_list(labels, "check_labels")
        fast = removed_masks(snap, labels)  # valid labels, vectorised; None: find the culprit below
        if fast is not None:
            _refuse_empty_axes(snap, fast)
            return fast
        chosen: dict[int, list[int]] = {}
        for lab in labels:
            if not isinstance(lab, Label):
                raise LabelError(f"expected pruning_ir Labels, got {type(lab).__name__} ({lab!r}). "
                                 "Get labels from a selector or ir.labels(group).")
            if lab.owner != snap.owner:
                raise LabelError(
                    f"{lab!r} belongs to another IR or snapshot (labels are tied to the snapshot that "
                    "made them; after prune() select again from the returned IR)."
                )
            if not 0 <= lab.group < len(snap.groups) or not 0 <= lab.index < snap.groups[lab.group].size:
                raise LabelError(f"{lab!r} is out of range for snapshot {name!r}.")
            g = snap.groups[lab.group]
            if not g.prunable:
                raise LabelError(f"{lab!r}: group g{g.gid} ({g.describe()}) is not prunable: {g.reason}.")
            chosen.setdefault(g.leaf, []).append(lab.index)
        by_leaf = {g.leaf: g for g in snap.groups}
        removed: dict[int, torch.Tensor] = {}
        for leaf, idx in chosen.items():
            mask = torch.zeros(by_leaf[leaf].size, dtype=torch.bool)
            mask[torch.tensor(idx, dtype=torch.long)] = True
            removed[leaf] = mask
        for g in snap.groups:
            m = removed.get(g.leaf)
            if m is not None and bool(m.all()):
                raise LabelError(f"the labels remove every channel of group g{g.gid} ({g.describe()}); "
                                 "keep at least one.")
            if m is not None and g.step > 1 and (g.size - int(m.sum())) % g.step:
                raise LabelError(f"the labels leave {g.size - int(m.sum())} channels in group g{g.gid} "
                                 f"({g.describe()}), whose kernels need a multiple of {g.step} (group.step): "
                                 "remove a number of its labels that keeps a multiple, or use a selector (they "
                                 "round to it).")
        _refuse_empty_axes(snap, removed)
        return removed

    def prune(self, name: str = DEFAULT, *, labels: Sequence[Label], inplace: bool = False,
              skip_label_checking: bool = False, verify: bool = True) -> PruningIR:
        """Remove ``labels``; return a new IR whose ``.model`` is the slim module.

        ``inplace=True`` slices this IR's model itself (saves memory). With empty
        ``labels`` and ``inplace=False`` a copy is returned, sharing no tensor with ``ir.model``.

        Channel sizes that a module's ``forward`` holds as literals (``h[:, :5]``,
        ``torch.split(x, [5, 8])``) get run-time patches (forward hooks, listed in
        ``rewrite_log``) whatever ``verify`` is. Which sizes are literals is learnt once per
        snapshot by one forward of the slim model on the example inputs, then cached, so a
        search pays it once, not per candidate.

        ``verify=True`` then re-traces the slim model and checks every op's shapes against
        the pruned IR; where that fails it repairs what it can (restores attributes set by
        matching values, patches further modules) or raises :class:`~pruning_ir.errors.RewriteError`.
        ``verify=False`` skips that check (fast candidates in a search): it returns the same
        model as ``verify=True`` whenever verification passes without repairs.
        ``skip_label_checking`` skips validation of the labels (trusted callers).
        """
        snap = self.snapshot(name)
        labels = _label_list(labels, "prune")
        fast = removed_masks(snap, labels) if skip_label_checking else None
        if fast is not None:
            removed = fast
        elif skip_label_checking:
            removed = {}
            by_gid = snap.groups
            for lab in labels:
                g = by_gid[lab.group]
                removed.setdefault(g.leaf, torch.zeros(g.size, dtype=torch.bool))[lab.index] = True
        else:
            removed = self.check_labels(labels, name)
        kept = {leaf: ~m for leaf, m in removed.items()}
        if removed and not snap.cache.get("warned_untraced"):
            untraced = untraced_parameters(self._model, snap.graph)
            snap.cache["warned_untraced"] = True
            if untraced:
                more = " ..." if len(untraced) > 6 else ""
                warnings.warn(
                    f"pruning {type(self._model).__name__}: parameters {untraced[:6]}{more} "
                    "were not used by any traced call, so their channels are neither checked nor sliced; a call "
                    "that uses them may fail or differ from the masked original. Give such a call as "
                    "PruningIR(..., extra_calls=[ExampleCall(...)]) (see ir.report()).", stacklevel=2)
        slim = slim_model(snap, self._model, removed, inplace)
        guesses: dict[str, list[tuple[str, Any]]] = {}
        ambiguous: dict[str, list[tuple[str, int, list[int]]]] = {}
        changes, unresolved = update_attributes(slim, snap, kept, guesses, ambiguous)
        for c in changes:
            log.debug("updated %s", c)
        edits = module_edits(snap, kept) if removed else {}
        patched: list[str] = []
        if verify and removed:
            new_snap = remap_snapshot(snap, kept)
            ran = False
            if edits:  # the literal-finding forward (if any) doubles as verification's forward
                patched, ran = patch_literals(slim, snap, edits, guesses, unresolved,
                                              lambda: verify_forward(slim, new_snap, unresolved))
            choices: dict[str, _Choices] = {}
            patched += self._verify_or_patch(slim, new_snap, edits, patched, unresolved, guesses, ambiguous,
                                             choices, ran)
            modules = dict(slim.named_modules()) if choices else {}
            for path, ch in choices.items():
                ch.log(path, modules[path], changes)
            if new_snap.cache.get("loose_verified"):
                changes.append("verification: sizes along batch, sequence or spatial axes follow the values in this "
                               "model (see ir.report()) and differ from the traced ones; they were not compared, "
                               "channel sizes were")
            out = PruningIR._from_snapshot(slim, new_snap, self, name)
        else:
            if edits:
                patched = patch_literals(slim, snap, edits, guesses, unresolved)[0]
            out = PruningIR._from_snapshot(slim, lambda: remap_snapshot(snap, kept), self, name)
        changes += [f"{m or '<root>'}: literal sizes in forward patched by hooks" for m in patched]
        out.rewrite_log = changes
        return out

    def _verify_or_patch(self, slim: nn.Module, new_snap: Snapshot, edits: dict[str, ModuleEdits],
                         patched: list[str], unresolved: list[str], guesses: dict[str, list[tuple[str, Any]]],
                         ambiguous: dict[str, list[tuple[str, int, list[int]]]], choices: dict[str, _Choices],
                         ran: bool = False) -> list[str]:
        """Verify the slim model; where it fails, repair the failing module (or its nearest
        ancestor that can be repaired) and retry: first other values of its ambiguous attributes,
        then a patch of its literal sizes, then every combination of ambiguous values and of
        guesses (attributes set by matching values) kept or put back (:class:`_Choices`, filled
        in as they are made). Returns the modules patched here (``patched``: those patched
        before; ``ran``: the forward part of verification already passed on the model as it is)."""
        modules = dict(slim.named_modules())
        done = set(patched)
        added: list[str] = []
        cap = self._max_repairs
        last: VerifyFailure | None = None
        for _ in range(cap):
            try:
                verify_graph(slim, new_snap, unresolved, self.leaf_modules, ran)
                for m in modules.values():  # the skipped calls are learnt: stop aligning on every call
                    patch = patch_of(m)
                    if patch is not None:
                        patch.relearn = False
                break
            except VerifyFailure as exc:
                last = exc
                where = exc.module
                chain = [] if where is None else [where[:i] for i in range(len(where), 0, -1)
                                                  if i == len(where) or where[i] == "."]
                acted = False
                for path in [*chain, ""]:
                    if path not in modules:
                        continue
                    ch = choices.get(path)
                    if ch is None and (path in guesses or path in ambiguous):
                        ch = choices[path] = _Choices.of(ambiguous.get(path, []), guesses.get(path, []),
                                                         modules[path], self._repair_tries)
                    patchable = path in edits and path not in done
                    if ch is not None:
                        tried = ch.try_next(modules[path], guesses=not patchable)
                        patch = patch_of(modules[path])
                        if patch is not None:
                            # out of combinations, every guess is back in place (restored=False)
                            ch.fit_patch(patch, restored=tried is not None and tried[1])
                        if tried is not None:
                            log.debug("verification of %s: trying %s", path or "<root>", tried[0])
                            if patch is not None:
                                patch.forget_skips()  # which calls the code skips follows the attributes
                            acted = True
                            break
                    if patchable:
                        install(modules[path], *edits[path], path=path)
                        patch = patch_of(modules[path])
                        if patch is not None:
                            patch.forget_skips()
                        done.add(path)
                        added.append(path)
                        if ch is not None:
                            ch.rearm()
                        acted = True
                        break
                if not acted:
                    raise
                ran = False
        else:
            raise RewriteError(
                f"verifying the slim {type(slim).__name__} still failed after {cap} repairs (attributes "
                f"restored, modules patched: {added}); the model is not returned unverified. Pass the modules "
                "that hold channel sizes in Python in leaf_modules=[...] (their channels stay unprunable), "
                "or report the model.") from last
        if added:
            log.warning("slim %s: modules %s hold channel sizes as literals in forward; their ops are patched "
                        "at run time by forward hooks (eager PyTorch, gradients included; torch.export, ONNX and "
                        "TorchScript export do not reliably keep them: check exported graphs)",
                        type(slim).__name__, added)
        return added

    # ------------------------------------------------------------------ inspection
    def lint(self, name: str = DEFAULT) -> None:
        """Check the IR's invariants; raises ``AssertionError`` naming what is broken."""
        lint_snapshot(self.snapshot(name), self._model)

    def report(self, name: str = DEFAULT) -> str:
        """What is prunable, what is not and why, and what the engine could not reason about."""
        from ._ir.printing import format_report

        return format_report(self.snapshot(name), self._model)

    def __str__(self) -> str:
        from ._ir.printing import format_ir

        return format_ir(self.snapshot(), self._model)

    def __repr__(self) -> str:
        snap = self.snapshot()
        return (f"PruningIR({type(self._model).__name__}: {len(snap.graph.nodes)} nodes, "
                f"{len(snap.groups)} label groups, {len(snap.prunable_groups)} prunable)")

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        for name in list(self._snapshots):
            self.snapshot(name)  # resolve lazily derived snapshots
        state = dict(self.__dict__)
        state["__format__"] = SNAPSHOT_FORMAT
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        fmt = state.pop("__format__", None)
        if fmt != SNAPSHOT_FORMAT:
            raise SnapshotVersionError(
                f"this IR was saved with snapshot format {fmt}, but pruning_ir reads format "
                f"{SNAPSHOT_FORMAT}. Re-create it with PruningIR(model, ...) under this version."
            )
        self.__dict__.update(state)

