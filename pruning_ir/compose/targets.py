"""Targets: *what* is pruned.

* :class:`Channels`: label groups of the IR (channels, attention heads, GQA groups, conv groups:
  whatever the engine coupled), restricted to the groups that are the output channels of the
  chosen modules. Pruning them makes a physically smaller model.
* :class:`Elements`, :class:`NM`, :class:`Blocks`: parts of weight tensors (single entries, N
  of every M along the input dim, tiles), applied as ``torch.nn.utils.prune`` masks by
  :mod:`pruning_ir.sparsity`; the shapes do not change.

Modules are chosen as in :func:`pruning_ir.sparsity.select_weights`: ``modules`` is a list of module
names and/or types (default: every module for :class:`Channels`; every ``nn.Linear`` / ``nn.Conv*``
for the fine-grained targets); ``exclude`` lists module names (or prefixes ending in ``.``) left
whole. For :class:`Channels`, a group is excluded when any of its output channels belongs to an
excluded module: coupled channels (a residual add) go together or not at all.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from .._ir.labels import LabelGroup
    from ..ir import PruningIR

ModuleSpec = Sequence["str | type[nn.Module]"]


def out_axis(module: nn.Module) -> int:
    """The weight axis of a module's output channels: 1 for HF ``Conv1D`` (``[in, out]``) and transposed
    convolutions (``[in, out / groups, *k]``), else 0."""
    return 1 if type(module).__name__ == "Conv1D" or getattr(module, "transposed", False) else 0


def _outerness(ir: PruningIR, g: LabelGroup, name: str, axis: int) -> int:
    """How often ``g``'s slot changes along ``name``'s axis ``axis``: few for the outer factor of a
    product axis (heads: ``[0, 0, .., 1, 1, ..]``), many for the inner one (the width inside a head)."""
    from .._ir.axes import slot_map

    snap = ir.snapshot()
    vid = snap.graph.params.get(name)
    if vid is None:
        return 0
    slots = slot_map(snap.spaces, snap.graph.values[vid].axes[axis], g.leaf)
    slots = slots[slots >= 0]
    return int((slots[1:] != slots[:-1]).sum()) if slots.numel() > 1 else 0


def output_groups(ir: PruningIR, path: str) -> list[LabelGroup]:
    """The prunable groups holding the output channels of module ``path`` (its weight along
    :func:`out_axis`, or its bias), outer factor first: one group for a plain layer; for a product
    axis (a query projection's heads x head width, a grouped convolution's groups x channels per
    group) one per prunable factor. Empty when none is prunable (the model's output, or a coupling
    the engine cannot slice: ``ir.report()`` says why)."""
    module = ir.model.get_submodule(path)
    prefix = f"{path}." if path else ""
    wanted = [(f"{prefix}weight", out_axis(module)), (f"{prefix}bias", 0)]
    found = []
    for g in ir.prunable_label_groups():
        hit = next((m for m in wanted if m in g.members), None)
        if hit is not None:
            found.append((_outerness(ir, g, *hit), g.gid, g))
    return [g for _, _, g in sorted(found, key=lambda t: (t[0], t[1]))]


def output_group(ir: PruningIR, path: str) -> LabelGroup | None:
    """The outer group of :func:`output_groups` (the one a per-layer fraction of output channels
    applies to: whole heads, whole convolution groups), or ``None``."""
    found = output_groups(ir, path)
    return found[0] if found else None


def group_key(ir: PruningIR, g: LabelGroup) -> tuple[object, ...]:
    """Identify ``g`` across the IRs of successive slim models (a schedule's steps): the parameter
    axes it slices (module names survive pruning) and its rank among the groups slicing the same
    axes, outer factor first."""
    members = tuple(sorted(g.members))
    if not members:
        return (members, g.gid)
    twins = [h for h in ir.label_groups() if tuple(sorted(h.members)) == members]
    name, axis = members[0]
    order = sorted(twins, key=lambda h: (_outerness(ir, h, name, axis), h.gid))
    return (members, [h.gid for h in order].index(g.gid))


def _matched(model: nn.Module, spec: ModuleSpec | None, owner: str) -> list[str]:
    named = dict(model.named_modules())
    if spec is None:
        return list(named)
    bad = [s for s in spec if not isinstance(s, (str, type))]
    if bad:
        raise InvalidInputError(f"{owner}(modules={bad[:3]!r}): give module names (str) or module types.")
    missing = [s for s in spec if isinstance(s, str) and s not in named]
    if missing:
        raise InvalidInputError(f"{owner}: no module named {missing[0]!r} in {type(model).__name__}; "
                                "see model.named_modules().")
    types = tuple(s for s in spec if isinstance(s, type))
    names = {s for s in spec if isinstance(s, str)}
    return [n for n, m in named.items() if n in names or (types and isinstance(m, types))]


def _excluded(model: nn.Module, exclude: Sequence[str], owner: str) -> list[str]:
    named = dict(model.named_modules())
    unknown = [e for e in exclude if not e.endswith(".") and e not in named]
    if unknown:
        raise InvalidInputError(f"{owner}(exclude=...): no module named {unknown[0]!r} in {type(model).__name__}.")
    return [n for n in named if any(n == e or (e.endswith(".") and n.startswith(e)) for e in exclude)]


@dataclass(frozen=True)
class Channels:
    """Label groups of the IR: the output channels of ``modules`` (default: every prunable group),
    minus those of ``exclude``. Each group keeps at least ``min_kept`` labels and loses at most
    ``max_ratio`` of them, of its size in the original model (NNI's ``max_sparsity_per_layer``). A
    module whose output axis is a product (a query projection: heads x head width) contributes every
    prunable factor, or with ``outer=True`` only the outer one (whole heads, whole convolution
    groups: NNI's filters of that op); an excluded module freezes every factor."""

    modules: ModuleSpec | None = None
    exclude: Sequence[str] = ()
    min_kept: int = 1
    max_ratio: float = 1.0
    outer: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.modules, (str, type)):  # one module: not a sequence of its characters
            object.__setattr__(self, "modules", (self.modules,))
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        if not isinstance(self.min_kept, int) or isinstance(self.min_kept, bool) or self.min_kept < 1:
            raise InvalidInputError(f"Channels(min_kept={self.min_kept!r}): give an int >= 1.")
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, (int, float)) or \
                not 0 < self.max_ratio <= 1:
            raise InvalidInputError(f"Channels(max_ratio={self.max_ratio!r}): give a fraction in (0, 1].")

    structured = True

    def groups(self, ir: PruningIR) -> list[LabelGroup]:
        """The prunable groups of the target: in the IR's order, or with ``modules``, in the order
        of the matching modules (``model.named_modules()``), which a search visits them in (its
        choice among equally scored candidates follows it). Selected modules whose output channels
        are not prunable are named in a warning (never silently skipped)."""
        frozen = {g.gid for p in _excluded(ir.model, self.exclude, "Channels") for g in output_groups(ir, p)}
        if self.modules is None:
            return [g for g in ir.prunable_label_groups() if g.gid not in frozen]
        chosen: dict[int, LabelGroup] = {}
        lost = []
        for path in _matched(ir.model, self.modules, "Channels"):
            if not any(True for _ in ir.model.get_submodule(path).parameters(recurse=False)):
                continue  # a container: its children are matched on their own
            found = output_groups(ir, path)
            if not found:
                lost.append(path)
            found = found[:1] if self.outer else found
            chosen.update((g.gid, g) for g in found if g.gid not in frozen)
        if lost:
            warnings.warn(f"Channels: the output channels of {lost[:5]} are not a prunable group (the model's "
                          "output, or a coupling the engine cannot slice: ir.report() says why); they stay whole.",
                          stacklevel=3)
        return list(chosen.values())  # in the modules' order (NNI's search pruners visit layers so)

    def floor(self, g: LabelGroup, original: int | None = None) -> int:
        """Labels group ``g`` keeps at least: ``min_kept``, and ``1 - max_ratio`` of its size in the
        original model (``original``; default: its size now)."""
        size = g.size if original is None else original
        most = math.floor(self.max_ratio * size + 1e-9)
        return min(g.size, max(self.min_kept, size - most))


@dataclass(frozen=True, kw_only=True)
class _Fine:
    modules: ModuleSpec | None = None
    exclude: Sequence[str] = ()

    structured = False

    def __post_init__(self) -> None:
        if isinstance(self.modules, (str, type)):
            object.__setattr__(self, "modules", (self.modules,))
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))

    def weights(self, model: nn.Module) -> list[str]:
        """Names of the modules whose ``weight`` is masked."""
        from ..sparsity import select_weights

        return [n for n, _ in select_weights(model, self.modules, self.exclude)]


@dataclass(frozen=True)
class Elements(_Fine):
    """Single weight entries (unstructured sparsity)."""


@dataclass(frozen=True)
class Blocks(_Fine):
    """Tiles of ``shape`` of each weight seen as ``[out, everything else]``."""

    shape: tuple[int, int] = (4, 4)


@dataclass(frozen=True)
class NM(_Fine):
    """N of every M consecutive weights along the input dim (2:4 for sparse tensor cores); the
    sparsity is ``1 - n/m`` by construction."""

    n: int = 2
    m: int = 4


Target = Channels | Elements | Blocks | NM
