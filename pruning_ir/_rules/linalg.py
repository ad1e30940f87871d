"""Contractions: matrix products, convolutions, embeddings and attention."""

from __future__ import annotations

from .._ir.graph import ValueRef
from .._ir.ops import SDPA
from .._ir.spaces import Layout
from .base import Ctx, rule


def _bcast_batch(ctx: Ctx, pairs: list[tuple[ValueRef, int]], out_batch: tuple[int, ...]) -> list[Layout]:
    """Unify broadcast batch axes of several operands (each given with its batch rank)."""
    nd = len(out_batch)
    out: list[Layout] = []
    for i in range(nd):
        group = []
        for ref, rank in pairs:
            j = i - (nd - rank)
            if j >= 0 and ctx.shape(ref)[j] == out_batch[i] and out_batch[i] != 1:
                group.append(ctx.axes(ref)[j])
        for g in group[1:]:
            ctx.unify(group[0], g)
        out.append(group[0] if group else ctx.fresh(out_batch[i], "batch", "broadcast batch"))
    return out


_OPERANDS = {"aten.mm": ("self", "mat2"), "aten.bmm": ("self", "mat2"), "aten.matmul": ("self", "other"),
             "aten.addmm": ("mat1", "mat2"), "aten.baddbmm": ("batch1", "batch2"),
             "aten.addbmm": ("batch1", "batch2")}


@rule(*_OPERANDS)
def matmul(ctx: Ctx) -> None:
    """``(..., M, K) @ (..., K, N)``: K contracted, batch axes broadcast-coupled."""
    na, nb = _OPERANDS[ctx.node.op]
    a, b = ctx.a(na), ctx.a(nb)
    sa, sb = ctx.shape(a), ctx.shape(b)
    if len(sa) < 2 or len(sb) < 2:
        from .shape import _all_rigid

        _all_rigid(ctx, "matmul of a vector")
        return
    xa, xb = ctx.axes(a), ctx.axes(b)
    ctx.unify(xa[-1], xb[-2])
    if not ctx.from_params(a) and not ctx.from_params(b) and sa[-1] > 1 \
            and ctx.node.module not in ctx.graph.explicit_modules:
        ctx.note(xa[-1], "contraction of two activations (attention q·kᵀ): a scale that Python computes "
                 "from this width (1/sqrt(head_dim)) changes when it is pruned")
    out_shape = ctx.out_shape(0)
    if ctx.node.op == "aten.addbmm":
        _bcast_batch(ctx, [(a, 1), (b, 1)], (sa[0],))
        out = [xa[-2], xb[-1]]
    else:
        batch = _bcast_batch(ctx, [(a, len(sa) - 2), (b, len(sb) - 2)], out_shape[:-2])
        out = batch + [xa[-2], xb[-1]]
    if ctx.node.op in ("aten.addmm", "aten.baddbmm", "aten.addbmm"):
        bias = ctx.a("self")
        if isinstance(bias, ValueRef):
            bs = ctx.shape(bias)
            for k in range(1, len(bs) + 1):
                if bs[-k] == out_shape[-k] and bs[-k] != 1:
                    ctx.unify(ctx.axes(bias)[-k], out[-k])
    ctx.set_out(0, out)


@rule("aten.linear")
def linear(ctx: Ctx) -> None:
    x, w, b = ctx.a("input"), ctx.a("weight"), ctx.a("bias")
    xa, wa = ctx.axes(x), ctx.axes(w)
    ctx.unify(xa[-1], wa[-1])
    out = list(xa[:-1]) + [wa[0]]
    if isinstance(b, ValueRef):
        ctx.unify(ctx.axes(b)[0], wa[0])
    ctx.set_out(0, out)


@rule("aten.dot", "aten.vdot", "aten.mv", "aten.addmv", "aten.outer", "aten.ger")
def vector_products(ctx: Ctx) -> None:
    op = ctx.node.op
    if op in ("aten.dot", "aten.vdot"):
        other = ctx.a("tensor") if op == "aten.dot" else ctx.a("other")  # dot(self, tensor), vdot(self, other)
        ctx.unify(ctx.axes(ctx.a("self"))[0], ctx.axes(other)[0])
        ctx.set_out(0, [])
    elif op in ("aten.outer", "aten.ger"):
        ctx.set_out(0, [ctx.axes(ctx.a("self"))[0], ctx.axes(ctx.a("vec2"))[0]])
    else:
        # mv(self, vec), addmv(self, mat, vec)
        m, v = (ctx.a("self") if op == "aten.mv" else ctx.a("mat")), ctx.a("vec")
        ctx.unify(ctx.axes(m)[1], ctx.axes(v)[0])
        out = [ctx.axes(m)[0]]
        if op == "aten.addmv" and ctx.shape(ctx.a("self")) == ctx.out_shape(0):
            ctx.unify(ctx.axes(ctx.a("self"))[0], out[0])
        ctx.set_out(0, out)


@rule("aten.convolution", "aten._convolution", "aten.conv2d", "aten.conv1d", "aten.conv3d",
      "aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def convolution(ctx: Ctx) -> None:
    x, w, b = ctx.a("input"), ctx.a("weight"), ctx.a("bias")
    transposed = bool(ctx.a("transposed", ctx.node.op.startswith("aten.conv_transpose")))
    g = int(ctx.a("groups", 1))
    xa, wa = ctx.axes(x), ctx.axes(w)
    ws = ctx.shape(w)
    sp = ctx.spaces
    for k in range(2, len(ws)):
        ctx.rigid(wa[k], "convolution kernel axis")
        ctx.rigid(xa[k], "convolution mixes positions along this axis")
    out_shape = ctx.out_shape(0)
    if not transposed:
        if g == 1:
            ctx.unify(xa[1], wa[1])
        else:
            gi, ci = sp.split2(xa[1], g, ws[1])
            ctx.unify(ci, wa[1])
            go, _ = sp.split2(wa[0], g, ws[0] // g)
            ctx.unify(gi, go)
            ctx.fact(("groups",), gi, g)
        cout = wa[0]
    else:
        ctx.unify(xa[1], wa[0])
        if g == 1:
            cout = wa[1]
        else:
            gi, _ = sp.split2(wa[0], g, ws[0] // g)
            cout = sp.product(gi, wa[1])
            ctx.fact(("groups",), gi, g)
    if isinstance(b, ValueRef):
        ctx.unify(ctx.axes(b)[0], cout)
    out = [xa[0], cout] + [ctx.fresh(s, f"spatial{k}", "convolution spatial axis")
                           for k, s in enumerate(out_shape[2:])]
    ctx.set_out(0, out)


@rule("aten.embedding")
def embedding(ctx: Ctx) -> None:
    w, idx = ctx.a("weight"), ctx.a("indices")
    wa = ctx.axes(w)
    ctx.rigid(wa[0], "embedding rows are indexed by data")
    ctx.set_out(0, list(ctx.axes(idx)) + [wa[1]])


@rule("aten.embedding_bag", "aten._embedding_bag")
def embedding_bag(ctx: Ctx) -> None:
    w = ctx.a("weight")
    wa = ctx.axes(w)
    ctx.rigid(wa[0], "embedding rows are indexed by data")
    out_shape = ctx.out_shape(0)
    ctx.set_out(0, [ctx.fresh(out_shape[0], "bags", "bags")] + [wa[1]])
    for i in range(1, ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid >= 0:
            ctx.set_out(i, [ctx.fresh(s, "bag_aux", "embedding_bag aux") for s in ctx.graph.values[vid].shape])



@rule(*SDPA)
def sdpa(ctx: Ctx) -> None:
    """``softmax(q kᵀ · scale + mask) v``: batch axes (incl. heads) of q, k, v coupled,
    q/k feature axis contracted, v feature axis is the output's."""
    q, k, v = ctx.a("query"), ctx.a("key"), ctx.a("value")
    qs, ks, vs = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    qa, ka, va = ctx.axes(q), ctx.axes(k), ctx.axes(v)
    nb = len(qs) - 2
    if not (len(ks) == len(vs) == len(qs)):
        _rigid_all(ctx, "attention with mismatched ranks")
        return
    batch: list[Layout] = []
    for i in range(nb):
        if qs[i] == ks[i] == vs[i]:
            ctx.unify(qa[i], ka[i])
            ctx.unify(qa[i], va[i])
        elif ks[i] == vs[i] and qs[i] % ks[i] == 0 and i == nb - 1:
            # grouped-query attention: query head h reads kv head h // (q_heads // kv_heads)
            ctx.unify(ka[i], va[i])
            kv_heads, _ = ctx.spaces.split2(qa[i], ks[i], qs[i] // ks[i])
            ctx.unify(kv_heads, ka[i])
        else:
            for ax in (qa[i], ka[i], va[i]):
                ctx.rigid(ax, "attention batch axes differ")
        batch.append(qa[i])
    ctx.unify(qa[-1], ka[-1])
    ctx.unify(ka[-2], va[-2])
    mask = ctx.a("attn_mask", ctx.a("attn_bias"))
    if isinstance(mask, ValueRef):
        ms = ctx.shape(mask)
        target = batch + [qa[-2], ka[-2]]
        full = qs[:-1] + (ks[-2],)
        for j in range(1, len(ms) + 1):
            if ms[-j] == full[-j] and ms[-j] != 1:
                ctx.unify(ctx.axes(mask)[-j], target[-j])
    if ctx.a("scale") is None:
        ctx.note(qa[-1], "attention scale defaults to 1/sqrt(head_dim): pruning head features changes it")
    ctx.set_out(0, batch + [qa[-2], va[-1]])
    for i in range(1, ctx.n_out):
        vid = ctx.node.outputs[i]
        if vid < 0:
            continue
        shape = ctx.graph.values[vid].shape
        if list(shape[: nb + 1]) == list(qs[: nb + 1]):
            ctx.set_out(i, batch + [qa[-2]] + [ctx.fresh(s, "aux", "attention aux") for s in shape[nb + 1 :]])
        else:
            ctx.set_out(i, [ctx.fresh(s, "aux", "attention aux") for s in shape])


def _rigid_all(ctx: Ctx, reason: str) -> None:
    from .shape import _all_rigid

    _all_rigid(ctx, reason)


@rule("aten._grouped_mm")
def grouped_mm(ctx: Ctx) -> None:
    """Grouped matmul (MoE experts): ``(M, K) x (G, K, N) -> (M, N)`` with row offsets,
    ``(G, M, K) x (G, K, N) -> (G, M, N)``, or ``(M, K) x (K, N) -> (G, M, N)`` with K offsets.
    The group (expert) axis is unprunable; K is contracted; N is the output's."""
    a, b = ctx.a("self"), ctx.a("mat2")
    sa, sb = ctx.shape(a), ctx.shape(b)
    xa, xb = ctx.axes(a), ctx.axes(b)
    out_shape = ctx.out_shape(0)
    if len(sa) == 2 and len(sb) == 3:
        ctx.unify(xa[-1], xb[-2])
        ctx.rigid(xb[0], "grouped matmul group (expert) axis")
        out = [xa[0], xb[-1]]
    elif len(sa) == 3 and len(sb) == 3:
        ctx.unify(xa[0], xb[0])
        ctx.rigid(xa[0], "grouped matmul group (expert) axis")
        ctx.unify(xa[-1], xb[-2])
        out = [xa[0], xa[1], xb[-1]]
    elif len(sa) == 2 and len(sb) == 2:
        ctx.rigid(xa[-1], "grouped matmul contracts groups of this axis")
        ctx.unify(xa[-1], xb[0])
        out = [ctx.fresh(out_shape[0], "groups", "grouped matmul group axis"), xa[0], xb[-1]]
    else:
        _rigid_all(ctx, "grouped matmul layout not understood")
        return
    bias = ctx.a("bias")
    if isinstance(bias, ValueRef) and ctx.shape(bias)[-1] == out_shape[-1]:
        ctx.unify(ctx.axes(bias)[-1], out[-1])
    ctx.set_out(0, out)
