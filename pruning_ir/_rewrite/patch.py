"""Which modules of a slim model need a :class:`~.hooks.LiteralShapePatch`, and with what.

:func:`module_edits` lists, per module, the size arguments of its own ops that a prune
changes. A traced integer has no provenance (``x.shape[1] // 2`` and a literal ``5`` both
arrive as Python ints), so the IR alone cannot tell a literal from a size the code computes.
:func:`patch_literals` finds out by running the slim model once with a *watching* patch on
every module whose own ops have changing size facts: an argument still at its old value is a
literal (patch kept, rewriting only those), one already at its new value adapts by itself
(patch removed). Whether a size adapts can depend on an attribute set by matching values
(``head_dim``); when verification puts such a guess back, the module's patch widens to every
changing size again (:meth:`~.hooks.LiteralShapePatch.widen`). The answers, and which
recorded calls the slim code skips, are cached on the snapshot per module and attribute
update, so a search that prunes many candidates from one IR pays that forward once, not per
candidate; ``prune(verify=False)`` and ``prune(verify=True)``
install the same patches (verification then checks the result).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._ir.axes import kept_size
from .._ir.chains import vanishing_nodes
from .._ir.graph import Node
from .._ir.snapshot import Snapshot
from .._trace.run import run_call
from .hooks import (
    SAME_OP,
    Edit,
    Edits,
    FactId,
    LiteralShapePatch,
    ModuleEdits,
    Skips,
    Templates,
    compose_edits,
    install,
    patch_of,
    structure,
)

__all__ = ["LiteralShapePatch", "ModuleEdits", "install", "module_edits", "patch_literals", "patch_of"]

log = logging.getLogger(__name__)


def _module_nodes(snap: Snapshot) -> tuple[list[Node], dict[str, list[Node]]]:
    """The snapshot's non-leaf nodes that have size facts, and every non-leaf node by module
    (graph order); cached in ``snap.cache``."""
    got = snap.cache.get("module_nodes")
    if got is None:
        with_facts: list[Node] = []
        by_module: dict[str, list[Node]] = {}
        # the example call's nodes: a patch counts one module call's ops (another traced call
        # taking other paths there is checked by verification, not patched)
        for node in snap.graph.primary_nodes():
            if node.leaf:
                continue
            by_module.setdefault(node.module, []).append(node)
            if node.facts:
                with_facts.append(node)
        got = snap.cache["module_nodes"] = (with_facts, by_module)
    return got  # type: ignore[no-any-return]


def module_edits(snap: Snapshot, kept: dict[int, torch.Tensor]) -> dict[str, ModuleEdits]:
    """Module path -> the edits of its own ops whose size facts change, for slices the
    non-tensor arguments at the new sizes, and each occurrence's :data:`Sig` (see
    :class:`LiteralShapePatch`). One pass over the nodes with size facts, then one over the
    nodes of the modules whose facts change."""
    sp = snap.spaces
    with_facts, by_module = _module_nodes(snap)
    news: dict[int, list[int]] = {}
    changed: set[str] = set()
    for node in with_facts:
        new_sizes = news[node.nid] = [kept_size(sp, f.layout, kept) for f in node.facts]
        if any(n != f.old for n, f in zip(new_sizes, node.facts)):
            changed.add(node.module)
    if not changed:
        return {}
    rows: dict[str, tuple[Edits, Templates, dict[str, list[Node]]]] = {}
    for module in changed:
        edits, templates, nodes = rows[module] = ({}, {}, {})
        for node in by_module[module]:
            op = SAME_OP.get(node.op, node.op)
            row: list[Edit] = []
            args: dict[str, Any] = {}
            if node.op == "aten.slice":
                args = {k: v for k, v in node.kwargs.items() if k in ("dim", "start", "end", "step")}
            for f, new in zip(node.facts, news.get(node.nid, ())):
                if new != f.old:
                    row.append((f.path, f.old, new))
                    if len(f.path) == 1 and f.path[0] in args:
                        args[f.path[0]] = new
            edits.setdefault(op, []).append(row)
            templates.setdefault(op, []).append(args if row else {})
            nodes.setdefault(op, []).append(node)
    chains = snap.view_chains()
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
        out[module] = ModuleEdits({op: r for op, r in edits.items() if op in keep},
                                  {op: t for op, t in templates.items() if op in keep},
                                  {op: [(structure(n.kwargs), tuple((f.path, f.old) for f in n.facts),
                                         n.nid in vanish) for n in nodes[op]] for op in keep})
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


def _known(modules: dict[str, nn.Module], edits: dict[str, ModuleEdits], keys: dict[str, tuple[Any, ...]],
           skip_keys: dict[str, tuple[Any, ...]], cache: dict[tuple[Any, ...], dict[FactId, bool]],
           skip_cache: dict[tuple[Any, ...], Skips]) -> tuple[list[str], list[str]]:
    """The modules known (from earlier prunes of the snapshot) to hold a literal, and those not
    known yet; stock layers sized by their attributes are neither."""
    decided: list[str] = []
    unknown: list[str] = []
    for path, key in keys.items():
        if _sized_by_attributes(modules[path]):
            continue
        known = cache.get(key, {})
        ids = fact_ids(edits[path].edits)
        if all(fid in known for fid in ids) and skip_keys[path] in skip_cache:
            if any(known[fid] for fid in ids):
                decided.append(path)
        else:
            unknown.append(path)
    return decided, unknown


def _watch(model: nn.Module, snap: Snapshot, modules: dict[str, nn.Module], unknown: list[str],
           forward: Callable[[], object] | None) -> tuple[bool, bool, dict[str, dict[FactId, bool]]]:
    """Run ``forward`` with the patches of ``unknown`` watching; whether it passed, whether a
    size argument was seen both at its old and its new value, and what each patch saw."""
    watched: dict[str, dict[FactId, bool]] = {}
    for path in unknown:
        p = patch_of(modules[path])
        assert p is not None
        p.watch = watched[path] = {}
        p.mixed = False
    mixed = False
    try:
        if forward is None:
            run_call(model, snap.calls()[0])
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
                mixed = mixed or p.mixed
    return complete, mixed, watched


def patch_literals(model: nn.Module, snap: Snapshot, edits: dict[str, ModuleEdits],
                   guesses: dict[str, list[tuple[str, Any]]], unresolved: list[str],
                   forward: Callable[[], object] | None = None) -> tuple[list[str], bool]:
    """Install a :class:`LiteralShapePatch` on every module of the slim ``model`` whose own code
    holds a changing channel size as a literal. Returns their paths, and whether ``forward``
    ran (and passed) on a model that computes what the returned one computes.

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
                                           for op, sigs in sorted(edits[path].sigs.items())))
                 for path in modules}
    decided, unknown = _known(modules, edits, keys, skip_keys, cache, skip_cache)
    undo: dict[str, Callable[[], None]] = {}
    for path in decided:
        e, templates, sigs = edits[path].edits, edits[path].templates, edits[path].sigs
        before = patch_of(modules[path])
        full = e if before is None else compose_edits(before.edits, e)
        undo[path] = install(modules[path], _only_literal(e, cache[keys[path]]), templates, sigs,
                             skips=skip_cache[skip_keys[path]], path=path)
        p = patch_of(modules[path])
        assert p is not None
        p.all_edits = full
    for path in unknown:
        undo[path] = install(modules[path], edits[path].edits, edits[path].templates, edits[path].sigs, skips={},
                               path=path)
    if not unknown:
        return decided, False
    complete, mixed, watched = _watch(model, snap, modules, unknown, forward)
    found: list[str] = []
    for path in unknown:
        seen = watched[path]
        ids = fact_ids(edits[path].edits)
        if complete:  # an occurrence the forward never reached needs no patch (as verification sees it)
            cache.setdefault(keys[path], {}).update({fid: seen.get(fid, False) for fid in ids})
            p = patch_of(modules[path])
            skip_cache[skip_keys[path]] = dict(p.skips) if p is not None else {}
        if any(seen.get(fid, False) for fid in ids):
            found.append(path)
            p = patch_of(modules[path])
            if complete and p is not None:
                p.all_edits = p.edits
                p.edits = _only_literal(p.edits, {fid: seen.get(fid, False) for fid in ids})
        else:
            undo[path]()
    if found:
        log.warning("slim %s: modules %s hold channel sizes as literals in forward; their ops are patched "
                    "at run time by forward hooks (eager PyTorch, gradients included; torch.export, ONNX and "
                    "TorchScript export do not reliably keep them: check exported graphs)",
                    type(model).__name__, sorted(found))
    # a watching patch rewrote every size it saw at its old value; kept, it rewrites those found
    # literal, and removed, none (it found none): either does what the watched run did unless a
    # size argument was seen both at its old and at its new value (a module called twice)
    return decided + found, complete and not mixed
