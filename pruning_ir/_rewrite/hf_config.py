"""Keep a Hugging Face model's ``config`` true after pruning.

``from_pretrained`` rebuilds a model from its ``config`` and then loads the weights, so a
slim model saved with ``save_pretrained`` only loads back if the config describes the slim
shapes. Which config field sizes which tensor is the model class's business, so the rule
here is checked rather than guessed: the size-like integer fields whose value some pruned
axis or recorded size had are given candidate new values (the sizes those became), and
candidate configs are instantiated on the ``meta`` device (no memory, no arithmetic). First
each field alone: the value that gets most parameter axes to their slim sizes when only that
field changes; then those values together, kept when the build's shapes equal the slim
model's (``MAX_FIELD_BUILDS`` builds). Failing that, combinations with the fewest changed
fields (``MAX_BUILDS`` builds). When parameters that had one shape in every layer have several
now (layers pruned differently, the usual result of global or budget selection), no build is
tried; then, as when no candidate matches, the config is left as it was, the rewrite log says
so and ``prune`` warns once, pointing to :func:`~pruning_ir.save_pruned`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._ir.axes import kept_size
from .._ir.sizes import size_like
from .._ir.snapshot import Snapshot

log = logging.getLogger(__name__)

MAX_CANDIDATES = 64  # combinations looked at
MAX_BUILDS = 4  # of which instantiated on meta (the config's own validation rejects most)
MAX_FIELD_BUILDS = 16  # meta builds of the field-by-field search


def _is_hf(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return (config is not None and hasattr(config, "to_dict") and hasattr(type(model), "config_class")
            and type(config).__module__.startswith("transformers"))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    hf_log = logging.getLogger("transformers")
    level = hf_log.level
    hf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_log.setLevel(level)


_SHAPES_CACHE: dict[tuple[type, str], dict[str, tuple[int, ...]] | None] = {}
_CACHE_LIMIT = 64


def _meta_shapes(model: nn.Module, config: Any) -> dict[str, tuple[int, ...]] | None:
    """Parameter/buffer shapes of ``type(model)(config)`` built on meta; cached per class and
    config (a search that prunes many candidates to the same sizes builds each config once)."""
    try:
        key = (type(model), json.dumps(config.to_dict(), sort_keys=True, default=str))
    except Exception:  # a config that does not serialise: build without caching
        key = None
    if key is not None and key in _SHAPES_CACHE:
        return _SHAPES_CACHE[key]
    shapes = _build_meta_shapes(model, config)
    if key is not None:
        if len(_SHAPES_CACHE) >= _CACHE_LIMIT:
            _SHAPES_CACHE.pop(next(iter(_SHAPES_CACHE)))
        _SHAPES_CACHE[key] = shapes
    return shapes


def _build_meta_shapes(model: nn.Module, config: Any) -> dict[str, tuple[int, ...]] | None:
    try:
        with _quiet_transformers(), torch.device("meta"):
            ref = type(model)(config)
    except Exception as exc:  # a candidate the model class rejects (e.g. heads not dividing)
        log.debug("config candidate rejected by %s: %s", type(model).__name__, exc)
        return None
    return _shapes(ref)


def size_changes(snap: Snapshot, kept: dict[int, torch.Tensor], params: Mapping[str, torch.Tensor]
                 ) -> dict[int, set[int]]:
    """Old size -> the new sizes it became, on the slim model's parameter axes (``params``: its
    parameters by every name) and in the sizes recorded in the trace (head counts, split sizes)."""
    out: dict[int, set[int]] = {}
    for name, vid in snap.graph.params.items():
        p = params.get(name)
        if p is None:
            continue
        for old, new in zip(snap.graph.values[vid].shape, p.shape, strict=False):
            if old != new:
                out.setdefault(int(old), set()).add(int(new))
    for node in snap.graph.nodes:
        for f in node.facts:
            if snap.spaces.any_positional(f.layout):
                continue
            new = kept_size(snap.spaces, f.layout, kept)
            if new != f.old:
                out.setdefault(int(f.old), set()).add(int(new))
    return out


def _layer_pattern(name: str) -> str:
    return _LAYER_INDEX.sub(".#.", name)


_LAYER_INDEX = re.compile(r"\.\d+\.")


def layers_differ(snap: Snapshot, params: Mapping[str, torch.Tensor]) -> str | None:
    """An example of parameters that had one shape in every layer (the same name up to the layer
    index) and have several now (``params``: the slim model's, by every name), or ``None``: then
    no config can describe the slim model."""
    old: dict[str, set[tuple[int, ...]]] = {}
    new: dict[str, set[tuple[int, ...]]] = {}
    for name, vid in snap.graph.params.items():
        p = params.get(name)
        if p is None:
            continue
        key = _layer_pattern(name)
        old.setdefault(key, set()).add(tuple(snap.graph.values[vid].shape))
        new.setdefault(key, set()).add(tuple(p.shape))
    for key, shapes in new.items():
        if len(shapes) > 1 and len(old[key]) == 1:
            return f"{key}: {' / '.join('x'.join(map(str, s)) for s in sorted(shapes))}"
    return None


def _sliced_unsaved_buffers(snap: Snapshot, model: nn.Module) -> list[str]:
    """Non-persistent buffers (not in the state dict) whose shape pruning changed."""
    out = []
    for path, mod in model.named_modules():
        for name in mod._non_persistent_buffers_set:
            full = f"{path}.{name}" if path else name
            vid = snap.graph.params.get(full)
            b = mod._buffers.get(name)
            if vid is not None and b is not None and tuple(b.shape) != tuple(snap.graph.values[vid].shape):
                out.append(full)
    return out


def _matching(shapes: dict[str, tuple[int, ...]] | None, target: dict[str, tuple[int, ...]]) -> int:
    """How many axes of ``target`` a candidate's ``shapes`` get right (-1: the class refused it)."""
    if shapes is None:
        return -1
    return sum(a == b for k, t in target.items() for a, b in zip(shapes.get(k, ()), t, strict=False))


def _with(config: Any, values: dict[str, int]) -> Any | None:
    """A copy of ``config`` with ``values`` set, or ``None`` when the config class refuses them."""
    candidate = copy.deepcopy(config)
    try:
        for n, v in values.items():
            setattr(candidate, n, v)
        validate = getattr(candidate, "validate", None)
        if callable(validate):
            validate()
    except Exception as exc:  # the config class itself refuses these sizes
        log.debug("config candidate %s refused: %s", values, exc)
        return None
    return candidate


class _Builds:
    """Meta builds of candidate configs against the slim shapes, at most ``limit`` of them."""

    def __init__(self, model: nn.Module, config: Any, target: dict[str, tuple[int, ...]], limit: int) -> None:
        self.model, self.config, self.target, self.left = model, config, target, limit

    def shapes(self, values: dict[str, int]) -> dict[str, tuple[int, ...]] | None:
        """The shapes the config with ``values`` builds; ``None`` when refused or out of builds."""
        if self.left <= 0:
            return None
        candidate = _with(self.config, values)
        if candidate is None:
            return None
        self.left -= 1
        return _meta_shapes(self.model, candidate)


def _field_by_field(model: nn.Module, config: Any, fields: dict[str, int], changes: dict[int, set[int]],
                    target: dict[str, tuple[int, ...]]) -> dict[str, int] | None:
    """Field values whose build has the slim shapes, in ``MAX_FIELD_BUILDS`` builds at most: first
    each field alone (the value that gets most parameter axes to their slim sizes when only that
    field changes), then the fields that gained nothing alone (a product such as heads x head
    size changes only when both do) in combinations on top, fewest changed fields first."""
    builds = _Builds(model, config, target, MAX_FIELD_BUILDS)
    base = _matching(builds.shapes({}), target)
    chosen: dict[str, int] = {}
    for n in sorted(fields):
        best, gain = fields[n], 0
        for v in sorted(changes[fields[n]], reverse=True):
            g = _matching(builds.shapes({n: v}), target) - base
            if g > gain:
                best, gain = v, g
        if best != fields[n]:
            chosen[n] = best
    rest = [n for n in sorted(fields) if n not in chosen]
    options = [[fields[n]] + sorted(changes[fields[n]], reverse=True) for n in rest]
    combos = sorted(itertools.islice(itertools.product(*options), MAX_CANDIDATES),
                    key=lambda c: sum(v != fields[n] for n, v in zip(rest, c, strict=True)))
    for combo in combos:
        values = {**chosen, **{n: v for n, v in zip(rest, combo, strict=True) if v != fields[n]}}
        if values and builds.shapes(values) == target:
            return values
        if builds.left <= 0:
            break
    return None


def _joint(model: nn.Module, config: Any, fields: dict[str, int], changes: dict[int, set[int]],
           target: dict[str, tuple[int, ...]]) -> dict[str, int] | None:
    """The combination of field values with fewest changes whose build has the slim shapes
    (``MAX_BUILDS`` builds at most)."""
    names = sorted(fields)
    # each field keeps its value or takes one the same size became; fewest changed fields first
    # (a size that several fields hold, like hidden_size == heads * head_dim, need not change)
    options = [[fields[n]] + sorted(changes[fields[n]], reverse=True) for n in names]
    combos = sorted(itertools.islice(itertools.product(*options), MAX_CANDIDATES),
                    key=lambda c: sum(v != fields[n] for n, v in zip(names, c, strict=True)))
    builds = 0
    for combo in combos:
        values = {n: v for n, v in zip(names, combo, strict=True) if v != fields[n]}
        if not values:
            continue  # the shapes changed, so the unchanged config cannot describe them
        if builds >= MAX_BUILDS:
            break
        candidate = _with(config, values)
        if candidate is None:
            continue
        builds += 1
        if _meta_shapes(model, candidate) == target:
            return values
    return None


UNDESCRIBED = ("one config cannot describe the slim model, so it is left unchanged and save_pretrained/"
               "from_pretrained would rebuild the original shapes: save it with pruning_ir.save_pruned")


def update_hf_config(model: nn.Module, snap: Snapshot, kept: dict[int, torch.Tensor], log_: list[str]) -> str | None:
    """Set the size fields of ``model.config`` (a Hugging Face model) to the slim sizes; return why
    that was impossible (also written to ``log_``), or ``None``."""
    if not _is_hf(model):
        return None
    config = model.config
    params = dict(model.named_parameters(remove_duplicate=False))
    changes = size_changes(snap, kept, params)
    fields = {k: v for k, v in vars(config).items() if type(v) is int and size_like(k) and v in changes}
    if not fields:
        return None
    differ = layers_differ(snap, params)
    recomputed = _sliced_unsaved_buffers(snap, model)
    if recomputed:
        why = (f"config: buffers {recomputed[:3]} were sliced, and save_pretrained does not save them: "
               "from_pretrained would compute them anew from the config, with other values than the kept "
               f"ones (rotary frequencies, when head sizes are pruned); {UNDESCRIBED}")
        log_.append(why)
        return why
    if differ is not None:
        why = f"config: layers were pruned to different widths ({differ}); {UNDESCRIBED}"
        log_.append(why)
        return why
    target = _shapes(model)
    values = _field_by_field(model, config, fields, changes, target) or _joint(model, config, fields, changes, target)
    if values is None:
        why = (f"config: no values of {', '.join(sorted(fields))} that {type(config).__name__} accepts rebuild the "
               f"slim {type(model).__name__}'s shapes (sizes the config derives from others were pruned, e.g. a "
               f"head size from hidden_size / heads); {UNDESCRIBED}")
        log_.append(why)
        return why
    for n, v in sorted(values.items()):
        log_.append(f"config.{n}: {fields[n]} -> {v}")
        setattr(config, n, v)
    return None
