"""A slim model as data: what to do to the original architecture to get it back, as JSON.

A slim model differs from the model it was pruned from in its tensors' shapes (and values),
in its modules' plain attributes (``out_features``, ``num_heads``, a list of split sizes,
``training``), in its Hugging Face ``config`` objects, sometimes in a module's class
(``nn.MultiheadAttention`` -> :class:`~pruning_ir.modules.PrunedMultiheadAttention`) and in
the run-time literal patches some modules carry. :func:`capture` writes all of that down
(every plain attribute of every module, not a diff: a diff would need the original) and
returns the tensors to store beside it; :func:`apply` does it to a freshly built original
(usually on ``meta``), so no pickle is involved. Values are encoded with a small tagged JSON
scheme (:func:`encode`) that knows tuples, dtypes, devices, sizes and the like, and refuses
anything else by name.
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, RewriteError
from .hooks import LiteralShapePatch, install, patch_of

log = logging.getLogger(__name__)

RECIPE_FORMAT = 1
"""Bumped when the recipe's layout changes; :func:`apply` refuses other formats."""

_ORIGIN_ATTR = "_pruning_ir_origin"
_TORCH_ENUMS = (torch.memory_format, torch.layout, torch.qscheme)
_SKIP_ATTRS = frozenset({_ORIGIN_ATTR, "_pruning_ir_patch", "config", "generation_config"}
                        | (set(nn.Module().__dict__) - {"training"}))
"""Attributes a recipe does not write as plain values: torch's own module internals (tensors and
hooks are written their own way), the origin, patches and Hugging Face configs."""
_PLAIN = (type(None), bool, int, float, str, tuple, list, dict, torch.Size, torch.dtype, torch.device)


class Unencodable(TypeError):
    """A value :func:`encode` has no JSON form for."""


def encode(v: Any) -> Any:
    """``v`` as JSON data: plain numbers, strings, ``None`` and lists as themselves; tuples, dicts
    with non-string keys, dtypes, devices, ``torch.Size``, memory formats and layouts, slices,
    ``Ellipsis`` and non-finite floats as one-key tagged objects. Raises :class:`Unencodable`."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, torch.Size):
        return {"size": list(v)}
    if isinstance(v, tuple):
        return {"tuple": [encode(x) for x in v]}
    if isinstance(v, list):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {"dict": {k: encode(x) for k, x in v.items()}}
        return {"items": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, _TORCH_ENUMS):
        return {"torch": str(v).removeprefix("torch.")}
    if isinstance(v, slice):
        return {"slice": [encode(v.start), encode(v.stop), encode(v.step)]}
    if v is Ellipsis:
        return {"ellipsis": None}
    raise Unencodable(f"{type(v).__name__} value {v!r}")


def decode(v: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "tuple":
        return tuple(decode(y) for y in x)
    if tag == "dict":
        return {k: decode(y) for k, y in x.items()}
    if tag == "items":
        return {decode(k): decode(y) for k, y in x}
    if tag == "size":
        return torch.Size(x)
    if tag == "float":
        return float(x)
    if tag == "dtype" or tag == "torch":
        return getattr(torch, x)
    if tag == "device":
        return torch.device(x)
    if tag == "slice":
        return slice(*(decode(y) for y in x))
    if tag == "ellipsis":
        return Ellipsis
    raise RewriteError(f"recipe: unknown tagged value {v!r} (written by a newer pruning_ir?)")


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def import_object(path: str) -> Any:
    """The object at ``'package.module:Qual.name'``."""
    module, _, qual = path.partition(":")
    if not module or not qual:
        raise InvalidInputError(f"{path!r} is not an importable name: write it as 'package.module:name'.")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _hf_config(model: nn.Module) -> Any | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict") and type(config).__module__.startswith("transformers"):
        return config
    return None


def config_internals(config: Any) -> dict[str, Any]:
    """The plain attributes of a Hugging Face config that ``to_dict`` leaves out (which attention
    and experts implementations the model was built with: ``_attn_implementation_internal``,
    ``_experts_implementation_internal``), encoded."""
    listed = config.to_dict()
    out = {}
    for k, v in vars(config).items():
        if k in listed or k == "_post_init_done":
            continue
        try:
            out[k] = encode(v)
        except Unencodable:
            continue
    return out


def set_config_internals(config: Any, internals: dict[str, Any]) -> None:
    for k, v in internals.items():
        config.__dict__[k] = decode(v)


def origin_of(model: nn.Module) -> dict[str, Any]:
    """What ``model`` was built as, before any prune: the origin recorded on it by an earlier
    prune, else its class and (Hugging Face models) its config, as JSON data."""
    known = getattr(model, _ORIGIN_ATTR, None)
    if isinstance(known, dict):
        return known
    config = _hf_config(model)
    if config is not None and hasattr(type(model), "config_class"):
        try:
            values = encode(config.to_dict())
        except Unencodable as exc:  # then the loader needs base_model, like any module
            log.debug("origin of %s: config not writable as JSON (%s)", type(model).__name__, exc)
        else:
            return {"kind": "hf", "class": class_path(type(model)), "config": values,
                    "attn_implementation": getattr(config, "_attn_implementation", None),
                    "internal": config_internals(config)}
    return {"kind": "module", "class": class_path(type(model))}


def set_origin(model: nn.Module, origin: dict[str, Any]) -> None:
    model.__dict__[_ORIGIN_ATTR] = origin


def _tensor_entries(model: nn.Module) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor]]:
    """Per parameter/buffer name (every name, tied ones included): how to put it back; and the
    distinct tensors to store, under the first name each has."""
    entries: dict[str, dict[str, Any]] = {}
    stored: dict[str, torch.Tensor] = {}
    first: dict[int, str] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        prefix = f"{path}." if path else ""
        for kind, table in (("parameter", mod._parameters), ("buffer", mod._buffers)):
            for name, t in table.items():
                full = prefix + name
                if full in entries:
                    continue
                if t is None:
                    entries[full] = {"kind": kind, "none": True}
                    continue
                entry: dict[str, Any] = {"kind": kind}
                if kind == "parameter":
                    entry["requires_grad"] = t.requires_grad
                elif name in mod._non_persistent_buffers_set:
                    entry["persistent"] = False
                if id(t) in first:
                    entry["alias"] = first[id(t)]
                else:
                    first[id(t)] = full
                    stored[full] = t
                entries[full] = entry
    return entries, stored


def _attributes(path: str, mod: nn.Module, stored: dict[str, torch.Tensor], tensor_ids: dict[int, str]
                ) -> dict[str, Any]:
    """The plain attributes of ``mod`` that JSON can hold, and its plain tensor attributes (stored
    as tensors, or as the parameter/buffer they are)."""
    out: dict[str, Any] = {}
    for k, v in mod.__dict__.items():
        if k in _SKIP_ATTRS:
            continue
        if isinstance(v, torch.Tensor):
            if id(v) in tensor_ids:
                out[k] = {"tensor_alias": tensor_ids[id(v)]}
            else:
                key = f"{path}::{k}"
                stored[key] = v
                tensor_ids[id(v)] = key
                out[k] = {"tensor": key}
            continue
        if type(v) not in _PLAIN and not isinstance(v, _TORCH_ENUMS):
            continue  # objects (callables, containers of other kinds): the original's own
        try:
            out[k] = encode(v)
        except Unencodable:
            continue  # a container holding objects: the original's own
    return out


def _patch_state(path: str, patch: LiteralShapePatch) -> dict[str, Any]:
    state = patch.__getstate__()
    try:
        return {k: encode(v) for k, v in state.items()}
    except Unencodable as exc:
        raise RewriteError(f"module '{path or '<root>'}': its literal-size patch holds a value the recipe "
                           f"cannot write ({exc}); save this model with torch.save instead") from exc


def _configs(model: nn.Module) -> list[dict[str, Any]]:
    """Every distinct Hugging Face config object held by a module, with the paths holding it."""
    seen: dict[int, dict[str, Any]] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        for attr in ("config", "generation_config"):
            cfg = mod.__dict__.get(attr)
            if cfg is None or not hasattr(cfg, "to_dict") or not type(cfg).__module__.startswith("transformers"):
                continue
            entry = seen.get(id(cfg))
            if entry is None:
                entry = seen[id(cfg)] = {"class": class_path(type(cfg)), "values": encode(cfg.to_dict()),
                                         "attn_implementation": getattr(cfg, "_attn_implementation", None)
                                         if attr == "config" else None, "internal": config_internals(cfg),
                                         "at": []}
            entry["at"].append([path, attr])
    return list(seen.values())


def capture(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The recipe of ``model`` (JSON data) and the tensors to store with it, by name."""
    entries, stored = _tensor_entries(model)
    tensor_ids = {id(t): name for name, t in stored.items()}
    modules: dict[str, Any] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        if path in modules:
            continue
        rec: dict[str, Any] = {"class": class_path(type(mod)),
                               "attributes": _attributes(path, mod, stored, tensor_ids)}
        patch = patch_of(mod)
        if patch is not None:
            rec["patch"] = _patch_state(path, patch)
        modules[path] = rec
    recipe = {"format": RECIPE_FORMAT, "origin": origin_of(model), "tensors": entries, "modules": modules,
              "configs": _configs(model)}
    return recipe, stored


def _check_structure(recipe: dict[str, Any], base: nn.Module) -> dict[str, nn.Module]:
    mods = dict(base.named_modules(remove_duplicate=False))
    missing = [p for p in recipe["modules"] if p not in mods]
    extra = [p for p in mods if p not in recipe["modules"]]
    if missing or extra:
        raise InvalidInputError(
            f"the base model ({type(base).__name__}) is not the architecture the slim model was pruned from: "
            f"modules missing {missing[:5]}, unexpected {extra[:5]}. Build it as the original was built "
            "(same class and constructor arguments; it may be on the meta device).")
    for path, rec in recipe["modules"].items():
        mod = mods[path]
        if rec["class"].partition(":")[2] == type(mod).__qualname__:
            continue  # the same class (perhaps imported under another module name)
        cls = import_object(rec["class"])
        if isinstance(cls, type) and issubclass(cls, type(mod)):
            mod.__class__ = cls  # a class pruning gives (PrunedMultiheadAttention)
            continue
        raise InvalidInputError(
            f"module '{path or '<root>'}' of the base model is a {type(mod).__name__}, the slim model's was a "
            f"{rec['class']}: build the base model as the original was built.")
    return mods


def _set_tensors(recipe: dict[str, Any], mods: dict[str, nn.Module], tensors: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """Put the stored parameters and buffers in place; returns them by every name (aliases too)."""
    made: dict[str, torch.Tensor] = {}
    entries = recipe["tensors"]
    for full in sorted(entries, key=lambda n: "alias" in entries[n]):
        entry = entries[full]
        path, _, name = full.rpartition(".")
        mod = mods[path]
        if entry.get("none"):
            t = None
        elif "alias" in entry:
            t = made[entry["alias"]]
        elif full not in tensors:
            raise RewriteError(f"the weights file has no tensor {full!r}: the directory is incomplete")
        elif entry["kind"] == "parameter":
            t = nn.Parameter(tensors[full], requires_grad=entry.get("requires_grad", True))
        else:
            t = tensors[full]
        if t is not None:
            made[full] = t
        if entry["kind"] == "parameter":
            mod._parameters[name] = t  # type: ignore[assignment]  # a Parameter or None
            mod._buffers.pop(name, None)
        else:
            mod._buffers[name] = t
            mod._parameters.pop(name, None)
            if entry.get("persistent", True):
                mod._non_persistent_buffers_set.discard(name)
            else:
                mod._non_persistent_buffers_set.add(name)
    for path, mod in mods.items():
        prefix = f"{path}." if path else ""
        stale = [f"{prefix}{n}" for n in (*mod._parameters, *mod._buffers) if f"{prefix}{n}" not in entries]
        if stale:
            raise InvalidInputError(f"the base model has tensors {stale[:5]} the slim model did not have: build "
                                    "the base model as the original was built.")
    return made


def _set_attributes(recipe: dict[str, Any], mods: dict[str, nn.Module], tensors: dict[str, torch.Tensor],
                    made: dict[str, torch.Tensor]) -> None:
    for path, rec in recipe["modules"].items():
        d = mods[path].__dict__
        for k, v in rec["attributes"].items():
            if isinstance(v, dict) and "tensor" in v and len(v) == 1:
                d[k] = tensors[v["tensor"]]
            elif isinstance(v, dict) and "tensor_alias" in v and len(v) == 1:
                # the parameter/buffer it is, or another attribute's tensor (stored under "path::name")
                d[k] = made[v["tensor_alias"]] if v["tensor_alias"] in made else tensors[v["tensor_alias"]]
            else:
                d[k] = decode(v)


def _set_configs(recipe: dict[str, Any], mods: dict[str, nn.Module]) -> None:
    for entry in recipe["configs"]:
        cls = import_object(entry["class"])
        cfg = cls.from_dict(decode(entry["values"]))
        if entry.get("attn_implementation") is not None:
            cfg._attn_implementation = entry["attn_implementation"]
        set_config_internals(cfg, entry.get("internal", {}))
        for path, attr in entry["at"]:
            mods[path].__dict__[attr] = cfg


def _set_patches(recipe: dict[str, Any], mods: dict[str, nn.Module]) -> None:
    for path, rec in recipe["modules"].items():
        state = rec.get("patch")
        if state is None:
            continue
        s = {k: decode(v) for k, v in state.items()}
        install(mods[path], s["edits"], s.get("templates"), s.get("sigs"), s.get("skips"), s.get("module_path", path))
        patch = patch_of(mods[path])
        assert patch is not None
        patch.relearn = bool(s.get("relearn", False))


def apply(recipe: dict[str, Any], base: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Turn ``base`` (the original architecture, freshly built; changed in place) into the slim
    model ``recipe`` describes, with the stored ``tensors``."""
    fmt = recipe.get("format")
    if fmt != RECIPE_FORMAT:
        raise RewriteError(f"this slim model was saved in recipe format {fmt}; this pruning_ir reads format "
                           f"{RECIPE_FORMAT}. Load it with the version that saved it.")
    mods = _check_structure(recipe, base)
    made = _set_tensors(recipe, mods, tensors)
    _set_attributes(recipe, mods, tensors, made)
    _set_configs(recipe, mods)
    _set_patches(recipe, mods)
    set_origin(base, recipe["origin"])
    return base
