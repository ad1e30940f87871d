"""Channel handlers for modules kept opaque (``leaf_modules``), keyed by module type.

A leaf module is recorded as one node whose ``kwargs["__params__"]`` maps the
module's parameter names to values. Without a handler every axis it touches is
unprunable; a handler declares the couplings as an op rule would.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .._ir.graph import ValueRef
from .._rules import Ctx
from .._trace.recorder import type_key

LeafHandler = Callable[[Ctx], None]
LEAF_HANDLERS: dict[str, LeafHandler] = {}


def register_leaf_handler(cls: type[nn.Module]) -> Callable[[LeafHandler], LeafHandler]:
    """Register ``fn`` as the channel handler of leaf modules of exactly type ``cls`` (not its
    subclasses, whose ``forward`` may couple channels differently; not another class of the
    same name)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_leaf_handler takes an nn.Module subclass, got {cls!r}")

    def deco(fn: LeafHandler) -> LeafHandler:
        LEAF_HANDLERS[type_key(cls)] = fn
        return fn

    return deco


def _param(ctx: Ctx, suffix: str) -> ValueRef | None:
    for name, ref in ctx.node.kwargs["__params__"].items():
        if name.rsplit(".", 1)[-1] == suffix and isinstance(ref, ValueRef):
            return ref
    return None


@register_leaf_handler(nn.Linear)
def linear_leaf(ctx: Ctx) -> None:
    """``nn.Linear`` kept opaque: input features = weight columns, output = weight rows."""
    x = ctx.node.args[0]
    w, b = _param(ctx, "weight"), _param(ctx, "bias")
    assert isinstance(x, ValueRef) and w is not None
    xa, wa = ctx.axes(x), ctx.axes(w)
    ctx.unify(xa[-1], wa[1])
    if b is not None:
        ctx.unify(ctx.axes(b)[0], wa[0])
    ctx.set_out(0, list(xa[:-1]) + [wa[0]])
