"""Slicing, selecting, splitting, concatenation, stacking and indexing."""

from __future__ import annotations

import sys

from .._ir.graph import ValueRef
from .._ir.spaces import ONE, Layout
from .base import Ctx, broadcast, norm_dim, rule


def _clamp(v: int | None, n: int, default: int) -> int:
    if v is None:
        return default
    if v < 0:
        v += n
    return max(0, min(n, v))


def _rigid_tail(ctx: Ctx, x: ValueRef, d: int, i: int) -> bool:
    """True when entries ``i:`` of axis ``d`` of ``x`` are all rigid (their count never changes)."""
    sp = ctx.spaces
    return sp.all_rigid(sp.slice(sp.normalize(ctx.axes(x)[d]), i, ctx.shape(x)[d]))


@rule("aten.slice", "aten.slice_copy")
def slice_(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    d = norm_dim(ctx.a("dim", 0), len(axes))
    n = ctx.shape(x)[d]
    start, end, step = ctx.a("start"), ctx.a("end"), ctx.a("step", 1)
    s, e = _clamp(start, n, 0), _clamp(end, n, n)
    if step != 1:
        ctx.rigid(axes[d], f"strided slice (step {step})")
        axes[d] = ctx.fresh(ctx.out_shape(0)[d], "strided", "strided slice")
    elif s == 0 and e == n:
        pass
    else:
        sp = ctx.spaces
        axes[d] = sp.slice(sp.normalize(axes[d]), s, e)
        # a negative start/end counts from the end: it holds while the entries after it keep
        # their number, which is certain when they are all rigid (then no fact: its value, the
        # kept prefix, would never equal the negative literal and always read as changed)
        if start not in (None, 0) and not (start < 0 and _rigid_tail(ctx, x, d, s)):
            ctx.fact(("start",), sp.slice(sp.normalize(ctx.axes(x)[d]), 0, s), start, "offset")
        if end is not None and end < sys.maxsize and e < n and not (end < 0 and _rigid_tail(ctx, x, d, e)):
            ctx.fact(("end",), sp.slice(sp.normalize(ctx.axes(x)[d]), 0, e), end, "offset")
    ctx.set_out(0, axes)


@rule("aten.narrow", "aten.narrow_copy")
def narrow(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    d = norm_dim(ctx.a("dim"), len(axes))
    s, length = ctx.a("start"), ctx.a("length")
    sp = ctx.spaces
    full = sp.normalize(axes[d])
    axes[d] = sp.slice(full, s, s + length)
    if s:
        ctx.fact(("start",), sp.slice(full, 0, s), s, "offset")
    ctx.fact(("length",), axes[d], length)
    ctx.set_out(0, axes)


@rule("aten.select", "aten.select_copy")
def select(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    d = norm_dim(ctx.a("dim"), len(axes))
    n = ctx.shape(x)[d]
    idx = ctx.a("index")
    i = idx + n if idx < 0 else idx
    if n > 1:
        # the selected entry must survive: pin its leaves
        ctx.rigid(ctx.spaces.slice(ctx.spaces.normalize(axes[d]), i, i + 1), "selected by index")
    del axes[d]
    ctx.set_out(0, axes)


@rule("aten.split", "aten.split_with_sizes", "aten.unsafe_split", "aten.split_copy",
      "aten.split_with_sizes_copy", "aten.unsafe_split_with_sizes")
def split(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    d = norm_dim(ctx.a("dim", 0), len(axes))
    sp = ctx.spaces
    full = sp.normalize(axes[d])
    parts: list[Layout] = []
    off = 0
    for i in range(ctx.n_out):
        size = ctx.out_shape(i)[d]
        parts.append(sp.slice(full, off, off + size))
        off += size
    sizes = ctx.a("split_sizes")
    if sizes is not None:
        for i, s in enumerate(sizes):
            ctx.fact(("split_sizes", i), parts[i], s)
    else:
        # one split_size for every piece: pieces of equal size must keep equal sizes
        split_size = ctx.a("split_size")
        equal = [p for i, p in enumerate(parts) if ctx.out_shape(i)[d] == split_size]
        for p in equal[1:]:
            ctx.unify(equal[0], p)
        if equal:
            ctx.fact(("split_size",), equal[0], split_size)
        if len(equal) < len(parts):
            # an uneven last piece ties every piece's size to the total by arithmetic
            # (chunk: ceil(C / n)); no removal keeps that, so none is allowed
            for p in parts:
                ctx.rigid(p, "split into uneven pieces (piece sizes computed from the total)")
    for i, p in enumerate(parts):
        out = list(axes)
        out[d] = p
        ctx.set_out(i, out)


@rule("aten.unbind", "aten.unbind_copy")
def unbind(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    d = norm_dim(ctx.a("dim", 0), len(axes))
    ctx.rigid(axes[d], "unbind")
    del axes[d]
    for i in range(ctx.n_out):
        ctx.set_out(i, axes)


@rule("aten.cat", "aten.concat", "aten.concatenate")
def cat(ctx: Ctx) -> None:
    refs = [r for r in ctx.a("tensors") if isinstance(r, ValueRef)]
    out_shape = ctx.out_shape(0)
    nd = len(out_shape)
    refs = [r for r in refs if len(ctx.shape(r)) == nd]  # legacy empty 1-d tensors are ignored
    d = norm_dim(ctx.a("dim", 0), nd)
    out: list[Layout] = []
    for k in range(nd):
        if k == d:
            lay: Layout = ()
            for r in refs:
                lay = lay + ctx.spaces.normalize(ctx.axes(r)[k])
            out.append(lay)
        else:
            first = ctx.axes(refs[0])[k]
            for r in refs[1:]:
                ctx.unify(first, ctx.axes(r)[k])
            out.append(first)
    ctx.set_out(0, out)


@rule("aten.stack")
def stack(ctx: Ctx) -> None:
    refs = [r for r in ctx.a("tensors") if isinstance(r, ValueRef)]
    first = list(ctx.axes(refs[0]))
    for r in refs[1:]:
        for a, b in zip(first, ctx.axes(r), strict=True):
            ctx.unify(a, b)
    d = norm_dim(ctx.a("dim", 0), len(first) + 1)
    first.insert(d, ONE if len(refs) == 1 else ctx.fresh(len(refs), "stack", "stacked axis"))
    ctx.set_out(0, first)


def _gather_like(ctx: Ctx, src: str, dim_arg: str) -> None:
    x = ctx.a(src)
    axes = list(ctx.axes(x))
    d = norm_dim(ctx.a(dim_arg), len(axes))
    ctx.rigid(axes[d], f"{ctx.node.op} indexes this axis with data")
    out_shape = ctx.out_shape(0)
    if len(out_shape) == len(axes):
        axes[d] = ctx.fresh(out_shape[d], "gathered", "indexed by data")
        for k, s in enumerate(out_shape):
            if k != d and s != ctx.shape(x)[k]:
                ctx.rigid(axes[k], "index tensor narrows this axis")
                axes[k] = ctx.fresh(s, "gathered", "indexed by data")
        ctx.set_out(0, axes)
    else:
        idx_axes = ctx.axes(ctx.a("index"))
        ctx.set_out(0, axes[:d] + list(idx_axes) + axes[d + 1 :])


@rule("aten.index_select")
def index_select(ctx: Ctx) -> None:
    _gather_like(ctx, "self", "dim")


@rule("aten.gather")
def gather(ctx: Ctx) -> None:
    x, idx = ctx.a("self"), ctx.a("index")
    d = norm_dim(ctx.a("dim"), len(ctx.shape(x)))
    xa, ia = ctx.axes(x), ctx.axes(idx)
    for k in range(len(xa)):
        if k == d:
            ctx.rigid(xa[k], "gather indexes this axis with data")
        elif ctx.shape(x)[k] == ctx.shape(idx)[k]:
            ctx.unify(xa[k], ia[k])
        else:
            ctx.rigid(xa[k], "gather narrows this axis")
    ctx.set_out(0, list(ia))


@rule("aten.index")
def index(ctx: Ctx) -> None:
    """Advanced indexing ``x[..., idx, ...]``: indexed axes are rigid, others pass."""
    x = ctx.a("self")
    indices = list(ctx.a("indices"))
    axes = list(ctx.axes(x))
    out_shape = ctx.out_shape(0)
    pos = [k for k, ix in enumerate(indices) if ix is not None]
    for k in pos:
        ctx.rigid(axes[k], "advanced indexing with a tensor")
        if ctx.graph.values[indices[k].vid].dtype == "torch.bool":
            ctx.rigid_all("boolean mask indexing")
            return
    untouched = [axes[k] for k in range(len(axes)) if k not in pos]
    n_idx = len(out_shape) - len(untouched)
    adjacent = pos == list(range(pos[0], pos[-1] + 1)) if pos else True
    start = pos[0] if adjacent and pos else 0
    # the result's index axes are the (broadcast) axes of the index tensors themselves
    idx_part = broadcast(ctx, [indices[k] for k in pos], tuple(out_shape[start : start + n_idx]))
    out = untouched[:start] + idx_part + untouched[start:]
    ctx.set_out(0, out)


@rule("aten.index_put", "aten.index_put_", "aten._index_put_impl_")
def index_put(ctx: Ctx) -> None:
    """``self[indices] = values`` where the index tensors address the leading axes only (a boolean
    mask over (batch, time), wav2vec2's time masking): the trailing axes are written entry for
    entry from ``values`` (right-aligned, broadcast), so they couple like an elementwise op;
    the indexed axes are positional. Any other form is rigid."""
    x, indices, values = ctx.a("self"), ctx.a("indices"), ctx.a("values")
    if not (isinstance(x, ValueRef) and isinstance(values, ValueRef) and isinstance(indices, (list, tuple))
            and indices and all(isinstance(i, ValueRef) for i in indices)):
        data_indexed(ctx)
        return
    idx_shapes = [ctx.shape(i) for i in indices]
    is_bool = ["bool" in ctx.graph.values[i.vid].dtype for i in indices]
    if any(is_bool) and len(indices) != 1:
        data_indexed(ctx)
        return
    n_indexed = len(idx_shapes[0]) if is_bool[0] else len(indices)
    xa, xs = ctx.axes(x), ctx.shape(x)
    va, vs = ctx.axes(values), ctx.shape(values)
    if n_indexed > len(xs):
        data_indexed(ctx)
        return
    for i in indices:
        for ax in ctx.axes(i):
            ctx.rigid(ax, f"{ctx.node.op} index")
    for d in range(n_indexed):
        ctx.rigid(xa[d], f"{ctx.node.op} writes by position along this axis")
    trailing = len(xs) - n_indexed
    for k in range(1, len(vs) + 1):  # values' axes, right-aligned against self's
        if k <= trailing and vs[-k] == xs[-k] and vs[-k] != 1:
            ctx.unify(xa[-k], va[-k])
        else:
            ctx.rigid(va[-k], f"{ctx.node.op} broadcasts or indexes values along this axis")
    for i, vid in enumerate(ctx.node.outputs):
        if vid >= 0:
            ctx.set_out(i, list(xa))


@rule("aten.index_copy", "aten.index_copy_",
      "aten.index_add", "aten.index_add_", "aten.scatter", "aten.scatter_", "aten.scatter_add",
      "aten.scatter_add_", "aten.masked_scatter", "aten.masked_scatter_", "aten.masked_select",
      "aten.nonzero", "aten.take", "aten.put_", "aten.index_fill", "aten.index_fill_",
      "aten.slice_scatter", "aten.select_scatter", "aten.as_strided", "aten.as_strided_",
      "aten.unfold", "aten.diagonal", "aten.diag", "aten.unique_dim", "aten._unique2", "aten.bincount",
      "aten.histc", "aten.kthvalue", "aten.mode")
def data_indexed(ctx: Ctx) -> None:
    """Ops that move entries by data: every axis they touch is rigid."""
    ctx.rigid_all(f"{ctx.node.op} moves or indexes entries by position")


@rule("aten.tril", "aten.triu", "aten.tril_", "aten.triu_", "aten.cumsum", "aten.cumsum_", "aten.cumprod",
      "aten.sort", "aten.argsort", "aten.topk", "aten.flip", "aten.roll", "aten.logcumsumexp", "aten.cummax",
      "aten.cummin")
def positional(ctx: Ctx) -> None:
    """Ops that depend on positions along some axes: those axes are rigid, others pass."""
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    nd = len(axes)
    if ctx.node.op in ("aten.tril", "aten.triu", "aten.tril_", "aten.triu_"):
        dims = [nd - 2, nd - 1]
    else:
        raw = ctx.a("dims", ctx.a("dim", -1))
        dims = [norm_dim(d, nd) for d in (raw if isinstance(raw, (list, tuple)) else [raw])]
        if ctx.node.op == "aten.roll" and not dims:
            dims = list(range(nd))
    for d in dims:
        if d < nd:
            ctx.rigid(axes[d], f"{ctx.node.op} depends on positions along this axis")
    for i, vid in enumerate(ctx.node.outputs):
        if vid < 0:
            continue
        shape = ctx.graph.values[vid].shape
        out = [ax if k < nd and shape[k] == ctx.shape(x)[k] else ctx.fresh(shape[k], "positional", "positional op")
               for k, ax in enumerate(axes)] if len(shape) == nd else [
            ctx.fresh(s, "positional", "positional op") for s in shape]
        ctx.set_out(i, out)
