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
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .._ir.axes import kept_size
from .._ir.graph import Node, set_path, vanishing_nodes, view_chains
from .._ir.snapshot import Snapshot
from .._trace.recorder import bind, op_name
from .verify import run_model

log = logging.getLogger(__name__)

Edit = tuple[tuple[Any, ...], int, int]  # (path in the bound arguments, old, new)
Edits = dict[str, list[list[Edit]]]
"""Per op name, per occurrence in one module's own code: the edits of that call."""
Templates = dict[str, list[dict[str, Any]]]
Sig = tuple[tuple[tuple[str, Any], ...], tuple[tuple[tuple[Any, ...], int], ...], bool]
Sigs = dict[str, list[Sig]]
"""Per op name, per occurrence: the call's structure (see :func:`structure`), its recorded
size arguments ``(path, old value)``, and whether the pruned model's code may skip it (see
:func:`~pruning_ir._ir.graph.vanishing_nodes`)."""
Skips = dict[str, list[int]]
"""Per op name: the recorded occurrences the slim model's code does not make."""
ModuleEdits = tuple[Edits, Templates, Sigs]
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


_DIM_ARGS = frozenset({"dim", "dim0", "dim1", "dims", "start_dim", "end_dim"})


def structure(bound: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """What identifies a call independently of batch size and sequence length: its argument
    names, the length of each list argument and the value of each dimension argument."""
    out: list[tuple[str, Any]] = []
    for k, v in bound.items():
        if isinstance(v, (list, tuple)):
            out.append((k, len(v)))
        elif k in _DIM_ARGS:
            out.append((k, v))
        else:
            out.append((k, None))
    return tuple(out)


def _fits(bound: dict[str, Any], sig: Sig, row: list[Edit]) -> bool:
    """Whether a call seen while watching (on the traced example inputs) is the recorded
    occurrence ``sig``: same structure, and every size argument at its recorded value or,
    where this prune changes it, at its new one."""
    here, sizes, _ = sig
    if structure(bound) != here:
        return False
    new = {path: n for path, _, n in row}
    for path, old in sizes:
        try:
            value = _get(bound, path)
        except (KeyError, IndexError, TypeError):
            return False
        if value != old and value != new.get(path, old):
            return False
    return True


class _Mode(TorchDispatchMode):
    def __init__(self, patch: LiteralShapePatch) -> None:
        super().__init__()
        self.patch = patch

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        p = self.patch
        if p.depth:
            return func(*args, **kwargs)
        raw = op_name(func)
        name = SAME_OP.get(raw, raw)
        seq = p.edits.get(name)
        if seq is None:
            return func(*args, **kwargs)
        i = p.next_occurrence(name)
        if raw == "aten.alias":
            p.count[name] = i + 1
            if i < len(seq) and seq[i] and i < len(p.templates.get(name, [])) and p.templates[name][i]:
                # a slice that the old sizes made partial is full-range at the new sizes, so torch
                # dispatched an alias; the recorded slice (with its new bounds) is what must run
                template = p.templates[name][i]
                literal = not _full_range(args[0], template)
                p.saw(name, i, seq[i], literal)
                if literal:
                    return torch.ops.aten.slice.Tensor(args[0], **template)
            return func(*args, **kwargs)
        bound = bind(func, args, kwargs)
        if p.watch is not None:
            i = p.align(name, i, bound)
        p.count[name] = i + 1
        if i >= len(seq) or not seq[i]:
            return func(*args, **kwargs)
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


def _shape_arg(rest: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    if "shape" in kwargs:
        return list(kwargs["shape"])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        return list(rest[0])
    return list(rest)


def _reshape(x: torch.Tensor, *rest: Any, **kwargs: Any) -> torch.Tensor:
    y = x if x.is_contiguous() else x.contiguous()
    return torch.ops.aten.view.default(y, _shape_arg(rest, kwargs))


def _unflatten(x: torch.Tensor, dim: int, sizes: Any) -> torch.Tensor:
    if not isinstance(dim, int):  # a named dimension
        return torch.unflatten(x, dim, sizes)
    d = dim % x.dim()
    y = x if x.is_contiguous() else x.contiguous()
    return torch.ops.aten.view.default(y, [*x.shape[:d], *sizes, *x.shape[d + 1:]])


def _narrow(x: torch.Tensor, dim: int, start: Any, length: int) -> torch.Tensor:
    if not (isinstance(start, int) and isinstance(dim, int) and isinstance(length, int)):
        return torch.narrow(x, dim, start, length)
    d = dim % x.dim()
    if start < 0:
        start += x.shape[d]
    return torch.ops.aten.slice.Tensor(x, d, start, start + length)


_REROUTE: dict[Any, Callable[..., torch.Tensor]] = {
    torch.Tensor.reshape: _reshape, torch.reshape: _reshape,
    torch.Tensor.unflatten: _unflatten, torch.unflatten: _unflatten,
    torch.Tensor.narrow: _narrow, torch.narrow: _narrow,
}
"""Composite functions that check their size arguments *before* any ATen op is dispatched
(``reshape(b, 96, -1)`` raises in Python once the tensor holds 68 channels), so a literal in
them can never reach :class:`_Mode`. Inside a patched module's own code they run as the ATen
ops they decompose into (a contiguous copy where needed, then ``view``; ``slice``), which
:class:`_Mode` then rewrites."""


class _Reroute(TorchFunctionMode):
    def __init__(self, patch: LiteralShapePatch) -> None:
        super().__init__()
        self.patch = patch

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        alt = _REROUTE.get(func)
        if alt is None or self.patch.depth or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        return alt(*args, **kwargs)


SAME_OP = {"aten.alias": "aten.slice", "aten._unsafe_view": "aten.view", "aten._reshape_alias": "aten.view"}
"""Ops counted as one: a full-range slice dispatches as ``alias``, and ``reshape`` as ``view``
or ``_unsafe_view`` depending on strides (which pruning can change)."""


class LiteralShapePatch:
    """Forward hooks that rewrite literal channel sizes of one module's own ops.

    ``templates[op][i]``: for slices, the non-tensor arguments of occurrence ``i`` at the
    new sizes (used when the slice became full-range and torch dispatched an alias).
    ``watch``: while not ``None``, every argument seen at its old value (a literal,
    rewritten: ``True``) or already at its new value (``False``) is recorded there.
    """

    def __init__(self, edits: Edits, templates: Templates | None = None, sigs: Sigs | None = None,
                 skips: Skips | None = None) -> None:
        self.edits = edits
        self.templates = templates or {}
        self.sigs = sigs or {}
        self.skips = skips or {}
        self.count: dict[str, int] = {}
        self.depth = 0
        self._modes: list[tuple[_Mode, _Reroute]] = []
        self.watch: dict[FactId, bool] | None = None

    def next_occurrence(self, name: str) -> int:
        """The recorded occurrence the next call of ``name`` is, passing over those the slim
        model's code skips."""
        i = self.count.get(name, 0)
        skip = self.skips.get(name)
        while skip and i in skip:
            i += 1
        return i

    def align(self, name: str, i: int, bound: dict[str, Any]) -> int:
        """While watching: when the call is not occurrence ``i`` but a later one, and every
        occurrence in between may vanish at the new sizes (``repeat_kv`` returns early once a
        query group has one head), pass over them and remember that the code skips them."""
        sigs = self.sigs.get(name)
        rows = self.edits[name]
        if not sigs or i >= len(sigs) or _fits(bound, sigs[i], rows[i]):
            return i
        j = i
        while j < len(sigs) and sigs[j][2] and not _fits(bound, sigs[j], rows[j]):
            j += 1
        if j == i or j >= len(sigs) or not _fits(bound, sigs[j], rows[j]):
            return i
        skip = self.skips.setdefault(name, [])
        skip.extend(k for k in range(i, j) if k not in skip)
        return j

    def saw(self, name: str, i: int, row: list[Edit], literal: bool) -> None:
        if self.watch is not None:
            for path, _, _ in row:
                self.watch[(name, i, path)] = literal

    def pre(self, module: nn.Module, args: Any) -> None:
        self.count = {}
        modes = (_Mode(self), _Reroute(self))
        modes[0].__enter__()
        modes[1].__enter__()
        self._modes.append(modes)

    def post(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._modes:
            dispatch, function = self._modes.pop()
            function.__exit__(None, None, None)
            dispatch.__exit__(None, None, None)

    def child_pre(self, module: nn.Module, args: Any) -> None:
        self.depth += 1

    def child_post(self, module: nn.Module, args: Any, out: Any) -> None:
        self.depth -= 1

    def __getstate__(self) -> dict[str, Any]:
        return {"edits": self.edits, "templates": self.templates, "sigs": self.sigs, "skips": self.skips}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["edits"], state.get("templates"), state.get("sigs"),  # type: ignore[misc]
                      state.get("skips"))


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


def install(module: nn.Module, edits: Edits, templates: Templates | None = None,
            sigs: Sigs | None = None, skips: Skips | None = None) -> Callable[[], None]:
    """Patch ``module``'s own ops (a module patched by an earlier prune gets its edits chained).

    Returns a function that undoes this call (used to drop a patch that turned out unneeded).
    """
    existing = getattr(module, "_pruning_ir_patch", None)
    if isinstance(existing, LiteralShapePatch):
        before = (existing.edits, existing.templates, existing.sigs, existing.skips)
        existing.edits = _compose(existing.edits, edits)
        existing.templates = templates or existing.templates
        existing.sigs = sigs or existing.sigs
        existing.skips = existing.skips if skips is None else dict(skips)

        def restore() -> None:
            existing.edits, existing.templates, existing.sigs, existing.skips = before

        return restore
    patch = LiteralShapePatch(edits, templates, sigs, None if skips is None else dict(skips))
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


def module_edits(snap: Snapshot, kept: dict[int, torch.Tensor]) -> dict[str, ModuleEdits]:
    """Module path -> the edits of its own ops whose size facts change, for slices the
    non-tensor arguments at the new sizes, and each occurrence's :data:`Sig` (see
    :class:`LiteralShapePatch`); one pass over the graph."""
    rows: dict[str, tuple[Edits, Templates, dict[str, list[Node]]]] = {}
    changed: set[str] = set()
    sp = snap.spaces
    for node in snap.graph.nodes:
        if node.leaf:
            continue
        op = SAME_OP.get(node.op, node.op)
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
        edits, templates, nodes = rows.setdefault(node.module, ({}, {}, {}))
        edits.setdefault(op, []).append(row)
        templates.setdefault(op, []).append(args if row else {})
        nodes.setdefault(op, []).append(node)
        if row:
            changed.add(node.module)
    if not changed:
        return {}
    chains = snap.cache.get("view_chains")
    if chains is None:
        chains = snap.cache["view_chains"] = view_chains(snap.graph)
    values = snap.graph.values
    shapes: dict[int, tuple[int, ...]] = {}

    def new_shape(vid: int) -> tuple[int, ...]:
        if vid not in shapes:
            v = values[vid]
            shapes[vid] = tuple(kept_size(sp, ax, kept) for ax in v.axes) if v.axes else v.shape
        return shapes[vid]

    out: dict[str, ModuleEdits] = {}
    for module in changed:
        edits, templates, nodes = rows[module]
        keep = {op for op, r in edits.items() if any(r)}
        mine = {n.nid: chains[n.nid] for op in keep for n in nodes[op] if n.nid in chains}
        vanish = vanishing_nodes(mine, new_shape)
        out[module] = ({op: r for op, r in edits.items() if op in keep},
                       {op: t for op, t in templates.items() if op in keep},
                       {op: [(structure(n.kwargs), tuple((f.path, f.old) for f in n.facts), n.nid in vanish)
                             for n in nodes[op]] for op in keep})
    return out


def fact_ids(edits: Edits) -> list[FactId]:
    """The :data:`FactId` of every edit in ``edits``."""
    return [(op, i, path) for op, rows in edits.items() for i, row in enumerate(rows) for path, _, _ in row]


def _only_literal(edits: Edits, literal: dict[FactId, bool]) -> Edits:
    """``edits`` without the sizes known to adapt by themselves: rewriting those "when still at
    the old value" would misfire on other inputs (``batch * heads`` equals its old value at
    another batch size)."""
    return {op: [[e for e in row if literal.get((op, i, e[0]), True)] for i, row in enumerate(rows)]
            for op, rows in edits.items()}


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


def patch_literals(model: nn.Module, snap: Snapshot, edits: dict[str, ModuleEdits],
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
    skip_cache: dict[tuple[Any, ...], Skips] = snap.cache.setdefault("literal_skips", {})
    modules: dict[str, nn.Module] = {}
    for path in edits:
        try:
            modules[path] = model.get_submodule(path)
        except AttributeError:
            continue
    keys = {path: _update_key(path, modules, guesses, unresolved) for path in modules}
    # which recorded calls the slim code skips depends on which of them became trivial
    skip_keys = {path: (keys[path], tuple((op, tuple(i for i, sg in enumerate(sigs) if sg[2]))
                                           for op, sigs in sorted(edits[path][2].items())))
                 for path in modules}
    decided: list[str] = []
    unknown: list[str] = []
    for path, key in keys.items():
        if _sized_by_attributes(modules[path]):
            continue
        known = cache.get(key, {})
        ids = fact_ids(edits[path][0])
        if all(fid in known for fid in ids) and skip_keys[path] in skip_cache:
            if any(known[fid] for fid in ids):
                decided.append(path)
        else:
            unknown.append(path)
    undo: dict[str, Callable[[], None]] = {}
    for path in decided:
        e, templates, sigs = edits[path]
        undo[path] = install(modules[path], _only_literal(e, cache[keys[path]]), templates, sigs,
                             skips=skip_cache[skip_keys[path]])
    for path in unknown:
        undo[path] = install(modules[path], *edits[path], skips={})
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
            p = patch_of(modules[path])
            skip_cache[skip_keys[path]] = dict(p.skips) if p is not None else {}
        if any(seen.get(fid, False) for fid in ids):
            found.append(path)
            p = patch_of(modules[path])
            if complete and p is not None:
                p.edits = _only_literal(p.edits, {fid: seen.get(fid, False) for fid in ids})
        else:
            undo[path]()
    if found:
        log.warning("slim %s: modules %s hold channel sizes as literals in forward; their ops are patched "
                    "at run time by forward hooks", type(model).__name__, sorted(found))
    return decided + found, complete
