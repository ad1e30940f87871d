"""Spatial ops (pooling, resizing, padding, pixel shuffle) and tensor factories."""

from __future__ import annotations

from .._ir.spaces import ONE
from .base import Ctx, norm_dim, rule

_SPATIAL = ("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices",
            "aten.max_pool3d_with_indices", "aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d",
            "aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten._adaptive_avg_pool2d",
            "aten.adaptive_avg_pool3d", "aten._adaptive_avg_pool3d", "aten.adaptive_max_pool1d",
            "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d", "aten.upsample_nearest1d",
            "aten.upsample_nearest2d", "aten.upsample_nearest3d", "aten.upsample_bilinear2d",
            "aten.upsample_bicubic2d", "aten.upsample_linear1d", "aten.upsample_trilinear3d",
            "aten._upsample_nearest_exact1d", "aten._upsample_nearest_exact2d", "aten._upsample_bilinear2d_aa",
            "aten._upsample_nearest_exact3d", "aten.grid_sampler_2d")


@rule(*_SPATIAL)
def spatial(ctx: Ctx) -> None:
    """``(N, C, *spatial)`` -> ``(N, C, *spatial')``: channels pass through per channel."""
    x = ctx.a("self", ctx.a("input"))
    xa = ctx.axes(x)
    xs = ctx.shape(x)
    lead = 2 if len(xs) >= 3 else 1  # unbatched (C, *spatial) inputs
    for k in range(lead, len(xs)):
        ctx.rigid(xa[k], f"{ctx.node.op} mixes positions along this axis")
    for i in range(ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid < 0:
            continue
        shape = ctx.graph.values[vid].shape
        out = list(xa[:lead]) + [ctx.fresh(s, f"spatial{k}", "spatial axis") for k, s in enumerate(shape[lead:])]
        ctx.set_out(i, out)


@rule("aten.constant_pad_nd", "aten.pad", "aten.reflection_pad1d", "aten.reflection_pad2d",
      "aten.reflection_pad3d", "aten.replication_pad1d", "aten.replication_pad2d", "aten.replication_pad3d")
def pad(ctx: Ctx) -> None:
    x = ctx.a("self", ctx.a("input"))
    axes = list(ctx.axes(x))
    padding = list(ctx.a("pad", ctx.a("padding")))
    nd = len(axes)
    for k in range(len(padding) // 2):
        d = nd - 1 - k
        if padding[2 * k] or padding[2 * k + 1]:
            ctx.rigid(axes[d], "padded axis")
            axes[d] = ctx.fresh(ctx.out_shape(0)[d], f"pad{d}", "padded axis")
    ctx.set_out(0, axes)


@rule("aten.pixel_shuffle")
def pixel_shuffle(ctx: Ctx) -> None:
    """``(N, C·r², H, W) -> (N, C, H·r, W·r)``: channel ``c`` owns the block ``c·r² .. c·r²+r²-1``."""
    x = ctx.a("self")
    r = int(ctx.a("upscale_factor"))
    xa = ctx.axes(x)
    xs = ctx.shape(x)
    c, rr = ctx.spaces.split2(xa[-3], xs[-3] // (r * r), r * r)
    ctx.rigid(rr, "pixel_shuffle sub-pixel positions")
    for ax in xa[-2:]:
        ctx.rigid(ax, "pixel_shuffle moves positions along this axis")
    out_shape = ctx.out_shape(0)
    ctx.set_out(0, list(xa[:-3]) + [c] + [ctx.fresh(s, "px", "spatial axis") for s in out_shape[-2:]])


@rule("aten.pixel_unshuffle")
def pixel_unshuffle(ctx: Ctx) -> None:
    x = ctx.a("self")
    r = int(ctx.a("downscale_factor"))
    xa = ctx.axes(x)
    rr = ctx.fresh(r * r, "subpixel", "pixel_unshuffle sub-pixel positions")
    for ax in xa[-2:]:
        ctx.rigid(ax, "pixel_unshuffle moves positions along this axis")
    out_shape = ctx.out_shape(0)
    ctx.set_out(0, list(xa[:-3]) + [ctx.spaces.product(xa[-3], rr)]
                + [ctx.fresh(s, "px", "spatial axis") for s in out_shape[-2:]])


@rule("aten.channel_shuffle", "aten.native_channel_shuffle")
def channel_shuffle(ctx: Ctx) -> None:
    x = ctx.a("self")
    g = int(ctx.a("groups"))
    xa = list(ctx.axes(x))
    c = ctx.shape(x)[1]
    gl, inner = ctx.spaces.split2(xa[1], g, c // g)
    xa[1] = ctx.spaces.product(inner, gl)
    ctx.set_out(0, xa)


_FACTORIES = ("aten.zeros", "aten.ones", "aten.empty", "aten.full", "aten.rand", "aten.randn",
              "aten.new_zeros", "aten.new_ones", "aten.new_empty", "aten.new_full", "aten.empty_strided",
              "aten.randint", "aten.empty_permuted", "aten.new_empty_strided")


@rule(*_FACTORIES)
def factory(ctx: Ctx) -> None:
    """A tensor made from a shape: its axes may meet channels later, so they are
    fresh prunable leaves whose sizes are recorded as facts."""
    shape = ctx.out_shape(0)
    size_arg = "size"
    out = [ONE if s == 1 else ctx.fresh(s, f"factory{k}") for k, s in enumerate(shape)]
    ctx.set_out(0, out)
    sizes = ctx.a(size_arg)
    if isinstance(sizes, (list, tuple)):
        for k, s in enumerate(sizes):
            if isinstance(s, int) and s > 1:
                ctx.fact((size_arg, k), out[k], s)


@rule("aten.arange", "aten.linspace", "aten.logspace", "aten.eye", "aten.tril_indices", "aten.triu_indices",
      "aten.randperm", "aten.scalar_tensor", "aten.tensor", "aten._local_scalar_dense", "aten.item")
def positional_factory(ctx: Ctx) -> None:
    """Values depend on positions: never pruned."""
    ctx.rigid_all(f"{ctx.node.op} values depend on positions")


@rule("aten.one_hot")
def one_hot(ctx: Ctx) -> None:
    ctx.rigid_all("one_hot")


@rule("aten.flatten", "aten.unflatten")
def flatten(ctx: Ctx) -> None:  # composite ops normally decomposed before dispatch
    from .shape import reshape_layouts

    x = ctx.a("self", ctx.a("input"))
    ctx.set_out(0, reshape_layouts(ctx, ctx.axes(x), ctx.shape(x), list(ctx.out_shape(0))))


@rule("aten.movedim")
def movedim(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = list(ctx.axes(x))
    nd = len(axes)
    src = ctx.a("source")
    dst = ctx.a("destination")
    src = [norm_dim(s, nd) for s in (src if isinstance(src, (list, tuple)) else [src])]
    dst = [norm_dim(s, nd) for s in (dst if isinstance(dst, (list, tuple)) else [dst])]
    order = [d for d in range(nd) if d not in src]
    for s, d in sorted(zip(dst, src, strict=True)):
        order.insert(s, d)
    ctx.set_out(0, [axes[d] for d in order])
