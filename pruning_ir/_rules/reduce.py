"""Reductions and softmax."""

from __future__ import annotations

from .._ir.spaces import ONE
from .base import Ctx, norm_dim, rule

# Reductions whose value over a channel set with zeroed members equals the value
# over the kept members (sum of zeros adds nothing); the others are "inexact".
_EXACT = {"aten.sum", "aten.nansum"}
_ARG = {"aten.argmax", "aten.argmin"}


@rule("aten.sum", "aten.nansum", "aten.mean", "aten.nanmean", "aten.amax", "aten.amin", "aten.max", "aten.min",
      "aten.var", "aten.std", "aten.var_mean", "aten.std_mean", "aten.prod", "aten.norm",
      "aten.linalg_vector_norm", "aten.logsumexp", "aten.any", "aten.all", "aten.argmax", "aten.argmin",
      "aten.count_nonzero", "aten.aminmax")
def reduction(ctx: Ctx) -> None:
    x = ctx.a("self", ctx.a("input"))
    axes = ctx.axes(x)
    nd = len(axes)
    dims = ctx.a("dim", ctx.a("dims"))
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        red = list(range(nd))
    elif isinstance(dims, int):
        red = [norm_dim(dims, nd)]
    else:
        red = [norm_dim(d, nd) for d in dims]
    keep = bool(ctx.a("keepdim", False))
    op = ctx.node.op
    for d in red:
        if op in _ARG:
            ctx.rigid(axes[d], f"{op} returns positions along this axis")
        elif op not in _EXACT and ctx.shape(x)[d] > 1:
            ctx.note(axes[d], f"{op} over this axis: pruning it changes the result")
    out = [ONE if d in red else axes[d] for d in range(nd)] if keep else [axes[d] for d in range(nd) if d not in red]
    for i in range(ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid >= 0:
            shape = ctx.graph.values[vid].shape
            ctx.set_out(i, out if len(shape) == len(out) else [ctx.fresh(s, "red", "reduction") for s in shape])


@rule("aten._softmax", "aten._log_softmax", "aten._safe_softmax", "aten.softmax", "aten.log_softmax")
def softmax(ctx: Ctx) -> None:
    x = ctx.a("self")
    axes = ctx.axes(x)
    d = norm_dim(ctx.a("dim"), len(axes))
    if ctx.shape(x)[d] > 1:
        ctx.note(axes[d], "softmax over this axis: pruning it renormalises over the kept entries")
    ctx.set_out(0, axes)
