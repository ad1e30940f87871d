"""``PruningIR``: the object users hold. Trace once, select many times, prune."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

import torch
from torch import nn

from ._ir.graph import Graph, untraced_parameters
from ._ir.labels import Label, LabelGroup
from ._ir.lint import lint_snapshot
from ._ir.masks import label_masks, trusted_masks
from ._ir.snapshot import Snapshot
from ._pipeline.build import build_snapshot
from ._pipeline.options import MAX_REPAIRS, MAX_TRIES, BuildOptions, PruneOptions
from ._pipeline.prune import prune_snapshot
from ._rewrite.recipe import origin_of, set_origin
from ._trace.conditions import batch_size
from .calls import ExampleCall, as_example_call
from .errors import InvalidInputError, SnapshotVersionError

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
"""Version of the pickled IR layout; bumped whenever it changes incompatibly."""

DEFAULT = "main"


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


def _param_versions(model: nn.Module) -> dict[int, int]:
    """``id(parameter) -> its version counter`` (bumped by every in-place change)."""
    return {id(p): p._version for p in model.parameters()}


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
            (with a ``meta`` model) trace without allocating memory. Without example inputs
            (``PruningIR(model)``, as in ENOT) the IR is traced later, on the first batch a
            criterion's collector is called with (``with LossAwareCriterion(ir) as collect:
            collect(x)``) or by :meth:`create_snapshot`; until then, anything that reads the
            graph or labels (a selector, ``prune``) raises
            :class:`~pruning_ir.errors.InvalidInputError` saying so.
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

    _repair_tries: int = MAX_TRIES  # attribute combinations prune's repairs try per module
    _max_repairs: int = MAX_REPAIRS  # repairs per prune (both per IR, for a caller that wants fewer)

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
        if example_inputs is not None or example_kwargs:
            self.create_snapshot(name, example_inputs=example_inputs, example_kwargs=example_kwargs)

    # ------------------------------------------------------------------ building
    def create_snapshot(self, name: str = DEFAULT, *, example_inputs: Any = None,
                        example_kwargs: dict[str, Any] | None = None) -> Snapshot:
        """Trace the model on the example inputs and infer its labels as snapshot ``name``."""
        if example_inputs is None and not example_kwargs:
            raise InvalidInputError(
                f"create_snapshot({name!r}) of {type(self._model).__name__} needs example_inputs to trace the "
                "model: ir.create_snapshot(example_inputs=(x,)) where model(x) runs.")
        args, kwargs = _as_call(example_inputs, example_kwargs)
        if batch_size(args, kwargs) == 0:
            raise InvalidInputError(
                f"PruningIR({type(self._model).__name__}): the example inputs hold no example (batch size 0), "
                "so no op sees a channel's values and the trace says nothing about them. Give at least one "
                "example, e.g. example_inputs=(torch.randn(1, ...),).")
        snap = build_snapshot(self._model, args, kwargs, self._build_options(), name)
        self._snapshots[name] = snap
        return snap

    def _build_options(self) -> BuildOptions:
        return BuildOptions(tuple(self.leaf_modules), self.soft_tracing, self.keep_io_shapes, self.probe,
                            tuple(getattr(self, "extra_calls", ())), getattr(self, "auto_calls", True))

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
            if not self._snapshots:
                raise InvalidInputError(
                    f"PruningIR({type(self._model).__name__}) has not traced the model yet (it was built without "
                    "example_inputs): run a criterion's collector on a batch first (`with "
                    "LossAwareCriterion(ir) as collect: collect(x)`), or call ir.create_snapshot(example_inputs=(x,)), "
                    "or build it with PruningIR(model, example_inputs=(x,))."
                ) from None
            raise InvalidInputError(
                f"no snapshot named {name!r}; this IR has {sorted(self._snapshots)}. "
                "Create one with ir.create_snapshot(name, example_inputs=...)."
            ) from None
        if not isinstance(snap, Snapshot):  # derived lazily after prune()
            snap = self._snapshots[name] = snap()
        return snap

    def is_traced(self, name: str = DEFAULT) -> bool:
        """Whether snapshot ``name`` exists (an IR built without example inputs has none until its
        first criterion batch or :meth:`create_snapshot`)."""
        return name in self._snapshots

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
        self._warn_stale(name, snap)
        out: dict[int, torch.Tensor] = {}
        default = None
        for g in snap.prunable_groups:
            score = snap.scores.get(g.gid)
            if score is None:
                default = default if default is not None else magnitude_scores(snap, self._model)
                score = default[g.gid]
            out[g.gid] = score
        return out

    def mark_scored(self, name: str = DEFAULT) -> None:
        """Remember the weights the scores of snapshot ``name`` were computed from (criteria call
        this when they store scores): a selection after the weights changed warns once."""
        self.__dict__.setdefault("_scored", {})[name] = _param_versions(self._model)

    def _warn_stale(self, name: str, snap: Snapshot) -> None:
        scored = self.__dict__.get("_scored", {}).get(name)
        if not snap.scores or scored is None:
            return
        now = _param_versions(self._model)
        changed = [k for k, v in scored.items() if k in now and now[k] != v]
        if changed:
            self.__dict__["_scored"][name] = now  # warn once per change
            warnings.warn(
                f"{type(self._model).__name__}: {len(changed)} parameters changed (in place: an optimizer step, "
                f"load_state_dict) since {snap.score_source or 'the criterion'} scored snapshot {name!r}; selecting "
                "from these scores uses the old weights' importance. Calibrate the criterion again on the current "
                "weights.", stacklevel=3)

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
        return label_masks(snap, _label_list(labels, "check_labels"))

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
        removed = trusted_masks(snap, labels) if skip_label_checking else label_masks(snap, labels)
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
        options = PruneOptions(inplace, verify, tuple(self.leaf_modules), self._repair_tries, self._max_repairs)
        origin = self._origin()  # before the prune: inplace changes the model's config
        res = prune_snapshot(snap, self._model, removed, options)
        set_origin(res.model, origin)
        if res.undescribed and not snap.cache.get("warned_config"):
            snap.cache["warned_config"] = True
            warnings.warn(f"pruning {type(self._model).__name__}: {res.undescribed}.", stacklevel=2)
        out = PruningIR._from_snapshot(res.model, res.snapshot, self, name)
        out.rewrite_log = list(res.log)
        if snap.scores:
            out.mark_scored(name)  # the kept labels' scores are carried over: current for the slim weights
        return out

    def _origin(self) -> dict[str, Any]:
        """What the model was built as before any prune (its class, a Hugging Face config): what
        :func:`~pruning_ir.save_pruned` records so that the slim model can be rebuilt."""
        origin = self.__dict__.get("_origin_cache")
        if origin is None:
            origin = self.__dict__["_origin_cache"] = origin_of(self._model)
        return origin

    # ------------------------------------------------------------------ inspection
    def lint(self, name: str = DEFAULT) -> None:
        """Check the IR's invariants; raises ``AssertionError`` naming what is broken."""
        lint_snapshot(self.snapshot(name), self._model)

    def to_fx(self, name: str = DEFAULT) -> Any:
        """The traced example call as a ``torch.fx.GraphModule`` of ATen calls (see
        :mod:`pruning_ir._trace.fx`): called with the example call's tensors (flattened, in
        order), it returns the call's flattened tensor outputs: what the model returns on them
        (a check of the trace). It shares the model's parameters."""
        from ._trace.fx import to_graph_module

        snap = self.snapshot(name)
        return to_graph_module(snap.graph, self._model, snap.graph.primary_nodes())

    def to_networkx(self, name: str = DEFAULT) -> Any:
        """The coupling graph as a ``networkx.Graph``: modules, the parameters they hold and the
        label groups each parameter axis lies in (see :mod:`pruning_ir._ir.coupling`)."""
        from ._ir.coupling import coupling_graph

        return coupling_graph(self.snapshot(name), self._model)

    def report(self, name: str = DEFAULT) -> str:
        """What is prunable, what is not and why, and what the engine could not reason about."""
        from ._ir.printing import format_report

        return format_report(self.snapshot(name), self._model)

    def __str__(self) -> str:
        from ._ir.printing import format_ir

        return format_ir(self.snapshot(), self._model)

    def __repr__(self) -> str:
        if not self._snapshots:
            return f"PruningIR({type(self._model).__name__}: not traced yet)"
        snap = self.snapshot(next(iter(self._snapshots)))
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

