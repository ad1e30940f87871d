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


def meta_call(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)``; on ``meta`` tensors, functional ops answer from a cache of the
    output metadata the meta kernel gave for the same input metadata (meta kernels of some ops,
    batch norm above all, run long Python decompositions, and a build traces the same calls
    again and again: the probe's copy, verification's re-traces)."""
    first = args[0] if args else None
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
