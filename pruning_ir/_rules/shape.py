"""View-like ops: reshape (merge/split axes), permute, squeeze, expand, repeat."""

from __future__ import annotations

from .._ir.spaces import ONE, Layout, Misaligned
from .base import Ctx, norm_dim, rule


def _resolve(shape: list[int], numel: int) -> list[int]:
    if -1 in shape:
        known = 1
        for s in shape:
            if s != -1:
                known *= s
        shape = [numel // known if s == -1 else s for s in shape]
    return shape


def reshape_layouts(ctx: Ctx, in_axes: list[Layout], in_shape: tuple[int, ...],
                    out_shape: list[int]) -> list[Layout]:
    """Layouts of ``x.reshape(out_shape)`` given the layouts of ``x``'s axes.

    Axes are matched in runs of equal element count (the usual reshape
    decomposition); each run is flattened (product) and split again.
    """
    sp = ctx.spaces
    out: list[Layout] = []
    i = j = 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        # skip size-1 axes on either side: they carry no channels
        if i < n_in and in_shape[i] == 1:
            i += 1
            continue
        if j < n_out and out_shape[j] == 1:
            out.append(ONE)
            j += 1
            continue
        if i >= n_in or j >= n_out:
            raise Misaligned("reshape ran out of axes")
        gi, gj = [i], [j]
        pi, pj = in_shape[i], out_shape[j]
        while pi != pj:
            if pi < pj:
                i += 1
                gi.append(i)
                pi *= in_shape[i]
            else:
                j += 1
                gj.append(j)
                pj *= out_shape[j]
        sizes = [out_shape[k] for k in gj]
        try:
            merged: Layout = ONE
            for k in gi:
                merged = sp.product(merged, in_axes[k])
            parts = sp.unflatten(merged, sizes) if len(sizes) > 1 else [merged]
        except Misaligned as exc:
            # only this run of axes is unaligned: the others keep their channels
            reason = f"reshape {list(in_shape)} -> {list(out_shape)} is not channel-aligned: {exc}"
            for k in gi:
                ctx.rigid(in_axes[k], reason)
            parts = [ctx.fresh(s, "view", reason) for s in sizes]
        out.extend(parts)
        i, j = gi[-1] + 1, gj[-1] + 1
    return out


@rule("aten.view", "aten._unsafe_view", "aten.reshape", "aten._reshape_alias", "aten.view_copy")
def view(ctx: Ctx) -> None:
    x = ctx.a("self")
    size = list(ctx.a("size"))
    in_shape = ctx.shape(x)
    out_shape = list(ctx.out_shape(0))
    in_axes = ctx.axes(x)
    try:
        out = reshape_layouts(ctx, in_axes, in_shape, out_shape)
    except Misaligned as exc:
        for ax in in_axes:
            ctx.rigid(ax, f"reshape {list(in_shape)} -> {out_shape} is not channel-aligned: {exc}")
        out = [ctx.fresh(s, f"view{k}", "unaligned reshape") for k, s in enumerate(out_shape)]
    ctx.set_out(0, out)
    for k, s in enumerate(size):
        if s != -1 and s != 1:
            ctx.fact(("size", k), out[k], s)


@rule("aten.permute", "aten.permute_copy")
def permute(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = ctx.axes(x)
    nd = len(axes)
    ctx.set_out(0, [axes[norm_dim(d, nd)] for d in ctx.a("dims")])


@rule("aten.transpose", "aten.swapaxes", "aten.transpose_copy")
def transpose(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    nd = len(axes)
    d0 = norm_dim(ctx.a("dim0"), nd)
    d1 = norm_dim(ctx.a("dim1"), nd)
    axes[d0], axes[d1] = axes[d1], axes[d0]
    ctx.set_out(0, axes)


@rule("aten.t", "aten.numpy_T", "aten.t_copy")
def t(ctx: Ctx) -> None:
    ctx.set_out(0, list(reversed(ctx.axes(ctx.a("self")))))


@rule("aten.squeeze", "aten.squeeze_copy", "aten.unsqueeze", "aten.unsqueeze_copy", "aten.squeeze_",
      "aten.unsqueeze_")
def squeeze(ctx: Ctx) -> None:
    # size-1 axes carry no channels: keep the non-1 axes in order
    x = ctx.a("self")
    axes = [ax for ax, s in zip(ctx.axes(x), ctx.shape(x), strict=True) if s != 1]
    out: list[Layout] = []
    it = iter(axes)
    for s in ctx.out_shape(0):
        out.append(ONE if s == 1 else next(it))
    ctx.set_out(0, out)


@rule("aten.expand", "aten.expand_copy")
def expand(ctx: Ctx) -> None:
    x = ctx.a("self")
    in_axes = ctx.axes(x)
    in_shape = ctx.shape(x)
    out_shape = ctx.out_shape(0)
    size = list(ctx.a("size"))
    lead = len(out_shape) - len(in_shape)
    out: list[Layout] = []
    for k, s in enumerate(out_shape):
        j = k - lead
        if j >= 0 and in_shape[j] == s:
            out.append(in_axes[j])
        else:
            # a broadcast copy axis: prunable only if it meets real channels
            out.append(ONE if s == 1 else ctx.fresh(s, f"expand{k}"))
    ctx.set_out(0, out)
    for k, s in enumerate(size):
        if s not in (-1, 1):
            ctx.fact(("size", k), out[k], s)


@rule("aten.repeat")
def repeat(ctx: Ctx) -> None:
    x = ctx.a("self")
    reps = list(ctx.a("repeats"))
    in_axes = ctx.axes(x)
    lead = len(reps) - len(in_axes)
    out: list[Layout] = []
    for k, r in enumerate(reps):
        base = in_axes[k - lead] if k >= lead else ONE
        rep = ONE if r == 1 else ctx.fresh(r, f"repeat{k}")
        out.append(ctx.spaces.product(rep, base))
        if r != 1:
            ctx.fact(("repeats", k), rep, r)
    ctx.set_out(0, out)


@rule("aten.repeat_interleave")
def repeat_interleave(ctx: Ctx) -> None:
    x = ctx.a("self")
    reps = ctx.a("repeats")
    dim = ctx.a("dim")
    if x is None or not isinstance(reps, int) or dim is None:
        ctx.rigid_all("repeat_interleave with tensor repeats")
        return
    axes = list(ctx.axes(x))
    d = norm_dim(dim, len(axes))
    rep = ONE if reps == 1 else ctx.fresh(reps, "repeat_interleave")
    axes[d] = ctx.spaces.product(axes[d], rep)
    ctx.set_out(0, axes)
    if reps != 1:
        ctx.fact(("repeats",), rep, reps)
