"""Meta kernels answered from a cache: a functional ATen op called on ``meta`` tensors gives outputs
of the metadata its meta kernel gave for the same input metadata (shape, strides, dtype). Meta
kernels of some ops (batch norm above all) are long Python decompositions, and a build traces the
same calls again and again (the probe's copy, verification's re-traces)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree


class _NoKey(Exception):
    pass


def _meta_key(obj: Any, tensors: list[int]) -> Any:
    """A hashable description of a call's argument when every tensor in it is on ``meta`` (shape,
    strides, dtype: all a meta kernel reads), else :class:`_NoKey`; counts the tensors in
    ``tensors[0]``."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "meta" or obj.layout != torch.strided:
            raise _NoKey
        tensors[0] += 1
        return ("T", tuple(obj.shape), obj.stride(), obj.storage_offset(), obj.dtype)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_meta_key(o, tensors) for o in obj))
    if obj is None or isinstance(obj, (bool, int, str, torch.dtype, torch.device, torch.layout,
                                       torch.memory_format)):
        return (type(obj).__name__, obj)
    if isinstance(obj, float) and obj == obj:  # not NaN (it equals nothing, itself included)
        return ("float", obj)
    raise _NoKey


_Meta = tuple[tuple[int, ...], tuple[int, ...], torch.dtype] | None
META_OUTPUTS: dict[Any, tuple[str, list[_Meta]]] = {}
META_OUTPUTS_LIMIT = 100_000


_FUNCTIONAL: dict[Any, bool] = {}


def _functional(func: Any) -> bool:
    """An ATen overload that writes nothing and returns fresh tensors (no view, no alias)."""
    known = _FUNCTIONAL.get(func)
    if known is None:
        schema = getattr(func, "_schema", None)
        known = _FUNCTIONAL[func] = (schema is not None and not schema.is_mutable
                                     and all(r.alias_info is None for r in schema.returns)
                                     and all(a.alias_info is None for a in schema.arguments))
    return known


def _fresh_meta(outputs: list[Any], inputs: Any) -> bool:
    """Whether every output is a new strided meta tensor (or ``None``) that shares no storage with
    an input: what a cache hit makes (ops such as ``_unsafe_view`` or ``to_dense`` return views or
    their input itself without saying so in their schema; ``zeros_like(x, device="cpu")`` leaves meta)."""
    shared = {t.untyped_storage()._cdata for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)}
    return all(o is None or (isinstance(o, torch.Tensor) and o.is_meta and o.layout == torch.strided
                             and o.untyped_storage()._cdata not in shared) for o in outputs)


_A = torch.ops.aten
_UNARY = {getattr(_A, n).default for n in ("relu", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "hardswish",
                                             "hardsigmoid", "leaky_relu", "elu", "mish", "neg", "abs")}
"""Pointwise ops of one tensor (the other arguments scalars): the output has the input's metadata."""
_UNARY_INPLACE = {getattr(_A, n).default for n in ("relu_", "hardtanh_", "gelu_", "silu_", "sigmoid_", "tanh_",
                                                     "hardswish_", "hardsigmoid_", "leaky_relu_", "elu_",
                                                     "mish_")}
"""The same, in place: they return their input, and on ``meta`` write nothing."""


def _standard_strides(shape: tuple[int, ...], order: tuple[int, ...]) -> tuple[int, ...]:
    """The strides ``empty`` gives ``shape`` when dims are laid out innermost-last in ``order``
    (sizes below 1 count as 1, as torch computes them)."""
    strides = [0] * len(shape)
    step = 1
    for d in reversed(order):
        strides[d] = step
        step *= max(shape[d], 1)
    return tuple(strides)


def _dense(t: Any) -> bool:
    """A non-empty floating meta tensor whose strides are exactly the contiguous or the
    channels-last ones (``is_contiguous`` also accepts other strides on size-1 dims, for which
    kernels return other strides than their input's)."""
    if not (isinstance(t, torch.Tensor) and t.is_meta and t.layout == torch.strided and t.is_floating_point()
            and t.numel() > 0):
        return False
    shape, stride = tuple(t.shape), t.stride()
    if stride == _standard_strides(shape, tuple(range(len(shape)))):
        return True
    return len(shape) == 4 and stride == _standard_strides(shape, (0, 2, 3, 1))


def _like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)`` for a dense meta ``x`` (same strides), without its Python meta path
    (~20 us, as long as the rest of a fast rule)."""
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous meta tensor."""
    return torch.empty(shape, dtype=dtype, device="meta")


def _is_vector(t: Any, n: int) -> bool:
    return t is None or (isinstance(t, torch.Tensor) and t.is_meta and t.dim() == 1 and t.shape[0] == n)


_SDPA = torch.nn.functional.scaled_dot_product_attention
_SDPA_OPTIONS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _fast_sdpa(args: Any, kwargs: dict[str, Any]) -> Any:
    """Scaled dot-product attention on ``meta``: a new contiguous ``(*batch, L, Ev)`` tensor of the
    query's dtype (its meta path runs the math decomposition: 1-5 ms a call) when query, key and
    value share their batch dimensions and fit (``E`` of query and key, ``S`` of key and value), and
    the mask, if any, broadcasts to ``(*batch, L, S)``; ``None`` otherwise (grouped-query heads, a
    causal mask with an explicit one, broadcast batches: the kernel decides)."""
    if len(args) < 3 or len(args) > 3 + len(_SDPA_OPTIONS):
        return None
    options = dict(zip(_SDPA_OPTIONS, args[3:]))
    for k, v in kwargs.items():
        if k not in _SDPA_OPTIONS or k in options:
            return None
        options[k] = v
    q, k, v = args[:3]
    if not all(isinstance(t, torch.Tensor) and t.is_meta and t.layout == torch.strided and t.is_floating_point()
               and t.dtype == q.dtype and t.dim() == q.dim() for t in (q, k, v)) or q.dim() < 3:
        return None
    if options.get("enable_gqa") or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        return None
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        return None
    dropout, scale = options.get("dropout_p", 0.0), options.get("scale")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:  # the kernel refuses others (NaN too)
        return None
    if not (scale is None or isinstance(scale, (int, float))):
        return None
    mask, causal = options.get("attn_mask"), options.get("is_causal", False)
    if not isinstance(causal, bool) or (causal and mask is not None):
        return None
    if mask is not None:
        full = (*q.shape[:-1], k.shape[-2])
        if not (isinstance(mask, torch.Tensor) and mask.is_meta and mask.dtype in (torch.bool, q.dtype)
                and mask.dim() <= len(full)):
            return None
        try:
            if tuple(torch.broadcast_shapes(mask.shape, full)) != full:
                return None
        except RuntimeError:
            return None
    return _empty((*q.shape[:-1], v.shape[-1]), q.dtype)


def _fast_meta(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """The outputs of a few common ops on ``meta`` tensors, from their shape rules, where the meta
    kernel runs a long Python decomposition (a millisecond each: ``hardtanh``, batch and layer norm,
    attention) and a probe's new shapes miss the cache; ``None`` for anything unusual (the meta
    kernel then runs and raises what it raises). Each rule returns exactly what the meta kernel
    returns."""
    if func is _SDPA:
        return _fast_sdpa(args, kwargs)
    if func in _UNARY_INPLACE:
        x = args[0]
        if _dense(x) and not any(isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values())):
            return x
        return None
    if func in _UNARY:
        x = args[0]
        if _dense(x) and not any(isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values())):
            return _like(x)
        return None
    if kwargs:
        return None
    if func in (_A.native_batch_norm.default, _A._native_batch_norm_legit_no_training.default):
        x = args[0]
        if not _dense(x) or x.dim() < 2 or not all(_is_vector(t, x.shape[1]) for t in args[1:5]):
            return None
        if any(t is not None and t.dtype != x.dtype for t in args[1:5]):
            return None
        training = args[5] if func is _A.native_batch_norm.default else False
        if not training and (args[3] is None or args[4] is None):
            return None  # eval needs running statistics: the kernel says so
        return _like(x), _empty((x.shape[1],), x.dtype), _empty((x.shape[1],), x.dtype)
    if func is _A.native_layer_norm.default:
        x, shape, weight, bias = args[0], list(args[1]), args[2], args[3]
        k = len(shape)
        if not _dense(x) or not x.is_contiguous() or k == 0 or list(x.shape[x.dim() - k:]) != shape:
            return None
        if any(t is not None and (list(t.shape) != shape or t.dtype != x.dtype or not t.is_meta)
               for t in (weight, bias)):
            return None
        stat = (*x.shape[: x.dim() - k], *([1] * k))
        return _like(x), _empty(stat, x.dtype), _empty(stat, x.dtype)
    return None


_FAST = _UNARY | _UNARY_INPLACE | {_A.native_batch_norm.default, _A._native_batch_norm_legit_no_training.default,
                                   _A.native_layer_norm.default, _SDPA}


def meta_call(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)``; on ``meta`` tensors, functional ops answer from a cache of the
    output metadata the meta kernel gave for the same input metadata (meta kernels of some ops,
    batch norm above all, run long Python decompositions, and a build traces the same calls
    again and again: the probe's copy, verification's re-traces)."""
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and first.is_meta and func in _FAST:
        fast = _fast_meta(func, args, kwargs)
        if fast is not None:
            return fast
    if (isinstance(first, torch.Tensor) and not first.is_meta) or not _functional(func):
        return func(*args, **kwargs)  # the common case on a real model: one attribute read
    tensors = [0]
    try:
        # the default dtype decides what integer division and Python floats promote to
        key = (func, torch.get_default_dtype(), _meta_key(args, tensors),
               _meta_key(tuple(sorted(kwargs.items())), tensors))
    except _NoKey:
        return func(*args, **kwargs)
    if not tensors[0]:  # no tensor argument (a factory op): the device is its own business
        return func(*args, **kwargs)
    hit = META_OUTPUTS.get(key)
    if hit is None:
        out = func(*args, **kwargs)
        kind = "tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        flat = [out] if kind == "tensor" else out if kind in ("tuple", "list") else None
        if flat is not None and _fresh_meta(flat, (args, kwargs)):
            if len(META_OUTPUTS) >= META_OUTPUTS_LIMIT:
                META_OUTPUTS.clear()
            META_OUTPUTS[key] = (kind, [None if o is None else (tuple(o.shape), o.stride(), o.dtype) for o in flat])
        return out
    kind, metas = hit
    made = [None if m is None else torch.empty_strided(m[0], m[1], dtype=m[2], device="meta") for m in metas]
    return made[0] if kind == "tensor" else tuple(made) if kind == "tuple" else made
