"""The coupling that ties a node of an extra traced call to its counterpart in the example call."""

from __future__ import annotations

from .._ir.graph import SAME_AS, ValueRef
from .base import Ctx, rule


@rule(SAME_AS)
def same_as(ctx: Ctx) -> None:
    a, b = ctx.a("self"), ctx.a("other")
    assert isinstance(a, ValueRef) and isinstance(b, ValueRef)
    for x, y in zip(ctx.axes(a), ctx.axes(b), strict=True):
        ctx.unify(x, y)
