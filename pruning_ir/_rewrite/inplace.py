"""In-place pruning: the slim tensors swapped into the user's own modules, the attributes that hold
old tensors given the copy path's deep copies of them, and the model put back as it was when the
prune fails."""

from __future__ import annotations

import copy
import gc
import types
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

_KEPT = frozenset(nn.Module().__dict__) | {"_pruning_ir_patch"}
"""Module attributes that are not replaced: ``nn.Module``'s own stores (parameters, buffers and
submodules are swapped by name; a hook dict keeps its identity, which hook handles hold, and only
its hook objects are replaced where needed) and the engine's literal patch (its hooks are its
bound methods)."""
ATOMIC: frozenset[type] = frozenset({int, float, bool, complex, str, bytes, type(None), type(Ellipsis),
                                     torch.dtype, torch.device, torch.layout, torch.memory_format})
"""Types whose values every copy shares instead of copying (``deepcopy`` returns them as they are):
the copy path's fast paths and the in-place walk's leaves."""
_ATOMIC: tuple[type, ...] = tuple(ATOMIC)  # for issubclass: a str or int subclass is atomic too
_OPAQUE = (*_ATOMIC, type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType, torch.Tensor)
"""What the walk does not look into: ``deepcopy`` keeps functions, classes and Python modules as
they are (so the copy path maps no tensor inside them either); tensors are compared by id."""


def rebind_attributes(model: nn.Module, replacement: dict[int, torch.Tensor]) -> None:
    """Point ``model``'s modules' plain attributes at the slim tensors, with the copy path's results:
    every object from which a replaced tensor (by id of the old one) can be reached is replaced by a
    ``deepcopy`` (lists, tuples, dicts and their keys, sets, dataclasses, ``__slots__`` objects,
    ``functools.partial``, modules held outside the tree, the tensor itself held as a plain
    attribute...), with one memo in which every other object (the model's modules, its unsliced
    tensors, whatever reaches no replaced tensor) is itself. So exactly the objects on a path to a
    sliced tensor are new; everything else, sharing included, is the user's as before.

    Reachability is the garbage collector's referents (container items, ``__dict__`` and slot
    values, bound methods' instances), walked once over everything the modules hold, iteratively
    (a linked structure of any length is fine), then back from the replaced tensors."""
    modules = {id(m): m for m in model.modules()}
    roots: list[tuple[dict[Any, Any], Any, Any]] = []
    for m in modules.values():
        for k, v in m.__dict__.items():
            if k not in _KEPT:
                if not issubclass(type(v), _ATOMIC):
                    roots.append((m.__dict__, k, v))
            elif k.endswith("hooks") and type(v) in (dict, OrderedDict):  # hook objects, by key: the dict stays
                roots += [(v, hk, hv) for hk, hv in v.items()]
    objects: dict[int, Any] = {}
    parents: dict[int, Any] = {}  # child id -> its parent's id, or a list of them
    stack = [v for _, _, v in roots]
    while stack:
        o = stack.pop()
        i = id(o)
        if i in objects:
            continue
        objects[i] = o
        if i in modules or issubclass(type(o), _OPAQUE):
            continue
        for c in gc.get_referents(o):
            if issubclass(type(c), _ATOMIC):
                continue
            ci = id(c)
            known = parents.get(ci)
            if known is None:
                parents[ci] = i
            elif isinstance(known, list):
                known.append(i)
            else:
                parents[ci] = [known, i]
            if ci not in objects:
                stack.append(c)
    dirty: set[int] = set()
    frontier = [i for i in replacement if i in objects]
    while frontier:
        i = frontier.pop()
        if i not in dirty:
            dirty.add(i)
            up = parents.get(i)
            if isinstance(up, list):
                frontier += up
            elif up is not None:
                frontier.append(up)
    if not dirty:
        return
    memo = objects  # every object that reaches no sliced tensor is itself (the walk's own table, reused)
    for i in dirty:
        del memo[i]
    memo.update(modules)
    for m in modules.values():
        # nn.Module's own stores stay themselves (an attribute aliasing a hook dict keeps the alias),
        # as do the model's own tensors (tied, not cloned)
        memo.update((id(v), v) for k, v in m.__dict__.items() if k in _KEPT and not issubclass(type(v), _ATOMIC))
        for store in (m._parameters, m._buffers):
            memo.update((id(t), t) for t in store.values() if t is not None)
    memo.update(replacement)
    for d, k, v in roots:
        if id(v) in dirty:
            d[k] = copy.deepcopy(v, memo)


def slice_in_place(model: nn.Module, replacement: dict[int, torch.Tensor]) -> None:
    """Swap the ``replacement`` tensors into ``model``'s own modules and into what their attributes
    hold (:func:`rebind_attributes`)."""
    for m in model.modules():
        for k, p in m._parameters.items():
            if p is not None and id(p) in replacement:
                m._parameters[k] = replacement[id(p)]  # type: ignore[assignment]  # a Parameter
        for k, b in m._buffers.items():
            if b is not None and id(b) in replacement:
                m._buffers[k] = replacement[id(b)]
    if replacement:
        rebind_attributes(model, replacement)


class Restorer:
    """Puts ``model`` back as it is at construction when called: every module's class and
    attributes (the parameter, buffer, submodule and hook dicts, and list/dict attributes, by
    content), the literal patches' state and a Hugging Face config's fields. An in-place prune that
    fails calls it, so the model it refused is unchanged (nothing is copied: the old tensors and
    attribute objects stay referenced until then; rebinding replaces attributes, it edits no
    object they hold)."""

    def __init__(self, model: nn.Module) -> None:
        modules = list(model.modules())
        self.saved = [(m, type(m), dict(m.__dict__),
                       {k: (dict(v) if isinstance(v, dict) else list(v))
                        for k, v in m.__dict__.items() if type(v) in (dict, list, OrderedDict)})
                      for m in modules]
        # a module patched by an earlier prune has its patch's edits chained by the next one
        self.patches = [(p, dict(p.__dict__)) for m in modules
                        if (p := m.__dict__.get("_pruning_ir_patch")) is not None and hasattr(p, "__dict__")]
        self.config = getattr(model, "config", None)
        self.fields = dict(vars(self.config)) if hasattr(self.config, "__dict__") else None

    def __call__(self) -> None:
        for m, cls, attributes, contents in self.saved:
            if type(m) is not cls:
                m.__class__ = cls
            m.__dict__.clear()
            m.__dict__.update(attributes)
            for k, c in contents.items():
                v = attributes[k]
                if isinstance(v, dict):
                    v.clear()
                    v.update(c)  # type: ignore[call-overload]
                else:
                    v[:] = c  # type: ignore[index]
        for p, state in self.patches:
            p.__dict__.clear()
            p.__dict__.update(state)
        if self.fields is not None:
            vars(self.config).clear()
            vars(self.config).update(self.fields)
