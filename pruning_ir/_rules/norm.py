"""Normalisations: batch, layer, group and RMS norms."""

from __future__ import annotations

from .._ir.graph import ValueRef
from .._ir.spaces import ONE
from .base import Ctx, rule

_BN = ("aten.native_batch_norm", "aten._native_batch_norm_legit", "aten._native_batch_norm_legit_no_training",
       "aten.batch_norm", "aten._batch_norm_impl_index", "aten.cudnn_batch_norm", "aten.miopen_batch_norm",
       "aten._native_batch_norm_legit_functional")


@rule(*_BN)
def batch_norm(ctx: Ctx) -> None:
    x = ctx.a("input")
    xa = ctx.axes(x)
    c = xa[1] if len(xa) > 1 else ONE
    for name in ("weight", "bias", "running_mean", "running_var"):
        ref = ctx.a(name)
        if isinstance(ref, ValueRef) and ctx.shape(ref) and ctx.shape(ref)[0] > 1:
            ctx.unify(ctx.axes(ref)[0], c)
    rm = ctx.a("running_mean")
    if ctx.a("training", False) or not isinstance(rm, ValueRef):
        # batch statistics: every other axis is averaged over
        for d, ax in enumerate(xa):
            if d != 1 and ctx.shape(x)[d] > 1:
                ctx.note(ax, "batch_norm with batch statistics normalises over this axis")
    ctx.set_out(0, xa)
    n_ch = ctx.shape(x)[1] if len(ctx.shape(x)) > 1 else 1
    for i in range(1, ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid >= 0:
            shape = ctx.graph.values[vid].shape
            ctx.set_out(i, [c if s == n_ch else ctx.fresh(s, "bn_aux", "batch-norm aux") for s in shape])


def _trailing_norm(ctx: Ctx, what: str) -> None:
    x = ctx.a("input")
    xa = ctx.axes(x)
    ns = list(ctx.a("normalized_shape"))
    k = len(ns)
    for name in ("weight", "bias"):
        ref = ctx.a(name)
        if isinstance(ref, ValueRef):
            for wa, ax in zip(ctx.axes(ref), xa[-k:], strict=True):
                ctx.unify(wa, ax)
    for j, ax in enumerate(xa[-k:]):
        ctx.note(ax, f"{what} normalises over this axis: pruning it changes the statistics")
        ctx.fact(("normalized_shape", j), ax, ns[j])
    ctx.set_out(0, xa)
    for i in range(1, ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid >= 0:
            ctx.set_out(i, list(xa[:-k]) + [ONE] * k)


@rule("aten.native_layer_norm", "aten.layer_norm")
def layer_norm(ctx: Ctx) -> None:
    _trailing_norm(ctx, "layer_norm")


@rule("aten.rms_norm", "aten._fused_rms_norm")
def rms_norm(ctx: Ctx) -> None:
    _trailing_norm(ctx, "rms_norm")


@rule("aten.native_group_norm", "aten.group_norm")
def group_norm(ctx: Ctx) -> None:
    """Channels are ``groups ⊗ per-group``; removing a whole group keeps the others' statistics."""
    x = ctx.a("input")
    xa = ctx.axes(x)
    g = int(ctx.a("group", ctx.a("num_groups", 1)))
    c = ctx.shape(x)[1]
    gl, inner = ctx.spaces.split2(xa[1], g, c // g)
    for name in ("weight", "bias"):
        ref = ctx.a(name)
        if isinstance(ref, ValueRef):
            ctx.unify(ctx.axes(ref)[0], xa[1])
    ctx.note(inner, "group_norm normalises within each group: pruning in-group channels changes the statistics")
    ctx.fact(("group",) if ctx.a("group") is not None else ("num_groups",), gl, g)
    if ctx.a("C") is not None:
        ctx.fact(("C",), xa[1], c)
    ctx.set_out(0, xa)
    for i in range(1, ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid >= 0:
            ctx.set_out(i, [xa[0], gl])


@rule("aten._weight_norm_interface", "aten._weight_norm")
def weight_norm(ctx: Ctx) -> None:
    """``w = g * v / ||v||`` with the norm over every axis but ``dim``."""
    v, g = ctx.a("v"), ctx.a("g")
    dim = int(ctx.a("dim", 0))
    va, ga = ctx.axes(v), ctx.axes(g)
    vs, gs = ctx.shape(v), ctx.shape(g)
    for d in range(len(vs)):
        if d == dim or (d < len(gs) and gs[d] == vs[d] and vs[d] > 1):
            if d < len(ga):
                ctx.unify(ga[d], va[d])
        elif vs[d] > 1:
            ctx.note(va[d], "weight_norm normalises the weight over this axis")
    ctx.set_out(0, va)
    for i in range(1, ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid >= 0:
            ctx.set_out(i, list(ga) if len(ga) == len(ctx.graph.values[vid].shape) else
                        [ctx.fresh(s_, "wn", "weight_norm aux") for s_ in ctx.graph.values[vid].shape])
