"""Contractions: matrix products, convolutions, embeddings and attention: how each couples channels
(its rule) and what it costs (its MAC formula, in the conventions of ``FlopCounterMode``: one MAC is
two FLOPs)."""

from __future__ import annotations

from collections.abc import Callable

from .._ir.graph import ValueRef
from .._ir.ops import SDPA
from .._ir.spaces import Layout
from .base import Ctx, Monomial, NotUnderstood, Operands, macs, rule


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
        ctx.rigid_all("matmul of a vector")
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


def _products(a: str, b: str, rank: int) -> Callable[[Operands], list[Monomial]]:
    """``(M, K) x (K, N)`` (rank 2): ``M·K·N``; ``(B, M, K) x (B, K, N)`` (rank 3): ``B·M·K·N``."""

    def f(op: Operands) -> list[Monomial]:
        x, y = op.dims(a), op.dims(b)
        if len(x) != rank or len(y) != rank:
            raise NotUnderstood(f"ranks {len(x)} and {len(y)}")
        return [(1, [*x, y[-1]])]
    return f


macs("aten.mm", "aten._scaled_mm", "aten._int_mm")(_products("self", "mat2", 2))
macs("aten.addmm")(_products("mat1", "mat2", 2))
macs("aten.bmm")(_products("self", "mat2", 3))
macs("aten.baddbmm", "aten.addbmm")(_products("batch1", "batch2", 3))


@macs("aten.matmul")
def matmul_macs(op: Operands) -> list[Monomial]:
    """``torch.matmul`` in all its ranks: output numel times the contracted size."""
    x, y = op.dims("self"), op.dims("other")
    if not x or not y:
        raise NotUnderstood("a 0-d operand")
    return [(1, [*op.out(), x[-1]])]



@rule("aten.linear")
def linear(ctx: Ctx) -> None:
    x, w, b = ctx.a("input"), ctx.a("weight"), ctx.a("bias")
    xa, wa = ctx.axes(x), ctx.axes(w)
    ctx.unify(xa[-1], wa[-1])
    out = list(xa[:-1]) + [wa[0]]
    if isinstance(b, ValueRef):
        ctx.unify(ctx.axes(b)[0], wa[0])
    ctx.set_out(0, out)


@macs("aten.linear", "aten.mkldnn_linear")
def linear_macs(op: Operands) -> list[Monomial]:
    """Input numel times ``out_features`` (``mkldnn_linear`` names its input ``self``)."""
    x, w = op.dims("input" if op.is_tensor("input") else "self"), op.dims("weight")
    if len(w) == 1:
        return [(1, x)]
    if len(w) != 2:
        raise NotUnderstood(f"weight rank {len(w)}")
    return [(1, [*x, w[0]])]



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


@macs("aten.mv", "aten.addmv", "aten.dot", "aten.vdot")
def vector_macs(op: Operands) -> list[Monomial]:
    """``mv(self, vec)``, ``addmv(self, mat, vec)``: ``M·K``; ``dot``/``vdot``: ``K``."""
    m = op.dims("mat" if op.is_tensor("mat") else "self")
    if op.is_tensor("vec") and len(m) != 2:
        raise NotUnderstood(f"rank {len(m)}")
    return [(1, m if op.is_tensor("vec") else m[:1])]



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


def _conv_macs(inp: str, transposed: bool | None) -> Callable[[Operands], list[Monomial]]:
    """``batch · weight numel · spatial`` (groups are in the weight's shape), with the output's
    spatial size, or the input's for a transposed convolution (as ``FlopCounterMode``)."""

    def f(op: Operands) -> list[Monomial]:
        x, w = op.dims(inp), op.dims("weight")
        tr = bool(op.arg("transposed", False)) if transposed is None else transposed
        batched = len(x) == len(w)
        if not batched and len(x) != len(w) - 1:
            raise NotUnderstood(f"input rank {len(x)} with weight rank {len(w)}")
        lead = 1 if batched else 0
        spatial = (x if tr else op.out())[lead + 1:]
        return [(1, [*x[:lead], *w, *spatial])]
    return f


macs("aten.convolution", "aten._convolution", "aten.convolution_overrideable")(_conv_macs("input", None))
macs("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten._nnpack_spatial_convolution")(_conv_macs("input", False))
macs("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")(_conv_macs("input", True))
macs("aten.cudnn_convolution", "aten.mkldnn_convolution", "aten._slow_conv2d_forward", "aten._conv_depthwise2d",
     "aten.slow_conv3d_forward", "aten.slow_conv_dilated2d", "aten.slow_conv_dilated3d",
     "aten.miopen_convolution")(_conv_macs("self", False))
macs("aten.slow_conv_transpose2d", "aten.slow_conv_transpose3d")(_conv_macs("self", True))



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
        ctx.rigid_all("attention with mismatched ranks")
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


@macs(*SDPA)
def sdpa_macs(op: Operands) -> list[Monomial]:
    """``(..., S, D)`` q/k/v: ``batch·S_q·S_k·(D_qk + D_v)`` over the query's leading dims
    (``q·kᵀ`` and ``p·v``; masks and causality ignored; GQA counted per query head)."""
    q, k, v = op.dims("query"), op.dims("key"), op.dims("value")
    if len(q) < 2 or len(k) != len(q) or len(v) != len(q):
        raise NotUnderstood(f"ranks {len(q)}, {len(k)}, {len(v)}")
    common = [*q[:-1], k[-2]]
    return [(1, [*common, q[-1]]), (1, [*common, v[-1]])]


def _sdpa_bshd(varlen: tuple[str, ...]) -> Callable[[Operands], list[Monomial]]:
    """``(B, S, H, D)`` q/k/v of the private flash / memory-efficient kernels."""

    def f(op: Operands) -> list[Monomial]:
        if any(op.is_tensor(n) for n in varlen):
            raise NotUnderstood("variable-length (nested) attention")
        q, k, v = op.dims("query"), op.dims("key"), op.dims("value")
        if not len(q) == len(k) == len(v) == 4:
            raise NotUnderstood(f"ranks {len(q)}, {len(k)}, {len(v)}")
        common = [q[0], q[2], q[1], k[1]]
        return [(1, [*common, q[3]]), (1, [*common, v[3]])]
    return f


macs("aten._flash_attention_forward")(_sdpa_bshd(("cum_seq_q", "cum_seq_k")))
macs("aten._efficient_attention_forward")(_sdpa_bshd(("cu_seqlens_q", "cu_seqlens_k")))



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
        ctx.rigid_all("grouped matmul layout not understood")
        return
    bias = ctx.a("bias")
    if isinstance(bias, ValueRef) and ctx.shape(bias)[-1] == out_shape[-1]:
        ctx.unify(ctx.axes(bias)[-1], out[-1])
    ctx.set_out(0, out)


@macs("aten._grouped_mm")
def grouped_mm_macs(op: Operands) -> list[Monomial]:
    """``M·K·N`` for ``(M, K) x (G, K, N)`` and ``(M, K) x (K, N)`` with offsets, ``G·M·K·N`` for
    ``(G, M, K) x (G, K, N)``."""
    a, b = op.dims("self"), op.dims("mat2")
    if (len(a), len(b)) in ((2, 3), (3, 3), (2, 2)):
        return [(1, [*a, b[-1]])]
    raise NotUnderstood(f"ranks {len(a)} and {len(b)}")
