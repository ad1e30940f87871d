"""Keep a Hugging Face model's ``config`` true after pruning.

``from_pretrained`` rebuilds a model from its ``config`` and then loads the weights, so a
slim model saved with ``save_pretrained`` only loads back if the config describes the slim
shapes. Which config field sizes which tensor is the model class's business, so the rule
here is checked rather than guessed: the size-like integer fields whose value some pruned
axis or recorded size had are given candidate new values (the sizes those became), each
candidate config is instantiated on the ``meta`` device (no memory, no arithmetic), and the
first one whose parameter and buffer shapes equal the slim model's is kept (at most
``MAX_BUILDS`` builds). When parameter axes of one size became several sizes (layers pruned
differently, the usual result of global or budget selection), no build is tried; then, as
when no candidate matches, the config is left as it was and the rewrite log says so.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
from typing import Any

import torch
from torch import nn

from .._ir.axes import kept_size
from .._ir.sizes import size_like
from .._ir.snapshot import Snapshot

log = logging.getLogger(__name__)

MAX_CANDIDATES = 64  # combinations looked at
MAX_BUILDS = 4  # of which instantiated on meta (the config's own validation rejects most)


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


def size_changes(snap: Snapshot, kept: dict[int, torch.Tensor],
                 model: nn.Module) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Old size -> the new sizes it became: (parameter axes of the slim model only; those and
    the sizes recorded in the trace, such as head counts and split sizes)."""
    out: dict[int, set[int]] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, vid in snap.graph.params.items():
        p = params.get(name)
        if p is None:
            continue
        for old, new in zip(snap.graph.values[vid].shape, p.shape, strict=False):
            if old != new:
                out.setdefault(int(old), set()).add(int(new))
    axes = {k: set(v) for k, v in out.items()}
    for node in snap.graph.nodes:
        for f in node.facts:
            if snap.spaces.any_positional(f.layout):
                continue
            new = kept_size(snap.spaces, f.layout, kept)
            if new != f.old:
                out.setdefault(int(f.old), set()).add(int(new))
    return axes, out


def update_hf_config(model: nn.Module, snap: Snapshot, kept: dict[int, torch.Tensor], log_: list[str]) -> None:
    """Set the size fields of ``model.config`` (a Hugging Face model) to the slim sizes."""
    if not _is_hf(model):
        return
    config = model.config
    target = _shapes(model)
    axes, changes = size_changes(snap, kept, model)
    fields = {k: v for k, v in vars(config).items()
              if type(v) is int and size_like(k)
              and v in changes}
    if not fields:
        return
    names = sorted(fields)
    spread = sorted(n for n in names if len(axes.get(fields[n], ())) > 1)
    if spread:
        # parameter axes of one size became several sizes: layers differ (no meta builds needed)
        log_.append(f"config: {', '.join(f'{n}={fields[n]}' for n in spread)} became "
                    f"{' / '.join(str(sorted(axes[fields[n]])) for n in spread)} in different layers; one config "
                    "cannot say that, so it is left unchanged: save the slim model with torch.save, "
                    "from_pretrained would rebuild the original shapes")
        return
    # each field keeps its value or takes one the same size became; fewest changed fields first
    # (a size that several fields hold, like hidden_size == heads * head_dim, need not change)
    options = [[fields[n]] + sorted(changes[fields[n]], reverse=True) for n in names]
    combos = sorted(itertools.islice(itertools.product(*options), MAX_CANDIDATES),
                    key=lambda c: sum(v != fields[n] for n, v in zip(names, c, strict=True)))
    builds = 0
    for combo in combos:
        if all(v == fields[n] for n, v in zip(names, combo, strict=True)):
            continue  # the shapes changed, so the unchanged config cannot describe them
        if builds >= MAX_BUILDS:
            break
        candidate = copy.deepcopy(config)
        try:
            for n, v in zip(names, combo, strict=True):
                setattr(candidate, n, v)
            validate = getattr(candidate, "validate", None)
            if callable(validate):
                validate()
        except Exception as exc:  # the config class itself refuses these sizes
            log.debug("config candidate %s refused: %s", combo, exc)
            continue
        builds += 1
        if _meta_shapes(model, candidate) == target:
            for n, v in zip(names, combo, strict=True):
                if fields[n] != v:
                    setattr(config, n, v)
                    log_.append(f"config.{n}: {fields[n]} -> {v}")
            return
    log_.append(f"config: no values of {', '.join(names)} that {type(config).__name__} accepts rebuild the "
                f"slim {type(model).__name__}'s shapes (widths or heads differ between layers, or sizes the "
                "config derives from others were pruned); config left unchanged: save the slim model with "
                "torch.save, from_pretrained would rebuild the original shapes")
