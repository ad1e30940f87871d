"""Element-wise ops: every output axis is the broadcast-aligned input axis."""

from __future__ import annotations

from .._ir.graph import ValueRef
from .base import Ctx, broadcast, rule

UNARY = [
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp",
    "exp_", "log", "log_", "log1p", "expm1", "neg", "neg_", "abs", "abs_", "sqrt", "rsqrt", "rsqrt_",
    "reciprocal", "sign", "square", "erf", "erfinv", "sin", "cos", "floor", "ceil", "round", "trunc",
    "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "celu", "selu", "softplus", "mish", "mish_", "logit", "_to_copy",
    "clone", "alias", "_conj", "bitwise_not", "logical_not", "isnan", "isinf", "isfinite", "nan_to_num",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "fill",
    "fill_", "zero_", "bernoulli", "bernoulli_", "relu6", "threshold",
    "lift_fresh_copy",
    "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "pow_", "positive", "detach_",
]
BINARY = [
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum",
    "fmod", "remainder", "floor_divide", "atan2", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "masked_fill",
    "masked_fill_", "where", "clamp", "clamp_", "addcmul", "addcmul_", "addcdiv", "addcdiv_", "lerp",
    "lerp_", "copy_", "copy", "hypot", "xlogy", "fmax", "fmin", "heaviside", "bitwise_left_shift",
    "bitwise_right_shift", "copysign",
]


@rule(*(f"aten.{n}" for n in UNARY + BINARY))
def elementwise(ctx: Ctx) -> None:
    refs = [v for v in ctx.node.kwargs.values() if isinstance(v, ValueRef)]
    out = broadcast(ctx, refs, ctx.out_shape(0))
    for i in range(ctx.n_out):
        ctx.set_out(i, out)


@rule("aten.native_dropout", "aten.dropout")
def dropout(ctx: Ctx) -> None:
    axes = ctx.axes(ctx.a("input"))
    for i in range(ctx.n_out):
        ctx.set_out(i, axes)


@rule("aten.prelu", "aten._prelu_kernel")
def prelu(ctx: Ctx) -> None:
    x, w = ctx.a("self"), ctx.a("weight")
    axes = ctx.axes(x)
    if ctx.shape(w) and ctx.shape(w)[0] > 1:
        ctx.unify(axes[1], ctx.axes(w)[0])
    ctx.set_out(0, axes)
