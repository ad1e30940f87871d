"""Fallback for sizes written as literals in a module's ``forward``.

When ``forward`` holds a channel size the engine cannot reach through an
attribute (``torch.split(x, [5, 8])``), the slim module gets a pair of forward
hooks that, while *that module's own code* runs (not its children's), rewrite
the integer arguments of the recorded ops from their old to their new values,
occurrence by occurrence in trace order. The user's classes are kept; the
rewrite log says which modules carry such a patch, and they run a little
slower (a dispatch mode is active during their forward).

Which modules need one: a traced integer has no provenance (``x.shape[1] // 2``
and a literal ``5`` both arrive as Python ints), so the IR alone cannot tell a
literal from a size the code computes. :func:`patch_literals` finds out by
running the slim model once with a *watching* patch on every module whose own
ops have changing size facts: an argument still at its old value is a literal
(patch kept), one already at its new value adapts by itself (patch removed).
The answers are cached on the snapshot per module and attribute update, so a
search that prunes many candidates from one IR pays that forward once, not per
candidate; ``prune(verify=False)`` and ``prune(verify=True)`` install the same
patches (verification then checks the result).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .._ir.axes import kept_size
from .._ir.graph import set_path
from .._ir.snapshot import Snapshot
from .._trace.recorder import bind, op_name
from .verify import run_model

log = logging.getLogger(__name__)

Edit = tuple[tuple[Any, ...], int, int]  # (path in the bound arguments, old, new)
Edits = dict[str, list[list[Edit]]]
"""Per op name, per occurrence in one module's own code: the edits of that call."""
Templates = dict[str, list[dict[str, Any]]]
FactId = tuple[str, int, tuple[Any, ...]]
"""``(op name, occurrence, argument path)``: one size argument of one module's own code."""


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _full_range(t: Any, args: dict[str, Any]) -> bool:
    """Whether ``slice(t, **args)`` selects the whole axis (what torch turns into ``alias``)."""
    try:
        size = t.shape[args.get("dim", 0)]
    except (AttributeError, IndexError, TypeError):
        return False
    start, end, step = args.get("start"), args.get("end"), args.get("step", 1)
    return step == 1 and start in (None, 0) and (end is None or end >= size)


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
            template = p.templates[name][i]
            literal = not _full_range(args[0], template)
            p.saw(name, i, seq[i], literal)
            return torch.ops.aten.slice.Tensor(args[0], **template) if literal else func(*args, **kwargs)
        bound = bind(func, args, kwargs)
        changed = False
        for path, old, new in seq[i]:
            try:
                value = _get(bound, path)
            except (KeyError, IndexError, TypeError):
                continue
            if value == old:
                bound = set_path(bound, path, new)
                changed = True
            if p.watch is not None and value in (old, new):
                p.watch[(name, i, path)] = value == old
        if not changed:
            return func(*args, **kwargs)
        return func(**bound)


SLICE_LIKE = {"aten.alias": "aten.slice"}
"""A full-range slice dispatches as ``alias``: both count as occurrences of ``slice``."""


class LiteralShapePatch:
    """Forward hooks that rewrite literal channel sizes of one module's own ops.

    ``templates[op][i]``: for slices, the non-tensor arguments of occurrence ``i`` at the
    new sizes (used when the slice became full-range and torch dispatched an alias).
    ``watch``: while not ``None``, every argument seen at its old value (a literal,
    rewritten: ``True``) or already at its new value (``False``) is recorded there.
    """

    def __init__(self, edits: Edits, templates: Templates | None = None) -> None:
        self.edits = edits
        self.templates = templates or {}
        self.count: dict[str, int] = {}
        self.depth = 0
        self._modes: list[_Mode] = []
        self.watch: dict[FactId, bool] | None = None

    def saw(self, name: str, i: int, row: list[Edit], literal: bool) -> None:
        if self.watch is not None:
            for path, _, _ in row:
                self.watch[(name, i, path)] = literal

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


def _compose(old: Edits, new: Edits) -> Edits:
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


def install(module: nn.Module, edits: Edits, templates: Templates | None = None) -> Callable[[], None]:
    """Patch ``module``'s own ops (a module patched by an earlier prune gets its edits chained).

    Returns a function that undoes this call (used to drop a patch that turned out unneeded).
    """
    existing = getattr(module, "_pruning_ir_patch", None)
    if isinstance(existing, LiteralShapePatch):
        before = (existing.edits, existing.templates)
        existing.edits = _compose(existing.edits, edits)
        existing.templates = templates or existing.templates

        def restore() -> None:
            existing.edits, existing.templates = before

        return restore
    patch = LiteralShapePatch(edits, templates)
    module._pruning_ir_patch = patch  # type: ignore[assignment]
    handles = [module.register_forward_pre_hook(patch.pre), module.register_forward_hook(patch.post, always_call=True)]
    for child in module.modules():
        if child is not module:
            handles.append(child.register_forward_pre_hook(patch.child_pre))
            handles.append(child.register_forward_hook(patch.child_post, always_call=True))

    def remove() -> None:
        for h in handles:
            h.remove()
        del module._pruning_ir_patch

    return remove


def patch_of(module: nn.Module) -> LiteralShapePatch | None:
    p = getattr(module, "_pruning_ir_patch", None)
    return p if isinstance(p, LiteralShapePatch) else None


def module_edits(snap: Snapshot, kept: dict[int, torch.Tensor]) -> dict[str, tuple[Edits, Templates]]:
    """Module path -> the edits of its own ops whose size facts change, and for slices the
    non-tensor arguments at the new sizes (see :class:`LiteralShapePatch`); one pass over the graph."""
    rows: dict[str, tuple[Edits, Templates]] = {}
    changed: set[str] = set()
    sp = snap.spaces
    for node in snap.graph.nodes:
        if node.leaf:
            continue
        op = SLICE_LIKE.get(node.op, node.op)
        row: list[Edit] = []
        args: dict[str, Any] = {}
        if node.op == "aten.slice":
            args = {k: v for k, v in node.kwargs.items() if k in ("dim", "start", "end", "step")}
        for f in node.facts:
            new = kept_size(sp, f.layout, kept)
            if new != f.old:
                row.append((f.path, f.old, new))
                if len(f.path) == 1 and f.path[0] in args:
                    args[f.path[0]] = new
        edits, templates = rows.setdefault(node.module, ({}, {}))
        edits.setdefault(op, []).append(row)
        templates.setdefault(op, []).append(args if row else {})
        if row:
            changed.add(node.module)
    out: dict[str, tuple[Edits, Templates]] = {}
    for module in changed:
        edits, templates = rows[module]
        keep = {op for op, r in edits.items() if any(r)}
        out[module] = ({op: r for op, r in edits.items() if op in keep},
                       {op: t for op, t in templates.items() if op in keep})
    return out


def fact_ids(edits: Edits) -> list[FactId]:
    """The :data:`FactId` of every edit in ``edits``."""
    return [(op, i, path) for op, rows in edits.items() for i, row in enumerate(rows) for path, _, _ in row]


def _update_key(path: str, modules: dict[str, nn.Module], guesses: dict[str, list[tuple[str, Any]]],
                unresolved: list[str]) -> tuple[Any, ...]:
    """What, besides literals and run-time shapes, a size computed in ``path``'s code can depend
    on: the attributes set by matching values in it and its ancestors, and its ambiguities."""
    chain = [""] + [path[:i] for i in range(len(path)) if path[i] == "."] + ([path] if path else [])
    set_attrs = tuple(sorted((p, a) for p in chain for a, _ in guesses.get(p, [])))
    label = path or "<root>"
    ambiguous = tuple(sorted(u.split("=", 1)[0] for u in unresolved
                             if u.startswith(label + ".") and "." not in u[len(label) + 1:].split("=", 1)[0]))
    cls = type(modules[path])
    return (path, f"{cls.__module__}.{cls.__qualname__}", set_attrs, ambiguous)


_STOCK_SIZED = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.RMSNorm,
                nn.GroupNorm, nn.Embedding)


def _sized_by_attributes(module: nn.Module) -> bool:
    """A stock ``torch.nn`` layer whose forward reads every size off its weights and the
    attributes that ``update_known`` sets: it holds no literal (a subclass from elsewhere may)."""
    return isinstance(module, _STOCK_SIZED) and type(module).__module__.startswith("torch.nn.modules.")


def patch_literals(model: nn.Module, snap: Snapshot, edits: dict[str, tuple[Edits, Templates]],
                   guesses: dict[str, list[tuple[str, Any]]], unresolved: list[str],
                   forward: Callable[[], object] | None = None) -> tuple[list[str], bool]:
    """Install a :class:`LiteralShapePatch` on every module of the slim ``model`` whose own code
    holds a changing channel size as a literal. Returns their paths, and whether ``forward``
    ran (and passed) on the final model.

    Literal or not is looked up in ``snap.cache["literal_facts"]``; facts not seen yet are
    found out by one call of ``forward`` (default: the slim model on the example inputs, in
    the traced train/eval modes, without side effects; verification passes its own run) with
    a watching patch on each such module. Watching patches that rewrote nothing are removed
    afterwards, which leaves the model that ``forward`` ran unchanged in what it computes.
    """
    cache: dict[tuple[Any, ...], dict[FactId, bool]] = snap.cache.setdefault("literal_facts", {})
    modules: dict[str, nn.Module] = {}
    for path in edits:
        try:
            modules[path] = model.get_submodule(path)
        except AttributeError:
            continue
    keys = {path: _update_key(path, modules, guesses, unresolved) for path in modules}
    decided: list[str] = []
    unknown: list[str] = []
    for path, key in keys.items():
        if _sized_by_attributes(modules[path]):
            continue
        known = cache.get(key, {})
        ids = fact_ids(edits[path][0])
        if all(fid in known for fid in ids):
            if any(known[fid] for fid in ids):
                decided.append(path)
        else:
            unknown.append(path)
    undo: dict[str, Callable[[], None]] = {}
    for path in decided + unknown:
        undo[path] = install(modules[path], *edits[path])
    if not unknown:
        return decided, False
    watched: dict[str, dict[FactId, bool]] = {}
    for path in unknown:
        p = patch_of(modules[path])
        assert p is not None
        p.watch = watched[path] = {}
    try:
        if forward is None:
            run_model(model, snap)
        else:
            forward()
        complete = True
    except Exception as exc:  # the slim model is broken elsewhere; verification will say where
        log.debug("watching forward of the slim %s failed: %s", type(model).__name__, exc)
        complete = False
    finally:
        for path in unknown:
            p = patch_of(modules[path])
            if p is not None:
                p.watch = None
    found: list[str] = []
    for path in unknown:
        seen = watched[path]
        ids = fact_ids(edits[path][0])
        if complete:  # an occurrence the forward never reached needs no patch (as verification sees it)
            cache.setdefault(keys[path], {}).update({fid: seen.get(fid, False) for fid in ids})
        if any(seen.get(fid, False) for fid in ids):
            found.append(path)
        else:
            undo[path]()
    if found:
        log.warning("slim %s: modules %s hold channel sizes as literals in forward; their ops are patched "
                    "at run time by forward hooks", type(model).__name__, sorted(found))
    return decided + found, complete
