"""MACs and parameter counts read off the IR's shapes, for any selection of labels, without a forward.

Every size that a cost depends on is the kept size of an axis layout (see
:mod:`pruning_ir._ir.spaces`): a sum of terms, each a product of ranges ``(leaf, start, stop)``
of label groups. A cost is a polynomial in those axis sizes, built once from the snapshot's
graph and compiled into flat ``numpy`` index arrays, so that evaluating it for a new
selection is a prefix sum over the kept slots and a few ``reduceat`` calls (no re-trace, no
forward, no model).

The formulas live with each op's channel rule (``pruning_ir/_rules/linalg.py``, registered with
:func:`~pruning_ir._rules.base.macs`); ``MacsLatency`` evaluates the same formulas on a run's shapes.

MAC conventions (one MAC = one multiply-accumulate = two FLOPs of
:class:`torch.utils.flop_counter.FlopCounterMode`; bias additions, normalisations,
activations, softmax, pooling and every elementwise op count zero, as there):

* ``aten.mm``, ``aten.addmm``, ``aten._scaled_mm``, ``aten._int_mm``: ``M·K·N``;
  ``aten.bmm``, ``aten.baddbmm``, ``aten.addbmm``: ``B·M·K·N``; ``aten.matmul``: output
  numel times ``K``; ``aten.linear``: input numel times ``out_features``;
  ``aten.mv``/``aten.addmv``: ``M·K``; ``aten.dot``/``aten.vdot``: ``K``.
* Convolutions (``aten.convolution``, ``aten._convolution``, ``aten.convolution_overrideable``,
  ``aten.cudnn_convolution``, ``aten.mkldnn_convolution``, ``aten._slow_conv2d_forward``,
  ``aten.conv{1,2,3}d``, ``aten.conv_transpose{1,2,3}d``): ``batch · weight numel · spatial``,
  with the output's spatial size for a convolution and the input's for a transposed one
  (groups are in the weight's shape), as in ``FlopCounterMode``.
* Attention (``aten._scaled_dot_product_*``, ``aten.scaled_dot_product_attention``):
  ``batch·heads_q·S_q·S_k·(D_qk + D_v)`` (``q·kᵀ`` and ``p·v``; masks and causality ignored,
  GQA counted with the query heads), as in ``FlopCounterMode``; ``aten._flash_attention_forward``
  and ``aten._efficient_attention_forward`` (``(B, S, H, D)`` layout) the same when not
  variable-length.
* ``aten._grouped_mm`` (MoE experts): ``M·K·N`` for ``(M, K) x (G, K, N)`` and
  ``(M, K) x (K, N)`` with offsets, ``G·M·K·N`` for ``(G, M, K) x (G, K, N)``.

``FlopCounterMode`` of torch 2.13 has no formula for ``aten._scaled_dot_product_flash_attention_for_cpu``
(what SDPA runs on CPU), ``aten.addbmm``, ``aten.mv``/``aten.addmv``, ``aten.dot``/``aten.vdot``,
``aten._int_mm``, ``aten.mkldnn_convolution`` nor ``aten._grouped_mm``, so on models that use them
it reports fewer FLOPs than ``2 x`` these MACs; everywhere else the two agree exactly.

Not counted: leaf modules (recorded as one opaque node, their inside is not in the graph) and
the few MAC-carrying op forms whose shapes are not understood (variable-length flash
attention, unusual ``_grouped_mm`` ranks); :attr:`MacsModel.uncounted` lists them.

Parameter convention (:class:`ParamsModel`): the number of elements of the model's parameters
(not buffers), each tied parameter once, parameters that the trace never touched included
(they keep their size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._ir.graph import Graph, Node, ValueRef
from .._ir.snapshot import Snapshot
from .._rules import load_all
from .._rules.base import MAC_FORMULAS, Axis, NotUnderstood
from .base import CostModel, LabelsArg
from .poly import Builder

if TYPE_CHECKING:
    from ..ir import PruningIR

__all__ = ["MAC_OPS", "MacsModel", "NodeCostModel", "NodeOperands", "ParamsModel"]


# ---------------------------------------------------------------------------------------- op formulas
def _axes(graph: Graph, ref: Any) -> list[Axis]:
    """The axis layouts of a tensor argument (its plain sizes when a layout is missing)."""
    if not isinstance(ref, ValueRef):
        raise NotUnderstood("a tensor argument is missing")
    v = graph.values[ref.vid]
    if len(v.axes) == len(v.shape):
        return list(v.axes)
    return list(v.shape)


class NodeOperands:
    """A graph node's operands as a MAC formula reads them: dims are axis layouts."""

    def __init__(self, graph: Graph, node: Node) -> None:
        self.graph, self.node = graph, node

    def dims(self, name: str) -> list[Axis]:
        return _axes(self.graph, self.node.kwargs.get(name))

    def out(self, i: int = 0) -> list[Axis]:
        if i >= len(self.node.outputs) or self.node.outputs[i] < 0:
            raise NotUnderstood("the output is missing")
        return _axes(self.graph, ValueRef(self.node.outputs[i]))

    def arg(self, name: str, default: Any = None) -> Any:
        return self.node.kwargs.get(name, default)

    def is_tensor(self, name: str) -> bool:
        return isinstance(self.node.kwargs.get(name), ValueRef)


load_all()  # the op families register their formulas with their rules
MAC_OPS = MAC_FORMULAS
"""ATen op packet -> its MAC formula (registered with its channel rule in ``pruning_ir/_rules/``;
extend it with :func:`pruning_ir.extend.register_macs`). Every other op counts zero."""


def _mac_like(op: str) -> bool:
    """An op outside :data:`MAC_OPS` whose name says it probably multiplies matrices (reported)."""
    name = op.rsplit(".", 1)[-1]
    if "upsample" in name or "backward" in name:
        return False
    return (any(k in name for k in ("attention", "convolution", "conv1d", "conv2d", "conv3d", "conv_transpose",
                                    "conv_depthwise", "slow_conv", "matmul", "einsum", "tensordot"))
            or name.endswith(("mm", "linear")))



class MacsModel(CostModel):
    """Multiply-accumulates of one forward on the IR's example inputs, for any removed labels.

    Conventions (which ops count, and how) are in the module docstring of
    :mod:`pruning_ir.cost.macs`: they match ``torch.utils.flop_counter.FlopCounterMode``
    (its FLOPs / 2) op for op, plus the CPU attention kernel and a few contractions it misses.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR
        >>> from pruning_ir.cost import MacsModel
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
        >>> macs = MacsModel(ir)
        >>> macs.baseline()                       # 2 * (4*16 + 16*3)
        224
        >>> labels = ir.labels(ir.prunable_label_groups()[0])[:4]
        >>> macs.macs(labels)                     # 2 * (4*12 + 12*3)
        168
        >>> macs.marginal_costs(labels)           # group g2 (the hidden units): one more saves 2 * (4 + 3)
        {2: 14.0}
    """

    unit = "MACs"

    def _collect(self, snap: Snapshot, builder: Builder) -> None:
        self.uncounted: list[str] = []
        """Nodes that may carry MACs but are not counted (leaf modules, forms not understood)."""
        self.counted: dict[str, int] = {}
        """Op -> number of nodes whose MACs are counted."""
        graph = snap.graph
        for node in graph.primary_nodes():  # the example call's (extra calls are not the model's cost)
            where = node.module or "<root>"
            if node.leaf:
                self.uncounted.append(f"leaf module {node.leaf} '{where}' (its inside is not in the graph)")
                continue
            formula = MAC_OPS.get(node.op)
            if formula is None:
                if _mac_like(node.op):
                    self.uncounted.append(f"{node.op} in '{where}': no MAC formula")
                continue
            try:
                monos = formula(NodeOperands(graph, node))
            except NotUnderstood as exc:
                self.uncounted.append(f"{node.op} in '{where}': {exc}")
                continue
            tag = self._tag(f"#{node.nid} {node.op} {where}")
            for coef, axes in monos:
                builder.add(coef, axes, tag)
            self.counted[node.op] = self.counted.get(node.op, 0) + 1

    def macs(self, removed_labels: LabelsArg = None) -> int:
        """MACs of the model with ``removed_labels`` removed (``None``: the unpruned model)."""
        return self.cost(removed_labels)


class ParamsModel(CostModel):
    """Number of parameter elements of the model with labels removed (buffers not counted,
    tied parameters once, parameters that the trace never touched at their full size).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR
        >>> from pruning_ir.cost import ParamsModel
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
        >>> params = ParamsModel(ir)
        >>> hidden = ir.labels(ir.prunable_label_groups()[0])
        >>> params.baseline(), params.params(hidden[:4])   # 4*16+16+16*3+3, then 12 hidden units
        (131, 99)
    """

    unit = "parameters"

    def _collect(self, snap: Snapshot, builder: Builder) -> None:
        graph = snap.graph
        for name, vid in graph.params.items():
            v = graph.values[vid]
            if v.kind != "param":
                continue
            axes: Sequence[Axis] = v.axes if len(v.axes) == len(v.shape) else v.shape
            builder.add(1, axes, self._tag(name))
        untouched = [(n, p) for n, p in self._ir.model.named_parameters() if n not in graph.params]
        if untouched:
            builder.add(sum(p.numel() for _, p in untouched), (), self._tag("<parameters not in the graph>"))

    def params(self, removed_labels: LabelsArg = None) -> int:
        """Parameter count of the model with ``removed_labels`` removed (``None``: unpruned)."""
        return self.cost(removed_labels)


class NodeCostModel(CostModel):
    """Per-node costs for latency models: the MACs of every MAC-carrying node under its own tag,
    and, under tag 0, the elements written by every other node (leaf modules included).

    The per-tag queries (:meth:`~CostModel.tag_costs`, :meth:`~CostModel.tag_savings`) are what
    it is for: :class:`~pruning_ir.latency.LatencyLUT` looks each node up on its own latency
    curve and the other ops' elements on the overhead's. The total (:meth:`~CostModel.cost`)
    mixes MACs and elements and means little on its own.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR
        >>> from pruning_ir.cost import NodeCostModel
        >>> ir = PruningIR(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)),
        ...                example_inputs=(torch.randn(2, 4),))
        >>> terms = NodeCostModel(ir)
        >>> [len(terms.nodes), terms.tags[0]]
        [2, '<elements written by the other ops>']
        >>> terms.tag_costs().tolist()    # t (64) + relu (32) + t (48) elements; 2*4*16, 2*16*3 MACs
        [144, 128, 96]
    """

    unit = "MACs (nodes) / elements (tag 0)"

    def __init__(self, ir: PruningIR, snapshot_name: str = "main") -> None:
        self.nodes: list[Node] = []
        """The MAC-carrying nodes, node ``i`` under tag ``i + 1``."""
        self.n_other = 0
        """Number of other nodes (their output elements are tag 0)."""
        self.uncounted: list[str] = []
        """MAC-carrying nodes whose form is not understood (counted as other nodes)."""
        super().__init__(ir, snapshot_name)

    def _collect(self, snap: Snapshot, builder: Builder) -> None:
        graph = snap.graph
        other = self._tag("<elements written by the other ops>")
        for node in graph.primary_nodes():
            formula = None if node.leaf else MAC_OPS.get(node.op)
            monos = None
            if formula is not None:
                try:
                    monos = formula(NodeOperands(graph, node))
                except NotUnderstood as exc:
                    self.uncounted.append(f"{node.op} in '{node.module or '<root>'}': {exc}")
            if monos is None:
                self.n_other += 1
                for vid in node.outputs:
                    if vid >= 0:
                        builder.add(1, _axes(graph, ValueRef(vid)), other)
                continue
            tag = self._tag(f"#{node.nid} {node.op} {node.module or '<root>'}")
            self.nodes.append(node)
            for coef, axes in monos:
                builder.add(coef, axes, tag)
