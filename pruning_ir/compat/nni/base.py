"""The shared machinery of the NNI pruners: ``config_list`` checking, the per-op sparsities it asks
for, selection as a composition of :mod:`pruning_ir.compose` parts, masks on the user's model,
``export_model`` and ``speedup``."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import prune

from ..._ir.axes import removed_axes
from ..._ir.labels import Label, LabelGroup
from ...compose import Channels, Fixed, Global, Pruner, Ratio, at_ratios, output_group
from ...criteria import Criterion
from ...errors import InvalidInputError
from ...ir import PruningIR
from ...sparsity import DEFAULT_TYPES

log = logging.getLogger(__name__)

_KEYS = {"sparsity", "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer", "op_types", "op_names",
         "exclude", "prune_iterations"}


def _check_config(config_list: Any) -> list[dict[str, Any]]:
    if not isinstance(config_list, list) or not config_list or not all(isinstance(c, dict) for c in config_list):
        raise InvalidInputError("config_list: give a list of dicts, e.g. [{'sparsity': 0.5, 'op_types': ['Conv2d']}].")
    for i, c in enumerate(config_list):
        unknown = set(c) - _KEYS
        if unknown:
            raise InvalidInputError(f"config_list[{i}]: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}.")
        if "op_types" not in c and "op_names" not in c:
            raise InvalidInputError(f"config_list[{i}]: give op_types or op_names.")
        if not c.get("exclude"):
            given = [k for k in ("sparsity", "sparsity_per_layer", "total_sparsity") if k in c]
            if len(given) != 1:
                raise InvalidInputError(f"config_list[{i}]: give exactly one of sparsity / sparsity_per_layer / "
                                        f"total_sparsity (got {given or 'none'}).")
            value = c[given[0]]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise InvalidInputError(f"config_list[{i}]: {given[0]}={value!r}: give a fraction in [0, 1).")
    return config_list


def _overall_sparsity(config_list: list[dict[str, Any]], owner: str) -> float:
    """The one sparsity a search pruner's config_list asks for (over all its non-excluded entries)."""
    values = {float(c[k]) for c in config_list if not c.get("exclude")
              for k in ("sparsity", "sparsity_per_layer", "total_sparsity") if k in c}
    if len(values) != 1:
        raise InvalidInputError(f"{owner}: give one overall sparsity in config_list (got {values}).")
    return values.pop()


def _matches(config: dict[str, Any], name: str, module: nn.Module) -> bool:
    types = config.get("op_types")
    names = config.get("op_names")
    ok_type = types is None or type(module).__name__ in types or (
        "default" in types and isinstance(module, DEFAULT_TYPES))
    ok_name = names is None or name in names
    return ok_type and ok_name


class _Pruner:
    """The shared machinery; subclasses set the criterion."""

    criterion: ClassVar[type[Criterion] | None] = None
    structured: ClassVar[bool] = True
    """Channels (traced into an IR; needs ``dummy_input``) or single entries (no IR)."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 dependency_aware: bool = True, dummy_input: Any = None, trace: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"{type(self).__name__}: expected an nn.Module, got {type(model).__name__}.")
        self.traced = self.structured if trace is None else trace
        if dummy_input is None and self.traced:
            raise InvalidInputError(f"{type(self).__name__}(..., dummy_input=x): pruning_ir traces the model to find "
                                    "coupled channels; give one example input batch.")
        if prune.is_pruned(model):
            raise InvalidInputError(f"{type(self).__name__}: the model already carries torch.nn.utils.prune masks; "
                                    "fold them first (pruning_ir.sparsity.make_permanent(model)) and prune again.")
        self.model = model
        self.config_list = _check_config(config_list)
        self.optimizer = optimizer
        self.dummy_input = () if dummy_input is None else (
            dummy_input if isinstance(dummy_input, tuple) else (dummy_input,))
        if not dependency_aware:
            log.info("%s: channels are always aligned across coupled layers (dependency-aware)", type(self).__name__)
        named = dict(model.named_modules())
        for i, c in enumerate(self.config_list):
            missing = [n for n in c.get("op_names") or [] if n not in named]
            if missing:
                raise InvalidInputError(f"config_list[{i}]: no module named {missing[0]!r} in {type(model).__name__}.")
        # a clean copy (traced for the structured pruners): compress() puts masks on the user's model, which
        # the tracer refuses and deepcopy cannot copy
        self._clean = copy.deepcopy(model)
        if self.traced:
            self.ir = PruningIR(self._clean, example_inputs=self.dummy_input)
        self.labels: list[Label] = []
        self.max_abs_diff: float | None = None

    # ------------------------------------------------------------------ config -> sparsity per op
    def op_sparsity(self) -> dict[str, tuple[int, float, float | None]]:
        """Per selected op: (index of the config entry, sparsity, max per layer or None). Excluded ops
        are in :attr:`excluded`."""
        out: dict[str, tuple[int, float, float | None]] = {}
        self.excluded: set[str] = set()
        for name, mod in self.model.named_modules():
            for i, c in enumerate(self.config_list):
                if not _matches(c, name, mod):
                    continue
                if c.get("exclude"):
                    out.pop(name, None)
                    self.excluded.add(name)
                    continue
                self.excluded.discard(name)
                key = next(k for k in ("sparsity", "sparsity_per_layer", "total_sparsity") if k in c)
                out[name] = (i, float(c[key]), c.get("max_sparsity_per_layer") if "total_sparsity" in c else None)
        if not out:
            raise InvalidInputError("config_list selects no module of the model: check op_types / op_names.")
        return out

    def _group_of(self, op: str) -> LabelGroup | None:
        return output_group(self.ir, op)

    def select(self) -> list[Label]:
        """The labels the config asks for, lowest-scored first in each group (the IR holds the scores):
        per-layer entries are ``Fixed`` fractions of their ops' groups, each ``total_sparsity`` entry
        a ``Global`` ranking over its ops' groups at a ``Ratio`` (each group capped at
        ``max_sparsity_per_layer``); excluded ops' groups stay whole."""
        ops = self.op_sparsity()
        excluded = sorted(self.excluded)
        per_layer = {op: value for op, (entry, value, _) in ops.items()
                     if "total_sparsity" not in self.config_list[entry]}
        out: list[Label] = []
        if per_layer:
            prunable = {op: v for op, v in per_layer.items() if self._group_of(op) is not None}
            out += Pruner(Channels(list(per_layer), excluded, outer=True), allocation=Fixed(prunable)).select(self.ir)
        for entry, c in enumerate(self.config_list):
            members = [op for op, (e, _, _) in ops.items() if e == entry and "total_sparsity" in c]
            if not members:
                continue
            cap = c.get("max_sparsity_per_layer")
            # a group a per-layer entry already set is not ranked again
            target = Channels(members, excluded + list(per_layer), max_ratio=1.0 if cap is None else float(cap),
                              outer=True)
            groups = target.groups(self.ir)
            total = sum(g.size for g in groups)
            count = math.floor(float(c["total_sparsity"]) * total + 1e-9)  # NNI: whole labels, rounded down
            if count:
                out += Pruner(target, allocation=Global(per_cost=False), objective=Ratio(count / total)).select(self.ir)
        return out

    def labels_for(self, ratios: dict[int, float]) -> list[Label]:
        """Per group id, the lowest-scored ``floor(ratio * size)`` labels (whole steps, one label kept)."""
        return at_ratios(self.ir, ratios, lambda g: 1)

    def target(self) -> Channels:
        """The config's ops (excluded ones left out) as a :class:`~pruning_ir.compose.Channels` target:
        each op's filters are the outer group of its output (whole heads of a query projection)."""
        return Channels(list(self.op_sparsity()), sorted(self.excluded), outer=True)

    def _mask(self, labels: list[Label]) -> nn.Module:
        """Put the masks of ``labels`` on the user's model (what :meth:`compress` does after selecting)."""
        self.labels = labels
        return self._mask_on(self.model, labels)

    def _mask_on(self, model: nn.Module, labels: list[Label]) -> nn.Module:
        """``torch.nn.utils.prune`` masks on every parameter slice of ``labels`` in ``model`` (the user's
        model or a copy of the same architecture)."""
        snap = self.ir.snapshot()
        keeps: dict[str, tuple[nn.Module, str, torch.Tensor]] = {}
        for pname, d, m in removed_axes(snap, self.ir.check_labels(labels)):
            if snap.graph.values[snap.graph.params[pname]].kind != "param":
                continue  # a buffer (running statistics): a channel whose scale and shift are zero outputs zero
            owner, _, leaf = pname.rpartition(".")
            if pname not in keeps:
                module = model.get_submodule(owner)
                current = getattr(module, leaf)  # the masked product when an earlier compress() masked it
                keeps[pname] = (module, leaf, torch.ones(current.shape, dtype=torch.bool, device=current.device))
            keep = keeps[pname][2]
            shape = [1] * keep.dim()
            shape[d] = -1
            keep &= m.to(keep.device).reshape(shape)
        for module, leaf, keep in keeps.values():  # on a masked parameter torch combines the masks (they only grow)
            prune.custom_from_mask(module, leaf, keep.to(getattr(module, leaf).dtype))
        return model

    # ------------------------------------------------------------------ NNI's API
    def _load_folded(self) -> None:
        """The clean copy of the model takes the masked model's current weights (masks folded)."""
        state = folded_state(self.model)
        with torch.no_grad():
            for n, t in self._clean.state_dict().items():
                t.copy_(state[n])

    def _score(self) -> None:
        if self.criterion is not None:
            self.criterion(self.ir).score()

    def compress(self) -> nn.Module:
        """Score, select and mask the model in place (``torch.nn.utils.prune`` masks on every parameter
        slice of the removed channels); returns the model. Scores the model's current weights."""
        self._load_folded()
        self._score()
        return self._mask(self.select())

    def export_model(self, model_path: str, mask_path: str | None = None) -> None:
        """Save the masked model's weights with the masks folded in (``model_path``) and the masks
        (``mask_path``: module name -> {parameter name: mask}), as NNI does."""
        torch.save(folded_state(self.model), model_path)
        if mask_path is not None:
            masks: dict[str, dict[str, torch.Tensor]] = {}
            for n, mod in self.model.named_modules():
                for b, t in mod.named_buffers(recurse=False):
                    if b.endswith("_mask"):
                        masks.setdefault(n, {})[b[: -len("_mask")]] = t.detach().clone()
            torch.save(masks, mask_path)

    def speedup(self) -> nn.Module:
        """The physically slim model: the masked model's current weights, the removed channels cut
        out by the IR, checked against the masked model on the dummy input."""
        if not self.labels:
            raise InvalidInputError(f"{type(self).__name__}.speedup(): call compress() first.")
        self._load_folded()
        slim = self.ir.prune(labels=self.labels).model
        modes = [(m, m.training) for net in (self.model, slim) for m in net.modules()]
        self.model.eval()
        slim.eval()
        try:
            with torch.no_grad():
                ref, got = self.model(*self.dummy_input), slim(*self.dummy_input)
        finally:  # every module's own flag back (a model may hold eval submodules under a train root)
            for m, mode in modes:
                m.training = mode
        self.max_abs_diff = float((ref - got).abs().max()) if isinstance(ref, torch.Tensor) else None
        return slim


def folded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every ``torch.nn.utils.prune`` mask folded in: ``x_orig * x_mask``
    under the name ``x``, the masks left out (the names of the unmasked model). The model is not
    changed (a masked module cannot be deep-copied: its ``weight`` is computed)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, t in state.items():
        if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in state:
            continue
        if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in state:
            base = k[: -len("_orig")]
            out[base] = (t * state[base + "_mask"]).detach().clone()
        else:
            out[k] = t.detach().clone()
    return out


def _per_op_only(config_list: Any, owner: str) -> None:
    if isinstance(config_list, list) and any(isinstance(c, dict) and "total_sparsity" in c for c in config_list):
        raise InvalidInputError(f"{owner}: total_sparsity is not supported for single-weight masks here; give "
                                "sparsity per op, or use pruning_ir.sparsity.unstructured(model, s, scope='global').")

