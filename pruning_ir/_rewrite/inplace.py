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

_MODULE_STORES = frozenset({"_parameters", "_buffers", "_modules"})
_OPAQUE = (str, bytes, int, float, bool, complex, type, types.FunctionType, types.BuiltinFunctionType,
           types.ModuleType, torch.dtype, torch.device, torch.Tensor)
"""What :func:`_reaches` does not look into: ``deepcopy`` keeps functions, classes and modules as
they are (so the copy path maps no tensor inside them either), and a tensor is compared by id."""


def rebind_attributes(model: nn.Module, replacement: dict[int, torch.Tensor]) -> None:
    """Give ``model``'s modules, for each plain attribute from which a replaced tensor (by id of the
    old one) can be reached, the attribute's ``deepcopy`` with the replacements in the memo, and the
    model's own modules kept as they are: what ``copy_module_tree`` gives a copy, so the in-place
    slim model computes what the copy path's does (lists, tuples, dicts and their keys, sets,
    dataclasses, ``__slots__`` objects, ``functools.partial``, modules held outside the tree...).
    One memo for the whole model: objects shared between attributes stay shared, and the model's
    unsliced tensors are kept, not cloned. Attributes that reach no replaced tensor keep their
    objects (the user's)."""
    modules = {id(m): m for m in model.modules()}
    memo: dict[int, Any] = dict(modules)
    for m in modules.values():  # the model's own tensors stay themselves (tied, not cloned)
        for store in (m._parameters, m._buffers):
            memo.update((id(t), t) for t in store.values() if t is not None)
    memo.update(replacement)
    clean: set[int] = set()  # objects known to reach no replaced tensor
    for m in modules.values():
        d = m.__dict__
        for k, v in list(d.items()):
            if k not in _MODULE_STORES and not isinstance(v, _OPAQUE) and v is not None and _reaches(
                    v, replacement, modules, clean):
                d[k] = copy.deepcopy(v, memo)


def _reaches(v: Any, replacement: dict[int, torch.Tensor], modules: dict[int, nn.Module], clean: set[int]) -> bool:
    """Whether a tensor of ``replacement`` is among the objects ``v`` refers to, at any depth (the
    garbage collector's referents: container items, ``__dict__`` and slot values, bound methods'
    instances), not looking into the model's own modules (walked one by one) or :data:`_OPAQUE`.
    Iterative: a linked structure of any length is fine."""
    stack = [v]
    seen: set[int] = set()
    while stack:
        o = stack.pop()
        i = id(o)
        if i in replacement:
            return True
        if i in seen or i in clean or i in modules or isinstance(o, _OPAQUE):
            continue
        seen.add(i)
        stack.extend(gc.get_referents(o))
    clean |= seen
    return False


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
        self.saved = [(m, type(m), dict(m.__dict__),
                       {k: (dict(v) if isinstance(v, dict) else list(v))
                        for k, v in m.__dict__.items() if type(v) in (dict, list, OrderedDict)})
                      for m in model.modules()]
        # a module patched by an earlier prune has its patch's edits chained by the next one
        self.patches = [(p, dict(p.__dict__)) for m in model.modules()
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
