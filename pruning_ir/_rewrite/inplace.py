"""In-place pruning: the slim tensors swapped into the user's own modules, everything else that
holds the old tensors pointed at the new ones (what the module-tree copy's memo does for a copy),
and the model put back as it was when the prune fails."""

from __future__ import annotations

import types
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

_MODULE_STORES = frozenset({"_parameters", "_buffers", "_modules"})
_LEAVES = (str, bytes, int, float, bool, complex, type, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, types.ModuleType, nn.Module, torch.dtype, torch.device)

Edit = tuple[Any, Any, Any]
"""``(container, key, old)``: ``container[key]`` was ``old`` (``key`` ``None``: the whole content
of a set or dict, ``old`` a copy of it)."""


class Rebinder:
    """Swap the ``replacement`` tensors (by id of the old one) into what a model's modules hold
    besides their parameter, buffer and submodule dicts: plain attributes, the lists, tuples,
    dicts (values and keys) and sets in them, and the attributes of plain objects in them (a
    dataclass, a namespace), at any depth. Each container or object is visited once (a memo, as
    ``deepcopy``'s): lists, dicts, sets and objects are edited in place (whoever else holds them
    sees the slim tensors, as the model does), tuples rebuilt once and that one rebuilt tuple used
    wherever the old one was. Every edit is logged in ``log`` for :meth:`undo`."""

    DEPTH = 64
    """Containers nested deeper than this are left as they are (a linked structure, such as an fx
    graph's nodes, would otherwise recurse once per element)."""

    def __init__(self, replacement: dict[int, torch.Tensor]) -> None:
        self.replacement = replacement
        self.memo: dict[int, Any] = {}
        self.log: list[Edit] = []
        self.depth = 0

    def module(self, m: nn.Module) -> None:
        d = m.__dict__
        for k, v in list(d.items()):
            if k not in _MODULE_STORES:
                self._set(d, k, v, self.value(v))

    def _set(self, container: Any, key: Any, old: Any, new: Any) -> None:
        if new is not old:
            self.log.append((container, key, old))
            container[key] = new

    def value(self, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return self.replacement.get(id(v), v)
        if v is None or isinstance(v, _LEAVES):
            return v
        got = self.memo.get(id(v))
        if got is not None:
            return got
        if self.depth >= self.DEPTH:
            return v
        self.memo[id(v)] = v  # while it is walked (a cycle back to it finds it as it is)
        self.depth += 1
        try:
            out = self._walk(v)
        finally:
            self.depth -= 1
        self.memo[id(v)] = out
        return out

    def _walk(self, v: Any) -> Any:
        if isinstance(v, list):
            for i, x in enumerate(v):
                self._set(v, i, x, self.value(x))
            return v
        if isinstance(v, dict):
            items = [(self.value(k), self.value(x)) for k, x in v.items()]
            if any(nk is not k for (nk, _), k in zip(items, v, strict=True)):  # a tensor as a key
                self.log.append((v, None, dict(v)))
                v.clear()
                v.update(items)
            else:
                for (k, nx), x in zip(items, v.values(), strict=True):
                    self._set(v, k, x, nx)
            return v
        if isinstance(v, set):
            new = {self.value(x) for x in v}
            if any(x not in new for x in v):
                self.log.append((v, None, set(v)))
                v.clear()
                v.update(new)
            return v
        if isinstance(v, (tuple, frozenset)):
            items = [self.value(x) for x in v]
            if all(a is b for a, b in zip(items, v, strict=True)):
                return v
            cls: Any = type(v)
            return cls(*items) if hasattr(v, "_fields") else cls(items)  # a namedtuple takes fields
        d = getattr(v, "__dict__", None)
        if isinstance(d, dict):  # a plain object (a dataclass, a namespace): its attributes
            for k, x in list(d.items()):
                self._set(d, k, x, self.value(x))
        return v

    def undo(self) -> None:
        """Put back every edit, last first."""
        for container, key, old in reversed(self.log):
            if key is None:
                container.clear()
                container.update(old)
            else:
                container[key] = old
        self.log.clear()


def slice_in_place(model: nn.Module, replacement: dict[int, torch.Tensor], rebinder: Rebinder | None = None) -> None:
    """Swap the ``replacement`` tensors into ``model``'s own modules and into everything their
    attributes hold (``rebinder``: the one to log the attribute edits in, for an undo)."""
    rebinder = rebinder or Rebinder(replacement)
    rebinder.replacement = replacement
    for m in model.modules():
        for k, p in m._parameters.items():
            if p is not None and id(p) in replacement:
                m._parameters[k] = replacement[id(p)]  # type: ignore[assignment]  # a Parameter
        for k, b in m._buffers.items():
            if b is not None and id(b) in replacement:
                m._buffers[k] = replacement[id(b)]
        if replacement:
            rebinder.module(m)


class Restorer:
    """Puts ``model`` back as it is at construction when called: every module's class and
    attributes (the parameter, buffer, submodule and hook dicts, and list/dict attributes, by
    content), the literal patches' state, a Hugging Face config's fields, and the edits logged in
    ``rebinder``. An in-place prune that fails calls it, so the model it refused is unchanged (the
    tensors are not copied: the old ones stay referenced until then)."""

    def __init__(self, model: nn.Module) -> None:
        self.rebinder = Rebinder({})
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
        self.rebinder.undo()
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
