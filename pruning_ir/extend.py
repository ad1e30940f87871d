"""Teaching the engine about code it does not know: channel rules for ops, channel handlers for
opaque modules, and MAC formulas.

Three registries, one decorator each; what they register applies to every IR built afterwards.

- :func:`register_rule` (op packets such as ``"aten.my_op"`` or ``"mylib.my_op"``): a function
  of a :class:`RuleContext` that gives every output axis a layout and couples axes. An op
  without a rule makes every axis it touches unprunable (or raises under ``soft_tracing=False``).
- :func:`register_leaf_handler` (a module type, not its subclasses): the same, for modules kept
  opaque with ``leaf_modules=[...]``; :func:`leaf_param` finds the module's parameters.
- :func:`register_macs` (op packets): the op's multiply-accumulates as monomials over its
  operands' dims, written once: :class:`~pruning_ir.MacsModel` (and the knapsack selector)
  evaluate it over axis layouts, ``MacsLatency`` over the shapes of a real run. Ops without a
  formula count zero.

A rule, on a custom op that scales each channel of its input (the last axis) by a weight:

    >>> import torch
    >>> from torch import nn
    >>> from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning
    >>> from pruning_ir.extend import RuleContext, register_rule
    >>> @torch.library.custom_op("pruning_ir_demo::scale", mutates_args=())
    ... def scale(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    ...     return x * w
    >>> @scale.register_fake
    ... def _(x, w):
    ...     return torch.empty_like(x)
    >>> @register_rule("pruning_ir_demo.scale")
    ... def _scale_rule(ctx: RuleContext) -> None:
    ...     x, w = ctx.axes(ctx.a("x")), ctx.axes(ctx.a("w"))
    ...     ctx.unify(x[-1], w[0])  # channel c of x meets entry c of w
    ...     ctx.set_out(0, x)       # the output is laid out like x
    >>> class Scaled(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.inp, self.out = nn.Linear(4, 8), nn.Linear(8, 3)
    ...         self.w = nn.Parameter(torch.rand(8))
    ...     def forward(self, x):
    ...         return self.out(scale(self.inp(x), self.w))
    >>> ir = PruningIR(Scaled(), example_inputs=(torch.randn(2, 4),))
    >>> [g.size for g in ir.prunable_label_groups()]  # inp's outputs, w and out's inputs, together
    [8]
    >>> labels = UniformLabelSelector(0.5).select(ir)
    >>> ir.prune(labels=labels).model.w.shape
    torch.Size([4])
    >>> verify_pruning(ir, labels, backward=False).exact
    True

A MAC formula for the same op (one multiply per element of ``x``): a list of monomials
``(coefficient, [dim, ...])``, each the coefficient times the product of its dims, read off the
call's :class:`Operands` by argument name (``op.dims("x")``, ``op.out()``, ``op.arg("groups")``):

    >>> from pruning_ir import MacsLatency, MacsModel
    >>> from pruning_ir.extend import Operands, register_macs
    >>> @register_macs("pruning_ir_demo.scale")
    ... def _scale_macs(op: Operands):
    ...     return [(1, op.dims("x"))]
    >>> ir = PruningIR(Scaled(), example_inputs=(torch.randn(2, 4),))
    >>> MacsModel(ir).baseline()  # 2*4*8 (inp) + 2*8 (scale) + 2*8*3 (out)
    128
    >>> MacsLatency((torch.randn(2, 4),))(Scaled())  # the same formula, on a real run's shapes
    128.0

A handler for a module kept opaque (here an ``nn.Linear`` subclass traced as one node: its
weight's rows are its output channels, its columns its input channels):

    >>> from pruning_ir.extend import leaf_param, register_leaf_handler
    >>> class MyLinear(nn.Linear):
    ...     pass
    >>> @register_leaf_handler(MyLinear)
    ... def _my_linear(ctx: RuleContext) -> None:
    ...     w, b = leaf_param(ctx, "weight"), leaf_param(ctx, "bias")
    ...     x, wa = ctx.axes(ctx.node.args[0]), ctx.axes(w)
    ...     ctx.unify(x[-1], wa[1])
    ...     if b is not None:
    ...         ctx.unify(wa[0], ctx.axes(b)[0])
    ...     ctx.set_out(0, [*x[:-1], wa[0]])
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), MyLinear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> ir = PruningIR(model, example_inputs=(torch.randn(2, 4),), leaf_modules=[MyLinear])
    >>> sorted(g.size for g in ir.prunable_label_groups())
    [6, 8]

Layouts, facts (integer arguments that depend on channel sizes: ``ctx.fact``), rigid axes
(``ctx.rigid``) and notes (``ctx.note``, where pruning changes the result: normalisations) are
described in ``pruning_ir/_rules/README.md``; the rules in ``pruning_ir/_rules/`` are examples of
every kind. Add a toy model with the new op to your tests and check it with
:func:`~pruning_ir.verify_pruning` on random selections.
"""

from __future__ import annotations

from collections.abc import Callable

from ._infer.leaves import _param, register_leaf_handler
from ._ir.graph import ValueRef
from ._rules import Ctx as RuleContext
from ._rules import rule
from ._rules.base import MacFormula, Monomial, Operands, macs

__all__ = ["Monomial", "Operands", "RuleContext", "leaf_param", "register_leaf_handler", "register_macs",
           "register_rule"]


def register_rule(*ops: str) -> Callable[[Callable[[RuleContext], None]], Callable[[RuleContext], None]]:
    """Register a channel rule for every op packet in ``ops`` (``"aten.add"``; a custom op
    ``mylib::f`` is ``"mylib.f"``). It replaces a rule the engine has for that op."""
    if not ops or not all(isinstance(op, str) and "." in op for op in ops):
        raise TypeError(f"register_rule takes op packet names such as 'aten.add', got {ops!r}")
    return rule(*ops)


def register_macs(*ops: str) -> Callable[[MacFormula], MacFormula]:
    """Register ``fn(op: Operands) -> [(coefficient, [dim, ...]), ...]`` as the MAC count of every
    op packet in ``ops``: the op's MACs are the sum of its monomials, each the coefficient times the
    product of its dims (the operands' axis layouts for the cost model, their sizes for
    ``MacsLatency``; a formula only multiplies them). It replaces a formula the engine has for that
    op."""
    if not ops or not all(isinstance(op, str) and "." in op for op in ops):
        raise TypeError(f"register_macs takes op packet names such as 'aten.mm', got {ops!r}")
    return macs(*ops)


def leaf_param(ctx: RuleContext, name: str) -> ValueRef | None:
    """The leaf module's own parameter or buffer ``name`` (``"weight"``), as the node's value."""
    return _param(ctx, name)
