"""The coupling that ties a node of an extra traced call to its counterpart in the example call."""

from __future__ import annotations

from .._ir.graph import ValueRef
from . import Ctx, rule

SAME_AS = "pruning_ir.same_as"
"""Synthetic node (no outputs): ``self`` and ``other`` are the same tensor of the model's code
computed in two traced calls (see :mod:`pruning_ir._trace.merge`), so their axes are one channel
space each."""


@rule(SAME_AS)
def same_as(ctx: Ctx) -> None:
    a, b = ctx.a("self"), ctx.a("other")
    assert isinstance(a, ValueRef) and isinstance(b, ValueRef)
    for x, y in zip(ctx.axes(a), ctx.axes(b), strict=True):
        ctx.unify(x, y)
