"""Constraints that come from a module's Python code rather than its ops.

Some library modules tie sizes together in Python (``nn.MultiheadAttention``
computes ``head_dim = embed_dim // num_heads`` from its *input* width and asserts
that q/k/v have that width). Such ties are not index couplings, so the op rules
cannot see them; the module's channels are made unprunable here, with a reason.

Stock ``nn.MultiheadAttention`` instances are traced through an explicit forward
instead (``pruning_ir.modules``) and need no constraint; a *subclass* with its own
forward may still call the stock functional code, so it keeps the constraint.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .._ir.graph import Graph
from .._ir.snapshot import Issue
from ..modules import PrunedMultiheadAttention, traces_explicitly
from .infer import InferResult

ModuleConstraint = Callable[[nn.Module, str, Graph, InferResult], None]
MODULE_CONSTRAINTS: dict[type[nn.Module], ModuleConstraint] = {}


def _rigid_params(mod: nn.Module, path: str, graph: Graph, res: InferResult, reason: str) -> None:
    for pname, _ in mod.named_parameters():
        full = f"{path}.{pname}" if path else pname
        full = graph.aliases.get(full, full)
        vid = graph.params.get(full)
        if vid is None:
            continue
        for ax in graph.values[vid].axes:
            res.spaces.mark_rigid(ax, reason)


def _mha(mod: nn.Module, path: str, graph: Graph, res: InferResult) -> None:
    if traces_explicitly(mod) or isinstance(mod, PrunedMultiheadAttention):
        return
    reason = (f"nn.MultiheadAttention '{path}' ties its inner width to embed_dim in Python; use separate "
              "q/k/v nn.Linear layers to prune its heads")
    _rigid_params(mod, path, graph, res, reason)
    res.issues.append(Issue("module", path, "MultiheadAttention", reason))


MODULE_CONSTRAINTS[nn.MultiheadAttention] = _mha


def apply_module_constraints(model: nn.Module, graph: Graph, res: InferResult) -> None:
    for path, mod in model.named_modules():
        for cls, fn in MODULE_CONSTRAINTS.items():
            if isinstance(mod, cls):
                fn(mod, path, graph, res)
