"""NNI's pruner names and ``config_list`` on the pruning_ir engine (the one-shot pruners; see README).

    from pruning_ir.compat.nni import L1FilterPruner
    config_list = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
    pruner = L1FilterPruner(model, config_list, dummy_input=x)
    model = pruner.compress()              # masks on your model, in place, as NNI does
    ...                                    # fine-tune the masked model if you like
    pruner.export_model("model.pth", "mask.pth")
    slim = pruner.speedup()                # a physically smaller model, equal to the masked one

``config_list`` entries (as in NNI): ``sparsity`` (or ``sparsity_per_layer``): the fraction of each
selected op's output channels to remove; or ``total_sparsity`` over all the entry's ops together,
with ``max_sparsity_per_layer``; ``op_types`` (class names, ``"default"`` = every ``Linear`` and
``Conv*``) and/or ``op_names``; ``exclude: True`` takes the matched ops out, and with them every
op whose output channels are coupled with theirs (a residual add: the coupled channels go
together or not at all). An op matched by several entries takes the last one. An op's output
channels are a label group of the IR (coupled channels included: the dependency-aware mode is
the only mode), so when a group's ops ask for
different sparsities the group takes the smallest (no op loses more than asked); a group that
cannot be pruned is reported with the reason in a warning, never silently skipped.

``compress()`` scores the groups with the pruner's criterion (L1 / L2 / FPGM / BN scale: weights
only; ``LevelPruner``: single entries, see :mod:`pruning_ir.sparsity`) and masks every parameter
slice of the removed channels as a ``torch.nn.utils.prune`` reparametrisation. ``speedup()`` folds
the masks (with whatever training happened since), removes the channels with the IR, checks the
slim model against the masked one on the dummy input and returns it (``max_abs_diff`` on the
pruner). The activation and Taylor pruners take NNI's ``trainer(model, optimizer, criterion,
epoch)`` and read its first ``statistics_batch_num`` batches. AGP, lottery ticket, simulated
annealing, NetAdapt, ADMM and AutoCompress follow; see each class. A model that already carries
``torch.nn.utils.prune`` masks is refused (fold them first with
:func:`pruning_ir.sparsity.make_permanent`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import prune

from .._ir.axes import removed_axes
from .._ir.labels import Label, LabelGroup
from ..criteria import (
    APoZCriterion,
    BNScaleCriterion,
    Criterion,
    FPGMCriterion,
    L1NormCriterion,
    L2NormCriterion,
    MeanActivationCriterion,
    TaylorFOWeightCriterion,
)
from ..criteria.activation import _ActivationCriterion
from ..errors import InvalidInputError
from ..ir import PruningIR
from ..sparsity import DEFAULT_TYPES, unstructured

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


def _out_axis(module: nn.Module) -> int:
    """The weight axis of a module's output channels: 1 for HF ``Conv1D`` (``[in, out]``) and transposed
    convolutions (``[in, out / groups, *k]``), else 0."""
    return 1 if type(module).__name__ == "Conv1D" or getattr(module, "transposed", False) else 0


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
        for g in self.ir.prunable_label_groups():
            if any(m == f"{op}.weight" and ax == _out_axis(self.model.get_submodule(op)) for m, ax in g.members):
                return g
        return None

    def select(self) -> list[Label]:
        """The labels the config asks for, lowest-scored first in each group."""
        ops = self.op_sparsity()
        scores = self.ir.label_scores()
        # an excluded op keeps its output channels whole, and so do the ops coupled with it
        frozen = {g.gid for g in map(self._group_of, self.excluded) if g is not None}
        per_group: dict[int, float] = {}
        totals: dict[int, list[tuple[LabelGroup, float | None]]] = {}
        unprunable = []
        for op, (entry, value, cap) in ops.items():
            g = self._group_of(op)
            if g is None:
                unprunable.append(op)
                continue
            if g.gid in frozen:
                continue
            if "total_sparsity" in self.config_list[entry]:
                totals.setdefault(entry, []).append((g, cap))
            else:
                per_group[g.gid] = min(value, per_group.get(g.gid, value))
        if unprunable:
            warnings.warn(f"{type(self).__name__}: the output channels of {unprunable[:5]} are not a prunable group "
                          "(the model's output, or a coupling the engine cannot slice: pruner.ir.report() says "
                          "why); they are left whole.", stacklevel=3)
        out = self.labels_for(per_group)
        for entry, members in totals.items():
            out += self._total(float(self.config_list[entry]["total_sparsity"]), members, scores,
                               exclude=set(out))
        return out

    def labels_for(self, ratios: dict[int, float]) -> list[Label]:
        """Per group id, the lowest-scored ``floor(ratio * size)`` labels (whole steps, one step kept)."""
        scores = self.ir.label_scores()
        groups = {g.gid: g for g in self.ir.prunable_label_groups()}
        out: list[Label] = []
        for gid, value in ratios.items():
            g = groups[gid]
            n = min(math.floor(value * g.size + 1e-9) // g.step * g.step, g.size - g.step)
            order = torch.argsort(scores[gid], stable=True)[:max(n, 0)]
            out += [Label(self.ir.snapshot().owner, gid, int(i)) for i in order]
        return out

    def target_groups(self) -> list[LabelGroup]:
        """The prunable groups of the ops the config selects (excluded ops' groups left out)."""
        ops = self.op_sparsity()
        frozen = {g.gid for g in map(self._group_of, self.excluded) if g is not None}
        found = {g.gid: g for g in map(self._group_of, ops) if g is not None and g.gid not in frozen}
        if not found:
            raise InvalidInputError(f"{type(self).__name__}: the ops config_list selects have no prunable output "
                                    "channels (pruner.ir.report() says why).")
        return list(found.values())

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

    def _total(self, total: float, members: list[tuple[LabelGroup, float | None]], scores: dict[int, torch.Tensor],
               exclude: set[Label]) -> list[Label]:
        """``total`` of the members' labels together, lowest scores first, each group capped."""
        uniq = {g.gid: (g, cap) for g, cap in members}
        budget = math.floor(total * sum(g.size for g, _ in uniq.values()) + 1e-9)
        cand = []
        for gid, (g, cap) in uniq.items():
            limit = min(g.size - 1, math.floor((cap if cap is not None else 1.0) * g.size + 1e-9))
            order = torch.argsort(scores[gid], stable=True)[:limit]
            cand += [(float(scores[gid][i]), Label(self.ir.snapshot().owner, gid, int(i))) for i in order]
        cand.sort(key=lambda c: c[0])
        return [lab for _, lab in cand if lab not in exclude][:budget]

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


class L1FilterPruner(_Pruner):
    """Filters (output channels) with the smallest L1 norm go (NNI ``L1FilterPruner``)."""

    criterion = L1NormCriterion


class L2FilterPruner(_Pruner):
    """Filters with the smallest L2 norm go (NNI ``L2FilterPruner``)."""

    criterion = L2NormCriterion


class FPGMPruner(_Pruner):
    """Filters nearest the geometric median go (NNI ``FPGMPruner``)."""

    criterion = FPGMCriterion


class SlimPruner(_Pruner):
    """Channels with the smallest BatchNorm scale go (NNI ``SlimPruner``; ranked globally over the
    selected BN layers when the config says ``total_sparsity``). With a ``trainer(model, optimizer,
    criterion, epoch)``, ``compress()`` first runs network slimming's sparsity training on your model
    (in place, as NNI): ``sparsity_training_epochs`` epochs whose criterion adds
    ``scale * sum |gamma|`` over the selected BN layers to your ``criterion``; without one, the scales
    are ranked as they are."""

    criterion = BNScaleCriterion

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 trainer: Any = None, criterion: Any = None, sparsity_training_epochs: int = 10,
                 scale: float = 1e-4, dependency_aware: bool = True, dummy_input: Any = None) -> None:
        if trainer is not None and (not callable(trainer) or optimizer is None or not callable(criterion)):
            raise InvalidInputError("SlimPruner: sparsity training needs trainer=function(model, optimizer, "
                                    "criterion, epoch), an optimizer and a criterion(output, target).")
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input)
        self.trainer, self.loss_criterion = trainer, criterion
        self.epochs, self.scale = int(sparsity_training_epochs), float(scale)

    def compress(self) -> nn.Module:
        if self.trainer is not None:
            named = dict(self.model.named_modules())
            gammas = [named[op].weight for op in self.op_sparsity() if isinstance(
                getattr(named[op], "weight", None), torch.Tensor)]

            def slimming(output: Any, target: Any) -> torch.Tensor:
                return self.loss_criterion(output, target) + self.scale * sum(g.abs().sum() for g in gammas)

            for epoch in range(self.epochs):
                self.trainer(self.model, self.optimizer, slimming, epoch)
        return super().compress()

    def _group_of(self, op: str) -> LabelGroup | None:
        for g in self.ir.prunable_label_groups():  # a BN layer: the group of its scale
            if any(m == f"{op}.weight" for m, _ in g.members):
                return g
        return None


class _TrainerPruner(_Pruner):
    """Pruners whose metric comes from running the user's ``trainer(model, optimizer, criterion, epoch)``:
    the trainer runs on the pruner's working copy of the model, whose forward is routed through the
    criterion's collector for the first ``statistics_batch_num`` calls (activation statistics, or the
    gradients of the trainer's own backward passes). The copy's parameters are not the ones your
    optimizer holds, so nothing is trained: the scores are those of the model as given."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 trainer: Any = None, criterion: Any = None, sparsity_training_epochs: int = 1,
                 dependency_aware: bool = True, dummy_input: Any = None, statistics_batch_num: int = 1,
                 **nni_options: Any) -> None:
        if not callable(trainer):
            raise InvalidInputError(f"{type(self).__name__} ranks channels from data: give "
                                    "trainer=function(model, optimizer, criterion, epoch) that runs your batches.")
        if not isinstance(statistics_batch_num, int) or statistics_batch_num < 1:
            raise InvalidInputError(f"statistics_batch_num={statistics_batch_num!r}: give an int >= 1.")
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input)
        self.trainer, self.loss_criterion = trainer, criterion
        self.epochs = max(1, int(sparsity_training_epochs))
        self.statistics_batch_num = statistics_batch_num
        self.nni_options = nni_options  # e.g. activation='relu': the IR finds the nonlinearities itself

    def _score(self) -> None:  # compress() has loaded the current weights into the copy
        assert self.criterion is not None
        work = self.ir.model
        seen = {"calls": 0, "inside": False}
        records = issubclass(self.criterion, _ActivationCriterion)
        with self.criterion(self.ir) as collect:
            def forward(*args: Any, **kwargs: Any) -> Any:
                if seen["inside"] or seen["calls"] >= self.statistics_batch_num:
                    return type(work).forward(work, *args, **kwargs)
                seen["inside"] = True
                seen["calls"] += 1
                try:
                    out = collect(*args, **kwargs)
                    if records:  # the recorder's output carries no graph: run the model again for the trainer
                        out = type(work).forward(work, *args, **kwargs)
                    return out
                finally:
                    seen["inside"] = False

            work.forward = forward  # type: ignore[method-assign]
            try:
                for epoch in range(self.epochs):
                    self.trainer(work, self.optimizer, self.loss_criterion, epoch)
            finally:
                del work.forward
            if not seen["calls"]:
                raise InvalidInputError(f"{type(self).__name__}: the trainer never called the model.")
        work.zero_grad(set_to_none=True)


class ActivationAPoZRankFilterPruner(_TrainerPruner):
    """Channels whose activations are most often zero go (NNI ``ActivationAPoZRankFilterPruner``)."""

    criterion = APoZCriterion


class ActivationMeanRankFilterPruner(_TrainerPruner):
    """Channels with the smallest mean activation go (NNI ``ActivationMeanRankFilterPruner``)."""

    criterion = MeanActivationCriterion


class TaylorFOWeightFilterPruner(_TrainerPruner):
    """Channels with the smallest first-order Taylor ``sum (g * w)^2`` go, from the trainer's backward
    passes (NNI ``TaylorFOWeightFilterPruner``)."""

    criterion = TaylorFOWeightCriterion


class AGP_Pruner(_Pruner):
    """Automated gradual pruning (Zhu & Gupta 2017; NNI ``AGP_Pruner``): over ``num_iterations``
    iterations every op's sparsity rises as ``s * (1 - (1 - t / n)^3)`` (the AGP schedule of
    :func:`pruning_ir.workflows.schedule_fractions`); each iteration re-scores the masked model's
    current weights with ``pruning_algorithm`` (``"level"``, ``"l1"``, ``"l2"``, ``"slim"``: norms, so
    what is masked stays lowest), grows the masks, and runs your ``trainer`` for ``epochs_per_iteration`` epochs on
    your model (masked, so the removed weights stay zero)."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 trainer: Any = None, criterion: Any = None, num_iterations: int = 10, epochs_per_iteration: int = 1,
                 pruning_algorithm: str = "level", dummy_input: Any = None) -> None:
        # norm-based only: a masked (zero) channel must stay the lowest-ranked round after round
        algorithms = {"level": LevelPruner, "l1": L1FilterPruner, "l2": L2FilterPruner, "slim": SlimPruner}
        if pruning_algorithm not in algorithms:
            raise InvalidInputError(f"AGP_Pruner(pruning_algorithm={pruning_algorithm!r}): give one of "
                                    f"{sorted(algorithms)}.")
        if not callable(trainer):
            raise InvalidInputError("AGP_Pruner trains between its iterations: give trainer=function(model, "
                                    "optimizer, criterion, epoch).")
        if not isinstance(num_iterations, int) or num_iterations < 1:
            raise InvalidInputError(f"AGP_Pruner(num_iterations={num_iterations!r}): give an int >= 1.")
        self.inner = algorithms[pruning_algorithm](model, config_list, optimizer, True, dummy_input)
        self.model, self.config_list, self.dummy_input = model, self.inner.config_list, self.inner.dummy_input
        self.labels, self.max_abs_diff = self.inner.labels, None
        if self.inner.traced:
            self.ir = self.inner.ir
        self.optimizer, self.trainer, self.loss_criterion = optimizer, trainer, criterion
        self.num_iterations, self.epochs_per_iteration = num_iterations, max(1, int(epochs_per_iteration))
        self.history: list[float] = []

    def compress(self) -> nn.Module:
        from ..workflows import schedule_fractions

        rises = [f / 0.5 for f in schedule_fractions("agp", 0.5, self.num_iterations)]
        epoch = 0
        for rise in rises:
            scaled = ("sparsity", "sparsity_per_layer", "total_sparsity")
            self.inner.config_list = [{k: (v * rise if k in scaled else v) for k, v in c.items()}
                                      for c in self.config_list]
            self.inner.compress()  # ranks the model's current (trained, masked) weights
            self.history.append(rise)
            for _ in range(self.epochs_per_iteration):
                self.trainer(self.model, self.optimizer, self.loss_criterion, epoch)
                epoch += 1
        self.inner.config_list = self.config_list
        self.labels = self.inner.labels
        return self.model

    def speedup(self) -> nn.Module:
        out = self.inner.speedup()
        self.max_abs_diff = self.inner.max_abs_diff
        return out


class _SearchPruner(_Pruner):
    """Allocation search over per-group ratios: the config's ``sparsity`` is the fraction of the
    model's parameters to remove (the engine's parameter count from the IR, coupled slices included,
    so a candidate's cost is known without building it); ``base_algo`` ranks the channels within a
    group; ``evaluator(model) -> float`` (higher = better, as NNI's ``optimize_mode="maximize"``) scores
    a candidate on a masked copy. The search history goes to ``experiment_data_dir/search_history.json``."""

    BASE: ClassVar[dict[str, type[Criterion]]] = {"l1": L1NormCriterion, "l2": L2NormCriterion}
    """Norm criteria only: a removed (zero) channel must stay the lowest-ranked as weights change."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any, base_algo: str = "l1",
                 experiment_data_dir: str | None = None, dummy_input: Any = None, seed: int = 0) -> None:
        if not callable(evaluator):
            raise InvalidInputError(f"{type(self).__name__}: give evaluator=function(model) -> float "
                                    "(higher = better).")
        if base_algo not in self.BASE:
            raise InvalidInputError(f"{type(self).__name__}(base_algo={base_algo!r}): give one of "
                                    f"{sorted(self.BASE)}.")
        super().__init__(model, config_list, None, True, dummy_input)
        self.sparsity = _overall_sparsity(self.config_list, type(self).__name__)
        self.evaluator, self.base_algo = evaluator, base_algo
        self.experiment_data_dir = experiment_data_dir
        self.rng = random.Random(seed)
        self.history: list[dict[str, Any]] = []
        self.best_ratios: dict[int, float] = {}

    def _setup(self) -> tuple[list[LabelGroup], Any, float]:
        from ..cost import ParamsModel

        self._load_folded()
        self.BASE[self.base_algo](self.ir).score()
        params = ParamsModel(self.ir)
        return self.target_groups(), params, float(params.baseline())

    def removed(self, params: Any, base: float, ratios: dict[int, float]) -> float:
        return 1.0 - float(params.cost(self.labels_for(ratios))) / base

    def rescale(self, params: Any, base: float, ratios: dict[int, float]) -> dict[int, float]:
        """``ratios`` scaled by the smallest factor that removes the target (each capped at 0.95)."""
        def scaled(a: float) -> dict[int, float]:
            return {g: min(0.95, max(0.0, a * r)) for g, r in ratios.items()}

        hi = 1.0
        while self.removed(params, base, scaled(hi)) < self.sparsity and hi < 1e6:
            hi *= 2
        if self.removed(params, base, scaled(hi)) < self.sparsity:
            raise InvalidInputError(f"{type(self).__name__}: the selected ops cannot remove {self.sparsity} of the "
                                    f"parameters (at most {self.removed(params, base, scaled(hi)):.3f} with every "
                                    "group at 0.95); select more ops or lower sparsity.")
        lo = 0.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.removed(params, base, scaled(mid)) >= self.sparsity:
                hi = mid
            else:
                lo = mid
        return scaled(hi)

    def evaluate(self, ratios: dict[int, float], params: Any, base: float) -> float:
        from ..oracle import masked_model

        score = float(self.evaluator(masked_model(self.ir, self.labels_for(ratios))))
        removed = self.removed(params, base, ratios)
        self.history.append({"ratios": {str(g): r for g, r in ratios.items()}, "removed": removed, "score": score})
        return score

    def _write_history(self) -> None:
        if self.experiment_data_dir is None:
            return
        path = Path(self.experiment_data_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "search_history.json").write_text(json.dumps(
            {"sparsity": self.sparsity, "best": {str(g): r for g, r in self.best_ratios.items()},
             "candidates": self.history}, indent=1))


class SimulatedAnnealingPruner(_SearchPruner):
    """Simulated annealing over per-group ratios (NNI ``SimulatedAnnealingPruner``): from uniform
    ratios, each step perturbs every ratio by up to ``perturbation_magnitude``, rescales to the
    target, evaluates; a worse candidate is accepted with probability ``exp(delta / T)``; ``T``
    goes from ``start_temperature`` down to ``stop_temperature`` by ``cool_down_rate``. The best
    candidate is masked onto your model."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Any, base_algo: str = "l1",
                 start_temperature: float = 100, stop_temperature: float = 20, cool_down_rate: float = 0.9,
                 perturbation_magnitude: float = 0.35, experiment_data_dir: str | None = None,
                 dummy_input: Any = None, seed: int = 0) -> None:
        if not 0 < cool_down_rate < 1 or not start_temperature > stop_temperature > 0:
            raise InvalidInputError("SimulatedAnnealingPruner: need start_temperature > stop_temperature > 0 and "
                                    "0 < cool_down_rate < 1.")
        super().__init__(model, config_list, evaluator, base_algo, experiment_data_dir, dummy_input, seed)
        self.t0, self.t1, self.cool, self.magnitude = start_temperature, stop_temperature, cool_down_rate, \
            perturbation_magnitude

    def compress(self) -> nn.Module:
        return self._mask(self.labels_for(self.search()))

    def search(self) -> dict[int, float]:
        """Run the annealing; returns (and keeps in ``best_ratios``) the best per-group ratios."""
        groups, params, base = self._setup()
        current = self.rescale(params, base, {g.gid: 1.0 for g in groups})
        cur_score = best_score = self.evaluate(current, params, base)
        best = current
        temperature = self.t0
        while temperature > self.t1:
            cand = {g: min(0.95, max(0.0, r + self.rng.uniform(-self.magnitude, self.magnitude)))
                    for g, r in current.items()}
            cand = self.rescale(params, base, {g: max(r, 1e-3) for g, r in cand.items()})
            score = self.evaluate(cand, params, base)
            delta = score - cur_score
            if delta > 0 or self.rng.random() < math.exp(delta / temperature):
                current, cur_score = cand, score
            if score > best_score:
                best, best_score = cand, score
            temperature *= self.cool
        self.best_ratios = best
        self._write_history()
        return best


class NetAdaptPruner(_SearchPruner):
    """NetAdapt (Yang et al. 2018; NNI ``NetAdaptPruner``). Under ``torch.distributed`` the candidates
    of an iteration are split over the ranks (group ``i`` on rank ``i % world``), the scores gathered
    and the winner's fine-tuned weights sent to every rank, so all ranks end with one result: the
    one-process result when fine-tuning is deterministic. The fine-tuner and the evaluator then run
    a different number of times on each rank, so they must be rank-local (no collective calls
    inside) and see the same data on every rank. Each iteration removes
    ``sparsity_per_iteration`` more of the parameters; for every group a candidate takes all of it
    from that group, is fine-tuned briefly by ``short_term_fine_tuner(model)`` and evaluated; the
    best candidate (with its fine-tuned weights) is kept, until the config's ``sparsity``. Your
    model ends with the best candidate's weights and masks."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], short_term_fine_tuner: Any,
                 evaluator: Any, base_algo: str = "l1", sparsity_per_iteration: float = 0.05,
                 experiment_data_dir: str | None = None, dummy_input: Any = None) -> None:
        if not callable(short_term_fine_tuner):
            raise InvalidInputError("NetAdaptPruner: give short_term_fine_tuner=function(model) (a few steps of "
                                    "training on the masked candidate).")
        if not 0 < sparsity_per_iteration < 1:
            raise InvalidInputError(f"NetAdaptPruner(sparsity_per_iteration={sparsity_per_iteration!r}): give a "
                                    "fraction in (0, 1).")
        super().__init__(model, config_list, evaluator, base_algo, experiment_data_dir, dummy_input)
        self.fine_tune, self.step = short_term_fine_tuner, sparsity_per_iteration

    def compress(self) -> nn.Module:
        groups, params, base = self._setup()
        rank, world = _dist()
        current = {g.gid: 0.0 for g in groups}
        removed = 0.0
        while removed < self.sparsity - 1e-9:
            goal = min(self.sparsity, removed + self.step)
            mine: list[tuple[float, int, dict[int, float], dict[str, torch.Tensor]]] = []
            for i, g in enumerate(groups):
                if i % world != rank:
                    continue  # another rank's candidate
                lo, hi = current[g.gid], 0.95
                trial = dict(current)
                trial[g.gid] = hi
                if self.removed(params, base, trial) < goal:
                    continue  # this group alone cannot give the step
                for _ in range(20):
                    mid = (lo + hi) / 2
                    trial[g.gid] = mid
                    if self.removed(params, base, trial) >= goal:
                        hi = mid
                    else:
                        lo = mid
                trial[g.gid] = hi
                # a copy with real masks: fine-tuning cannot regrow what the candidate removes
                cand = self._mask_on(copy.deepcopy(self.ir.model), self.labels_for(trial))
                self.fine_tune(cand)
                score = float(self.evaluator(cand))
                mine.append((score, i, trial, {k: v.cpu() for k, v in folded_state(cand).items()}))
            chosen, state, entries = _best_candidate(mine, rank, world)
            for score, _i, trial in entries:
                self.history.append({"ratios": {str(k): v for k, v in trial.items()}, "removed": goal,
                                     "score": score})
            if chosen is None:
                raise InvalidInputError(f"NetAdaptPruner: no single group can remove {self.step} more of the "
                                        "parameters; lower sparsity_per_iteration.")
            current = chosen
            with torch.no_grad():  # the chosen candidate's fine-tuned weights carry on
                for k, t in self.ir.model.state_dict().items():
                    t.copy_(state[k])
            self.BASE[self.base_algo](self.ir).score()
            removed = self.removed(params, base, current)
        self.best_ratios = current
        self._write_history()
        with torch.no_grad():  # your model takes the final weights (as NNI's), then the masks
            state = self.ir.model.state_dict()
            params_now = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
            for k, t in state.items():
                target = params_now.get(k + "_orig", params_now.get(k))
                if target is not None:
                    target.copy_(t)
        return self._mask(self.labels_for(current))


def _per_op_only(config_list: Any, owner: str) -> None:
    if isinstance(config_list, list) and any(isinstance(c, dict) and "total_sparsity" in c for c in config_list):
        raise InvalidInputError(f"{owner}: total_sparsity is not supported for single-weight masks here; give "
                                "sparsity per op, or use pruning_ir.sparsity.unstructured(model, s, scope='global').")


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _best_candidate(mine: list[tuple[float, int, dict[int, float], dict[str, torch.Tensor]]], rank: int, world: int
                    ) -> tuple[Any, Any, list[tuple[float, int, dict[int, float]]]]:
    """The best candidate over every rank's (highest score; the lowest group index on ties): its
    ratios and fine-tuned state (sent by the rank that made it), and every candidate in group order."""
    entries = [(score, i, trial) for score, i, trial, _ in mine]
    if world > 1:
        import torch.distributed as dist

        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, entries)
        entries = [e for part in parts for e in part]
    entries.sort(key=lambda e: e[1])
    if not entries:
        return None, None, []
    top = max(entries, key=lambda e: (e[0], -e[1]))
    state = next((st for score, i, _t, st in mine if i == top[1]), None)
    if world > 1:
        import torch.distributed as dist

        box = [state]
        dist.broadcast_object_list(box, src=top[1] % world)
        state = box[0]
    return top[2], state, entries


class ADMMPruner(_Pruner):
    """ADMM-regularised training toward the config's sparsity (Zhang et al. 2018; NNI ``ADMMPruner``),
    then a one-shot ``base_algo`` pruning (``"l1"``, ``"l2"``: channels, coupled groups aligned;
    ``"level"``: single weights). For ``num_iterations`` rounds your ``trainer(model, optimizer=,
    criterion=, epoch=, callback=)`` trains the model (in place, as NNI) for ``epochs_per_iteration``
    epochs; the ``callback()`` you call between ``backward()`` and ``step()`` adds
    ``row * (W - Z + U)`` to each selected weight's gradient; then ``Z`` = the projection of ``W + U``
    onto the sparse set (per op: its lowest output channels by L1 of ``W + U``, or lowest entries) and
    ``U += W - Z``. ``optimizer`` defaults to Adam (lr 1e-3) over the model, ``criterion`` to
    cross-entropy."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], trainer: Any, num_iterations: int = 30,
                 epochs_per_iteration: int = 5, row: float = 1e-4, base_algo: str = "l1", dummy_input: Any = None,
                 optimizer: Any = None, criterion: Any = None) -> None:
        bases = {"l1": L1NormCriterion, "l2": L2NormCriterion, "level": None}
        if base_algo not in bases:
            raise InvalidInputError(f"ADMMPruner(base_algo={base_algo!r}): give one of {sorted(bases)}.")
        if not callable(trainer):
            raise InvalidInputError("ADMMPruner: give trainer=function(model, optimizer, criterion, epoch, callback).")
        if base_algo == "level":
            _per_op_only(config_list, "ADMMPruner(base_algo='level')")
        super().__init__(model, config_list, optimizer, True, dummy_input, trace=base_algo != "level")
        self.trainer, self.loss_criterion, self.base_algo = trainer, criterion, base_algo
        self.base = bases[base_algo]
        self.num_iterations, self.epochs, self.row = int(num_iterations), int(epochs_per_iteration), float(row)
        self.callbacks = 0

    def _project(self, t: torch.Tensor, sparsity: float, out_axis: int) -> torch.Tensor:
        if self.base_algo == "level":
            k = round(sparsity * t.numel())
            drop = torch.argsort(t.abs().flatten(), stable=True)[:k]
            return t.flatten().index_fill(0, drop, 0).reshape(t.shape)
        norms = t.abs().movedim(out_axis, 0).reshape(t.shape[out_axis], -1)
        norms = norms.sum(1) if self.base_algo == "l1" else norms.square().sum(1)
        drop = torch.argsort(norms, stable=True)[: math.floor(sparsity * t.shape[out_axis] + 1e-9)]
        return t.index_fill(out_axis, drop, 0)

    def compress(self) -> nn.Module:
        ops = self.op_sparsity()
        named = dict(self.model.named_modules())
        weights = {op: named[op].weight for op in ops}
        axes = {op: _out_axis(named[op]) for op in ops}
        z = {op: self._project(w.detach().clone(), ops[op][1], axes[op]) for op, w in weights.items()}
        u = {op: torch.zeros_like(w) for op, w in weights.items()}
        optimizer = self.optimizer or torch.optim.Adam(self.model.parameters(), lr=1e-3)
        criterion = self.loss_criterion or nn.CrossEntropyLoss()

        def callback() -> None:  # the ADMM penalty's gradient, row * (W - Z + U)
            self.callbacks += 1
            with torch.no_grad():
                for op, w in weights.items():
                    if w.grad is not None:
                        w.grad.add_(self.row * (w - z[op] + u[op]))

        for _ in range(self.num_iterations):
            for epoch in range(self.epochs):
                self.trainer(self.model, optimizer=optimizer, criterion=criterion, epoch=epoch, callback=callback)
            with torch.no_grad():
                for op, w in weights.items():
                    z[op] = self._project(w.detach() + u[op], ops[op][1], axes[op])
                    u[op] += w.detach() - z[op]
        if self.base is None:
            for value in sorted({v for _, v, _ in ops.values()}):
                unstructured(self.model, value, modules=[n for n, (_, v, _) in ops.items() if v == value])
            self.labels = []
            return self.model
        self._load_folded()
        self.base(self.ir).score()
        return self._mask(self.select())

    def speedup(self) -> nn.Module:
        if self.base is None:
            self._load_folded()
            self.max_abs_diff = 0.0
            return copy.deepcopy(self._clean)
        return super().speedup()


class AutoCompressPruner:
    """AutoCompress (Liu et al. 2020; NNI ``AutoCompressPruner``): ``num_iterations`` rounds, each
    removing the same fraction ``1 - (1 - s) ** (1 / n)`` of the current model's parameters: simulated
    annealing finds the per-group ratios (:class:`SimulatedAnnealingPruner`), ADMM training pulls those
    channels toward zero and prunes them (:class:`ADMMPruner`), and the IR cuts them out; the next
    round starts from that slim model. ``compress()`` returns the final slim model; your model is
    not changed (the rounds work on a copy). ``optimize_mode="minimize"`` negates the evaluator."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], trainer: Any, evaluator: Any,
                 dummy_input: Any, num_iterations: int = 3, optimize_mode: str = "maximize", base_algo: str = "l1",
                 start_temperature: float = 100, stop_temperature: float = 20, cool_down_rate: float = 0.9,
                 perturbation_magnitude: float = 0.35, admm_num_iterations: int = 30, admm_training_epochs: int = 5,
                 row: float = 1e-4, experiment_data_dir: str | None = None, seed: int = 0) -> None:
        if optimize_mode not in ("maximize", "minimize"):
            raise InvalidInputError(f"AutoCompressPruner(optimize_mode={optimize_mode!r}): 'maximize' or 'minimize'.")
        if base_algo not in ("l1", "l2"):
            raise InvalidInputError(f"AutoCompressPruner(base_algo={base_algo!r}): give 'l1' or 'l2'.")
        if not callable(evaluator) or not callable(trainer):
            raise InvalidInputError("AutoCompressPruner: give trainer=function(model, optimizer, criterion, epoch, "
                                    "callback) and evaluator=function(model) -> float.")
        checked = _check_config(config_list)
        self.model, self.config_list = model, checked
        self.sparsity = _overall_sparsity(checked, "AutoCompressPruner")
        self.trainer, self.dummy_input, self.rounds = trainer, dummy_input, int(num_iterations)
        sign = 1.0 if optimize_mode == "maximize" else -1.0
        self.evaluator = lambda m: sign * float(evaluator(m))
        self.base_algo, self.seed = base_algo, seed
        self.sa = {"start_temperature": start_temperature, "stop_temperature": stop_temperature,
                   "cool_down_rate": cool_down_rate, "perturbation_magnitude": perturbation_magnitude}
        self.admm_iterations, self.admm_epochs, self.row = int(admm_num_iterations), int(admm_training_epochs), row
        self.experiment_data_dir = experiment_data_dir
        self.rounds_done: list[dict[str, Any]] = []

    def compress(self) -> nn.Module:
        current = copy.deepcopy(self.model)
        per_round = 1 - (1 - self.sparsity) ** (1 / self.rounds)
        for r in range(self.rounds):
            config = [{**c, "sparsity": per_round} if not c.get("exclude") else c for c in self.config_list]
            config = [{k: v for k, v in c.items() if k not in ("sparsity_per_layer", "total_sparsity",
                                                                 "max_sparsity_per_layer")} | (
                {"sparsity": per_round} if not c.get("exclude") else {}) for c in config]
            sa = SimulatedAnnealingPruner(current, config, self.evaluator, self.base_algo, **self.sa,
                                          experiment_data_dir=None if self.experiment_data_dir is None else
                                          str(Path(self.experiment_data_dir) / f"round{r}"),
                                          dummy_input=self.dummy_input, seed=self.seed + r)
            ratios = sa.search()
            ops = [op for op in sa.op_sparsity() if (g := sa._group_of(op)) is not None and g.gid in ratios]
            admm_config = [{"sparsity": ratios[g.gid], "op_names": [op]} for op in ops
                           if (g := sa._group_of(op)) is not None]
            admm = ADMMPruner(current, admm_config, self.trainer, self.admm_iterations, self.admm_epochs, self.row,
                              self.base_algo, self.dummy_input)
            admm.compress()
            current = admm.speedup()
            self.rounds_done.append({"ratios": ratios, "max_abs_diff": admm.max_abs_diff,
                                     "params": sum(t.numel() for t in current.parameters())})
        return current


class LevelPruner(_Pruner):
    """Single weights with the smallest magnitude go (NNI ``LevelPruner``; fine-grained:
    ``speedup()`` keeps the shapes and returns the masks folded in; no ``dummy_input`` needed).
    ``sparsity`` per op only: for one threshold over several weights use
    :func:`pruning_ir.sparsity.unstructured` with ``scope="global"``."""

    structured = False

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 dependency_aware: bool = True, dummy_input: Any = None) -> None:
        _per_op_only(config_list, type(self).__name__)
        super().__init__(model, config_list, optimizer, dependency_aware, dummy_input)

    def compress(self) -> nn.Module:
        ops = self.op_sparsity()
        for value in sorted({v for _, v, _ in ops.values()}):
            names = [n for n, (_, v, _) in ops.items() if v == value]
            unstructured(self.model, value, modules=names)
        self.labels = []
        return self.model

    def speedup(self) -> nn.Module:
        """A model of the same shapes with the masks folded in (fine-grained sparsity does not change
        shapes; ``benchmarks/sparse_speed.py`` measures when sparse kernels pay on CPU)."""
        self._load_folded()
        self.max_abs_diff = 0.0
        return copy.deepcopy(self._clean)


class LotteryTicketPruner(LevelPruner):
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; NNI
    ``LotteryTicketPruner``), driven by your training loop as in NNI::

        pruner = LotteryTicketPruner(model, [{"prune_iterations": 5, "sparsity": 0.8, "op_types": ["default"]}],
                                     optimizer)
        pruner.compress()
        for i in pruner.get_prune_iterations():
            pruner.prune_iteration_start()
            train(model)                      # iteration 0 trains the dense model

    At the start of iteration ``i >= 1`` each op's masks grow (by magnitude of the trained weights)
    to sparsity ``1 - (1 - s) ** (i / n)``, then the weights (under the masks), the optimizer's state
    and the learning-rate scheduler's go back to what they were at ``compress()`` (``reset_weights``).
    """

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], optimizer: Any = None,
                 lr_scheduler: Any = None, reset_weights: bool = True, dummy_input: Any = None) -> None:
        super().__init__(model, config_list, optimizer, True, dummy_input)
        counts = {c.get("prune_iterations") for c in self.config_list if not c.get("exclude")}
        first = next(iter(counts))
        if len(counts) != 1 or not isinstance(first, int) or isinstance(first, bool) or first < 1:
            raise InvalidInputError("LotteryTicketPruner: give the same int prune_iterations >= 1 in every "
                                    f"config_list entry (got {sorted(map(str, counts))}).")
        self.prune_iterations: int = first
        self.lr_scheduler, self.reset_weights = lr_scheduler, reset_weights
        self.iteration = -1
        self._initial: dict[str, Any] = {}

    def compress(self) -> nn.Module:
        self._initial = {"model": folded_state(self.model),
                         "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None,
                         "scheduler": copy.deepcopy(self.lr_scheduler.state_dict()) if self.lr_scheduler else None}
        self.iteration = -1
        return self.model

    def get_prune_iterations(self) -> range:
        return range(self.prune_iterations + 1)

    def prune_iteration_start(self) -> None:
        if not self._initial:
            raise InvalidInputError("LotteryTicketPruner: call compress() before prune_iteration_start().")
        self.iteration += 1
        if self.iteration == 0:
            return
        if self.iteration > self.prune_iterations:
            raise InvalidInputError(f"LotteryTicketPruner: only {self.prune_iterations} pruning iterations "
                                    "(see get_prune_iterations()).")
        ops = self.op_sparsity()
        for value in sorted({v for _, v, _ in ops.values()}):
            names = [n for n, (_, v, _) in ops.items() if v == value]
            unstructured(self.model, 1 - (1 - value) ** (self.iteration / self.prune_iterations), modules=names)
        if self.reset_weights:
            self._rewind()

    def _rewind(self) -> None:
        """Initial weights into the (masked) model: a masked parameter's ``*_orig`` takes them."""
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for name, value in self._initial["model"].items():
                target = params.get(name + "_orig", params.get(name, buffers.get(name)))
                if target is not None:
                    target.copy_(value)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self._initial["optimizer"]))
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(copy.deepcopy(self._initial["scheduler"]))


__all__: Sequence[str] = [
    "ADMMPruner",
    "AGP_Pruner",
    "ActivationAPoZRankFilterPruner",
    "ActivationMeanRankFilterPruner",
    "AutoCompressPruner",
    "FPGMPruner",
    "L1FilterPruner",
    "L2FilterPruner",
    "LevelPruner",
    "LotteryTicketPruner",
    "NetAdaptPruner",
    "SimulatedAnnealingPruner",
    "SlimPruner",
    "TaylorFOWeightFilterPruner",
]
