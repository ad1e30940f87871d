"""Fallback for sizes written as literals in a module's ``forward``.

When ``forward`` holds a channel size the engine cannot reach through an
attribute (``torch.split(x, [5, 8])``), the slim module gets a pair of forward
hooks that, while *that module's own code* runs (not its children's), rewrite
the integer arguments of the recorded ops from their old to their new values,
occurrence by occurrence in trace order. The user's classes are kept; the
rewrite log says which modules carry such a patch, and they run a little
slower (a dispatch mode is active during their forward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .._ir.graph import set_path
from .._trace.recorder import bind, op_name

Edit = tuple[tuple[Any, ...], int, int]  # (path in the bound arguments, old, new)


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


class _Mode(TorchDispatchMode):
    def __init__(self, patch: LiteralShapePatch) -> None:
        super().__init__()
        self.patch = patch

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        p = self.patch
        if p.depth:
            return func(*args, **kwargs)
        name = SLICE_LIKE.get(op_name(func), op_name(func))
        seq = p.edits.get(name)
        if seq is None:
            return func(*args, **kwargs)
        i = p.count.get(name, 0)
        p.count[name] = i + 1
        if i >= len(seq) or not seq[i]:
            return func(*args, **kwargs)
        if op_name(func) == "aten.alias" and i < len(p.templates.get(name, [])) and p.templates[name][i]:
            # a slice that the old sizes made partial is full-range at the new sizes, so torch
            # dispatched an alias; the recorded slice (with its new bounds) is what must run
            return torch.ops.aten.slice.Tensor(args[0], **p.templates[name][i])
        bound = bind(func, args, kwargs)
        changed = False
        for path, old, new in seq[i]:
            try:
                if _get(bound, path) == old:
                    bound = set_path(bound, path, new)
                    changed = True
            except (KeyError, IndexError, TypeError):
                continue
        if not changed:
            return func(*args, **kwargs)
        return func(**bound)


SLICE_LIKE = {"aten.alias": "aten.slice"}
"""A full-range slice dispatches as ``alias``: both count as occurrences of ``slice``."""


class LiteralShapePatch:
    """Forward hooks that rewrite literal channel sizes of one module's own ops.

    ``templates[op][i]``: for slices, the non-tensor arguments of occurrence ``i`` at the
    new sizes (used when the slice became full-range and torch dispatched an alias).
    """

    def __init__(self, edits: dict[str, list[list[Edit]]],
                 templates: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.edits = edits
        self.templates = templates or {}
        self.count: dict[str, int] = {}
        self.depth = 0
        self._modes: list[_Mode] = []

    def pre(self, module: nn.Module, args: Any) -> None:
        self.count = {}
        mode = _Mode(self)
        mode.__enter__()
        self._modes.append(mode)

    def post(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._modes:
            self._modes.pop().__exit__(None, None, None)

    def child_pre(self, module: nn.Module, args: Any) -> None:
        self.depth += 1

    def child_post(self, module: nn.Module, args: Any, out: Any) -> None:
        self.depth -= 1

    def __getstate__(self) -> dict[str, Any]:
        return {"edits": self.edits, "templates": self.templates}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["edits"], state.get("templates"))  # type: ignore[misc]


def _compose(old: dict[str, list[list[Edit]]], new: dict[str, list[list[Edit]]]) -> dict[str, list[list[Edit]]]:
    """Edits of a second prune applied after the first: chain ``a -> b`` and ``b -> c`` into ``a -> c``."""
    out = {op: [list(row) for row in rows] for op, rows in old.items()}
    for op, rows in new.items():
        cur = out.setdefault(op, [])
        while len(cur) < len(rows):
            cur.append([])
        for i, row in enumerate(rows):
            for path, a, b in row:
                for j, (p0, o0, n0) in enumerate(cur[i]):
                    if p0 == path and n0 == a:
                        cur[i][j] = (p0, o0, b)
                        break
                else:
                    cur[i].append((path, a, b))
    return out


def install(module: nn.Module, edits: dict[str, list[list[Edit]]],
            templates: dict[str, list[dict[str, Any]]] | None = None) -> LiteralShapePatch:
    """Patch ``module``'s own ops; a module patched by an earlier prune gets its edits chained."""
    existing = getattr(module, "_pruning_ir_patch", None)
    if isinstance(existing, LiteralShapePatch):
        existing.edits = _compose(existing.edits, edits)
        existing.templates = templates or existing.templates
        return existing
    patch = LiteralShapePatch(edits, templates)
    module._pruning_ir_patch = patch  # type: ignore[assignment]
    module.register_forward_pre_hook(patch.pre)
    module.register_forward_hook(patch.post, always_call=True)
    for child in module.modules():
        if child is not module:
            child.register_forward_pre_hook(patch.child_pre)
            child.register_forward_hook(patch.child_post, always_call=True)
    return patch

