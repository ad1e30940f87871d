"""Label inference: run every node's rule over the graph to couple channel spaces."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .._ir.graph import Graph, Node
from .._ir.ops import RANDOM, REARRANGING, value_sized
from .._ir.snapshot import Issue
from .._ir.spaces import Layout, Misaligned, SpaceTable
from .._rules import RULES, Ctx, load_all
from ..errors import TraceError

log = logging.getLogger(__name__)


@dataclass
class InferResult:
    spaces: SpaceTable
    issues: list[Issue] = field(default_factory=list)


def _init_value_axes(graph: Graph, sp: SpaceTable, keep_inputs: bool) -> None:
    for v in graph.values:
        if v.kind == "op" or v.axes:
            continue
        if v.kind in ("param", "buffer"):
            v.axes = [sp.new_leaf(s, f"{v.name}.shape[{d}]") for d, s in enumerate(v.shape)]
        elif v.kind == "input":
            reason = "model input (keeps its shape)" if keep_inputs else None
            v.axes = [sp.new_leaf(s, f"{v.name}.shape[{d}]", reason) for d, s in enumerate(v.shape)]
        else:
            v.axes = [sp.new_leaf(s, f"const#{v.vid}.shape[{d}]", "tensor made outside the traced forward")
                      for d, s in enumerate(v.shape)]


def infer(graph: Graph, *, soft_tracing: bool = True, keep_io: bool = True) -> InferResult:
    """Annotate every value's axes with layouts; return the space table and issues."""
    load_all()
    from .leaves import LEAF_HANDLERS

    sp = SpaceTable()
    res = InferResult(sp)
    _init_value_axes(graph, sp, keep_io)
    live = graph.live_nodes()
    for node in graph.nodes:
        ctx = Ctx(graph, sp, node)
        ctx.live = node.nid in live
        if value_sized(node) and not any(i.kind == "data_dependent" for i in res.issues):
            res.issues.append(Issue("data_dependent", node.module, node.op, "a tensor's values become a Python "
                                    "number or a size in forward: sizes along batch, sequence or spatial axes "
                                    "may follow the values (checked only where the traced sizes do not hold)"))
        if node.op in RANDOM and not any(i.kind == "random" for i in res.issues):
            res.issues.append(Issue("random", node.module, node.op, "random values in forward: outputs differ "
                                    "between runs (use eval() or fixed inputs for equivalence checks)"))
        if node.leaf:
            handler = LEAF_HANDLERS.get(node.leaf)
            if handler is None:
                res.issues.append(Issue("leaf", node.module, node.leaf, "leaf module without a handler: "
                                        "its inputs, outputs and parameters are unprunable"))
                ctx.rigid_all(f"leaf module {node.leaf} '{node.module}' has no handler")
            else:
                _run(ctx, node, handler, res, soft_tracing)
        else:
            rule = RULES.get(node.op)
            if rule is None:
                if not soft_tracing:
                    raise TraceError(
                        f"op {node.op} in module '{node.module or '<root>'}' has no channel rule. "
                        "Pass soft_tracing=True to make the channels it touches unprunable, or "
                        "list that module in leaf_modules=[...]."
                    )
                res.issues.append(Issue("unknown_op", node.module, node.op,
                                        "no channel rule: every axis it touches is unprunable"))
                ctx.rigid_all(f"unknown op {node.op} in '{node.module or '<root>'}'")
            else:
                _run(ctx, node, rule, res, soft_tracing)
        alias = [ref for ref in node.kwargs.get("__alias_write__") or [] if not _reshaped_view(graph, node, ref.vid)]
        if alias:
            res.issues.append(Issue("alias_write", node.module, node.op, "in-place write into a view"))
            ctx.rigid_all("in-place write into a view")
            for ref in alias:
                for ax in graph.values[ref.vid].axes:
                    ctx.rigid(ax, "base of a view written in place")
        for i, vid in enumerate(node.outputs):
            if vid >= 0 and len(graph.values[vid].axes) != len(graph.values[vid].shape):
                ctx.set_out(i, [ctx.fresh(s, f"out{i}", f"{node.op} gave no layout") for s in graph.values[vid].shape])
    if keep_io:
        for vid in graph.all_outputs():
            for ax in graph.values[vid].axes:
                sp.mark_rigid(ax, "model output (keeps its shape)")
    return res


def _reshaped_view(graph: Graph, node: Node, base: int) -> bool:
    """Whether the tensor ``node`` writes in place is ``base`` seen through views that only
    rearrange it (every entry once, none dropped: view, permute, ...; not slices): the write then
    couples the same channel spaces as a write into the base, and the op's own rule says how."""
    written = next(iter(node.tensor_args()), None)
    vid = written
    for _ in range(64):
        if vid is None or vid < 0:
            return False
        if vid == base:
            return vid != written
        producer = graph.values[vid].producer
        if producer < 0:
            return False
        src = graph.nodes[producer]
        if src.op not in REARRANGING:
            return False
        args = src.tensor_args()
        vid = args[0] if args else None
    return False


def _run(ctx: Ctx, node: Node, fn: object, res: InferResult, soft_tracing: bool = True) -> None:
    try:
        fn(ctx)  # type: ignore[operator]
    except Misaligned as exc:
        res.issues.append(Issue("misaligned", node.module, node.leaf or node.op, str(exc)))
        ctx.rigid_all(f"cannot align channels: {exc}")
    except Exception as exc:
        if not soft_tracing:
            raise TraceError(
                f"the channel rule of {node.leaf or node.op} in module '{node.module or '<root>'}' failed: "
                f"{type(exc).__name__}: {exc}. Pass soft_tracing=True to make the channels it touches "
                "unprunable, or list that module in leaf_modules=[...]; please report the model."
            ) from exc
        log.warning("rule for %s in '%s' failed (%s: %s); its channels are made unprunable",
                    node.op, node.module, type(exc).__name__, exc)
        res.issues.append(Issue("rule_error", node.module, node.leaf or node.op, f"{type(exc).__name__}: {exc}"))
        ctx.rigid_all(f"rule error in {node.op}")


_ = Layout  # re-exported type for rule authors
