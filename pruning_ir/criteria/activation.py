"""Activation criteria: APoZ and mean activation, from calibration forward passes.

The activations of a group are read at its *sites*: the outputs of nonlinearity ops
(ReLU, GELU, SiLU, ...) that carry the group's channels on some axis, found from the
IR, so functional activations (``torch.relu(x)`` in a ``forward``) count as much as
``nn.ReLU`` modules. A group with no nonlinearity (a residual stream, attention
dims) is read at the outputs of the layers that use its parameters.

The collector runs the model under the IR's recorder (no gradients, buffers such as
BN running statistics restored afterwards) and finds each site again as "the k-th
``op`` run inside module stack S", so train/eval mode may differ from tracing, but
calibration batches must take the same path through the model as the example inputs
(batch size and sequence length may differ).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from .._ir.graph import Node
from .._ir.measure import per_index
from .._trace.recorder import record
from ..errors import CalibrationError
from .base import Criterion, all_reduce_sum

if TYPE_CHECKING:
    from ..ir import PruningIR

log = logging.getLogger(__name__)

NONLINEAR_OPS = frozenset({
    "aten.relu", "aten.relu_", "aten.gelu", "aten.gelu_", "aten.silu", "aten.silu_", "aten.sigmoid",
    "aten.sigmoid_", "aten.tanh", "aten.tanh_", "aten.hardswish", "aten.hardswish_", "aten.hardtanh",
    "aten.hardtanh_", "aten.elu", "aten.elu_", "aten.leaky_relu", "aten.leaky_relu_", "aten.mish",
    "aten.mish_", "aten.softplus", "aten.clamp_min", "aten.clamp_min_", "aten.threshold", "aten.hardsigmoid",
    "aten.prelu", "aten._prelu_kernel", "aten.celu", "aten.selu", "aten.glu",
})

_Site = tuple[int, int, int, torch.Tensor, torch.Tensor]  # gid, size, axis, positions, slots
_Key = tuple[tuple[str, ...], str, int]  # module stack, op, occurrence of that (stack, op)


def _keys(nodes: list[Node]) -> list[_Key]:
    """A key per node that survives mode-dependent ops elsewhere (train-mode BatchNorm
    records other ops than eval mode): the k-th ``op`` run inside one module stack."""
    seen: dict[tuple[tuple[str, ...], str], int] = {}
    out = []
    for n in nodes:
        k = (n.module_stack, n.op)
        seen[k] = seen.get(k, 0) + 1
        out.append((n.module_stack, n.op, seen[k]))
    return out


class _ActivationCriterion(Criterion):
    needs_data = True

    def __init__(self, ir: PruningIR, snapshot_name: str = "main", *, progress: bool = False) -> None:
        super().__init__(ir, snapshot_name, progress=progress)
        self.sites: dict[_Key, list[_Site]] = {}
        self._seen: dict[tuple[tuple[str, ...], str], int] = {}
        self._hits = 0
        self._stat: dict[int, torch.Tensor] = {}
        self._count: dict[int, torch.Tensor] = {}

    def _stat_per_index(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        raise NotImplementedError

    def _attach(self) -> None:
        from .._ir.axes import slot_map

        snap = self.snap
        sp = snap.spaces
        graph = snap.graph
        by_leaf = {sp.find(g.leaf): g for g in snap.prunable_groups}
        param_vids = {vid: name for name, vid in graph.params.items()}
        group_params: dict[int, set[int]] = {}
        for g in snap.prunable_groups:
            group_params[g.gid] = {graph.params[n] for n, _ in g.members}

        keys = _keys(graph.nodes)

        def add_sites(node: Node, only: set[int] | None, sites: dict[_Key, list[_Site]]) -> set[int]:
            found: set[int] = set()
            vid = next((v for v in node.outputs if v >= 0), -1)
            if vid < 0 or not ("float" in graph.values[vid].dtype or "half" in graph.values[vid].dtype):
                return found
            for axis, layout in enumerate(graph.values[vid].axes):
                for leaf in sp.leaves_of(layout):
                    g = by_leaf.get(sp.find(leaf))
                    if g is None or (only is not None and g.gid not in only):
                        continue
                    slots = slot_map(sp, layout, g.leaf)
                    sel = (slots >= 0).nonzero().squeeze(1)
                    sites.setdefault(keys[node.nid], []).append((g.gid, g.size, axis, sel, slots[sel]))
                    found.add(g.gid)
            return found

        sites: dict[_Key, list[_Site]] = {}
        covered: set[int] = set()
        for node in graph.primary_nodes():
            if node.op in NONLINEAR_OPS and not node.leaf:
                covered |= add_sites(node, None, sites)
        missing = {g.gid for g in snap.prunable_groups} - covered
        if missing:  # no nonlinearity: read the outputs of the layers using the group's parameters
            for node in graph.primary_nodes():
                uses = [vid for vid in node.tensor_args() if vid in param_vids]
                if not uses:
                    continue
                want = {gid for gid in missing if group_params[gid] & set(uses)}
                if want:
                    add_sites(node, want, sites)
        self.sites = sites
        self._stat = {g.gid: torch.zeros(g.size, dtype=torch.float64) for g in snap.prunable_groups}
        self._count = {g.gid: torch.zeros(g.size, dtype=torch.float64) for g in snap.prunable_groups}

    def _observe(self, node: Node, outs: list[Any]) -> None:
        k = (node.module_stack, node.op)
        n = self._seen[k] = self._seen.get(k, 0) + 1
        entries = self.sites.get((node.module_stack, node.op, n))
        if entries is None or not outs or not isinstance(outs[0], torch.Tensor):
            return
        self._hits += 1
        t = outs[0].detach()
        for gid, _size, axis, sel, slots in entries:
            vals = self._stat_per_index(t, axis).index_select(0, sel.to(t.device)).double().cpu()
            per_entry = t.numel() // max(t.shape[axis], 1)
            self._stat[gid].index_add_(0, slots, vals)
            self._count[gid].index_add_(0, slots, torch.full_like(vals, float(per_entry)))

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        captured: list[Any] = []
        model = self.ir.model
        handle = model.register_forward_hook(lambda _m, _a, out: captured.append(out))
        self._seen = {}
        self._hits = 0
        try:
            record(model, args, kwargs, self.ir.leaf_modules, observer=self._observe, seeded_training=False)
        finally:
            handle.remove()
        if self._hits != len(self.sites):
            missing = [f"{op} in '{stack[-1] if stack else '<root>'}'" for stack, op, i in self.sites
                       if self._seen.get((stack, op), 0) < i]
            raise CalibrationError(
                f"{self.name}: this calibration batch took a different path through the model than the "
                f"example inputs ({len(self.sites) - self._hits} activation sites not reached, e.g. "
                f"{', '.join(missing[:3])}). Use batches that run the same code path as example_inputs "
                "(batch size and sequence length may differ)."
            )
        return captured[-1] if captured else None

    def _finish(self) -> dict[int, torch.Tensor]:
        gids = sorted(self._stat)
        reduced = all_reduce_sum(*[self._stat[g] for g in gids], *[self._count[g] for g in gids])
        stats, counts = reduced[:len(gids)], reduced[len(gids):]
        if self.calls == 0 or all(float(c.sum()) == 0 for c in counts):
            raise CalibrationError(
                f"{type(self).__name__} saw no calibration data: call collect(...) on at least one batch "
                "inside the with-block."
            )
        return {g: self._to_score(s, c) for g, s, c in zip(gids, stats, counts, strict=True)}

    def _to_score(self, stat: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return stat / count.clamp_min(1)


class APoZCriterion(_ActivationCriterion):
    """Average percentage of zeros (Hu et al. 2016): labels whose activations are most
    often exactly zero go first.

    Score = ``1 - APoZ`` (the fraction of non-zero activations), pooled over all of a
    group's sites and all positions (batch, space, sequence). Meaningful after a ReLU-like
    op; at sites without one, nearly every entry is non-zero and the scores tie.
    """

    name = "apoz"

    def _stat_per_index(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        return per_index(t.ne(0).to(torch.float32), axis)


class MeanActivationCriterion(_ActivationCriterion):
    """Mean activation (Molchanov et al. 2017, NNI's ``ActivationMeanRank``): labels with
    the smallest mean ``|activation|`` go first, pooled over the group's sites and all
    positions (absolute values so that GELU/SiLU negatives count as signal)."""

    name = "mean_activation"

    def _stat_per_index(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        return per_index(t.abs().float(), axis)
