"""Run-time patches for channel sizes written as literals in a module's ``forward``.

When ``forward`` holds a channel size the engine cannot reach through an attribute
(``torch.split(x, [5, 8])``, ``x.reshape(b, 96, -1)``), the slim module gets a pair of
forward hooks (a :class:`LiteralShapePatch`) that, while *that module's own code* runs (not
its children's), rewrite the integer arguments of its ATen calls from their old to their new
values. Calls are matched to the recorded ones occurrence by occurrence per op, passing over
recorded calls the slim code skips (learnt once, while watching: ``repeat_kv`` makes no
expand/reshape once a query group has one head). Functions that check their sizes in Python
before dispatching any ATen op (``reshape``, ``unflatten``, ``narrow``) run as the ATen ops
they decompose into, so their literals can be rewritten too. The user's classes are kept; the
rewrite log says which modules carry a patch, and they run a little slower (a dispatch mode
is active during their forward). Which modules need one is decided in :mod:`.patch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .._ir.graph import set_path
from .._trace.recorder import COMPOSITES, bind, op_name
from .replay import Tape, replace_outputs

Edit = tuple[tuple[Any, ...], int, int]  # (path in the bound arguments, old, new)
Edits = dict[str, list[list[Edit]]]
"""Per op name, per occurrence in one module's own code: the edits of that call."""
Templates = dict[str, list[dict[str, Any]]]
Sig = tuple[tuple[tuple[str, Any], ...], tuple[tuple[tuple[Any, ...], int], ...], bool]
Sigs = dict[str, list[Sig]]
"""Per op name, per occurrence: the call's structure (see :func:`structure`), its recorded
size arguments ``(path, old value)``, and whether the pruned model's code may skip it (see
:func:`~pruning_ir._ir.chains.vanishing_nodes`)."""
Skips = dict[str, list[int]]
"""Per op name: the recorded occurrences the slim model's code does not make."""


@dataclass(frozen=True)
class ModuleEdits:
    """What a patch of one module rewrites: per op, the edits of each recorded call of its own
    code, the non-tensor arguments of slices at the new sizes, and each call's :data:`Sig`."""

    edits: Edits
    templates: Templates
    sigs: Sigs


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
        func, args, kwargs, rewrote = self._rewrite(func, args, kwargs)
        out = func(*args, **kwargs)
        tape = self.patch.tape
        if tape is not None:
            tape.record(func, args, kwargs, out, rewrote)
        return out

    def _rewrite(self, func: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, Any], bool]:
        """The call to make instead of ``func(*args, **kwargs)``, and whether it differs."""
        p = self.patch
        if p.depth:
            return func, args, kwargs, False
        raw = op_name(func)
        name = SAME_OP.get(raw, raw)
        seq = p.edits.get(name)
        if seq is None:
            return func, args, kwargs, False
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
                    return torch.ops.aten.slice.Tensor, (args[0],), dict(template), True
            return func, args, kwargs, False
        bound = bind(func, args, kwargs)
        if p.watch is not None or p.relearn:
            i = p.align(name, i, bound)
        p.count[name] = i + 1
        if i >= len(seq) or not seq[i]:
            return func, args, kwargs, False
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
                p.note((name, i, path), value == old)
        if not changed:
            return func, args, kwargs, False
        return func, (), bound, True


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


def _tracing() -> bool:
    """Whether torch.export / torch.compile is tracing the model (no eager backward to replay for:
    the tracer differentiates the rewritten ops it records)."""
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting())


class _Reroute(TorchFunctionMode):
    def __init__(self, patch: LiteralShapePatch) -> None:
        super().__init__()
        self.patch = patch

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        p = self.patch
        if p.depth or p.tape is not None or not torch.is_grad_enabled() or _tracing() or not any(
                t.requires_grad for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
            return self._call(func, args, kwargs)
        # gradients wanted: write the ATen calls down, and if the patch rewrote one of them,
        # route the gradients through a replay of the rewritten calls (see .replay)
        p.tape = Tape(p.module_path)
        try:
            out = self._call(func, args, kwargs)
            tape = p.tape
        finally:
            p.tape = None
        return replace_outputs(tape, out) if tape.rewrote else out

    def _call(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        if func in COMPOSITES and not self.patch.depth:
            # one recorded node, whatever kernel runs it: the ops a fallback kernel decomposes
            # into (SDPA's math path once q/k and v head sizes differ) are not the module's own
            # calls and must not shift the occurrence count of its views
            self.patch.depth += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.patch.depth -= 1
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
    ``all_edits``: the edits before they were narrowed to the sizes found literal, while
    the prune that narrowed them may still restore attributes (see :meth:`widen`).
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
        self.mixed = False
        """A size argument was seen both at its old and at its new value while watching: the
        patch narrowed to the literal ones does not do what the watched run did."""
        self.all_edits: Edits | None = None
        self.tape: Tape | None = None
        self.relearn = False  # align with skipped calls on every call, not only while watching
        self.module_path = ""

    def forget_skips(self) -> None:
        """The module's attributes changed since the skipped calls were learnt (``repeat_kv``
        returns early only once ``num_key_value_groups`` is 1): learn them again as calls come."""
        self.skips = {}
        self.relearn = True

    def widen(self) -> None:
        """Rewrite every changing size again, not only those found literal: an attribute of the
        module set by matching values (``head_dim``) was put back to its old value, so the sizes
        computed from it, which adapted by themselves while watching, are stale now too."""
        if self.all_edits is not None:
            self.edits = self.all_edits

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
                self.note((name, i, path), literal)

    def note(self, fid: FactId, literal: bool) -> None:
        """While watching: size argument ``fid`` was seen at its old value (``literal``) or its
        new one; ``mixed`` once one argument was seen both ways (a module called twice)."""
        assert self.watch is not None
        if self.watch.get(fid, literal) != literal:
            self.mixed = True
        self.watch[fid] = literal

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
        return {"edits": self.edits, "templates": self.templates, "sigs": self.sigs, "skips": self.skips,
                "module_path": self.module_path, "relearn": self.relearn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["edits"], state.get("templates"), state.get("sigs"),  # type: ignore[misc]
                      state.get("skips"))
        self.module_path = state.get("module_path", "")
        self.relearn = state.get("relearn", False)


def compose_edits(old: Edits, new: Edits) -> Edits:
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
            sigs: Sigs | None = None, skips: Skips | None = None, path: str = "") -> Callable[[], None]:
    """Patch ``module``'s own ops (a module patched by an earlier prune gets its edits chained).

    Returns a function that undoes this call (used to drop a patch that turned out unneeded).
    """
    existing = getattr(module, "_pruning_ir_patch", None)
    if isinstance(existing, LiteralShapePatch):
        before = (existing.edits, existing.templates, existing.sigs, existing.skips)
        existing.all_edits = None  # an earlier prune's; the caller sets this prune's
        existing.edits = compose_edits(existing.edits, edits)
        existing.templates = templates or existing.templates
        existing.sigs = sigs or existing.sigs
        existing.skips = existing.skips if skips is None else dict(skips)

        def restore() -> None:
            existing.edits, existing.templates, existing.sigs, existing.skips = before

        return restore
    patch = LiteralShapePatch(edits, templates, sigs, None if skips is None else dict(skips))
    patch.module_path = path  # named in errors
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
