"""IR invariants, checked between stages (tests run ``ir.lint()`` after every step)."""

from __future__ import annotations

from torch import nn

from .measure import named_tensors
from .snapshot import Snapshot
from .spaces import layout_size


def lint_snapshot(snap: Snapshot, model: nn.Module) -> None:
    """Raise ``AssertionError`` naming the first broken invariant and how to read it.

    Invariants: every value has one layout per axis and each layout's size equals
    the axis size; every parameter value matches the model's tensor shape; every
    label group is an undefined representative leaf of its size; node outputs exist.
    """
    g, sp = snap.graph, snap.spaces
    for v in g.values:
        if len(v.axes) != len(v.shape):
            raise AssertionError(f"value %{v.vid} ({v.kind} {v.name}) has {len(v.axes)} layouts for "
                                 f"shape {v.shape}: a rule did not set its output axes")
        for d, ax in enumerate(v.axes):
            n = layout_size(sp.normalize(ax))
            if n != v.shape[d]:
                producer = g.nodes[v.producer].op if v.producer >= 0 else v.kind
                raise AssertionError(f"value %{v.vid} axis {d}: layout size {n} != shape {v.shape[d]} "
                                     f"(made by {producer}); the rule for that op is wrong")
    tensors = named_tensors(model)
    for name, vid in g.params.items():
        if name not in tensors:
            raise AssertionError(f"parameter {name} of the IR is missing from the model")
        if tuple(tensors[name].shape) != g.values[vid].shape:
            raise AssertionError(f"parameter {name}: model shape {tuple(tensors[name].shape)} != IR shape "
                                 f"{g.values[vid].shape}; the IR does not describe this model")
    for grp in snap.groups:
        if sp.find(grp.leaf) != grp.leaf or grp.leaf in sp.defn:
            raise AssertionError(f"label group g{grp.gid} is not a representative leaf")
        if sp.size[grp.leaf] != grp.size:
            raise AssertionError(f"label group g{grp.gid} size {grp.size} != leaf size {sp.size[grp.leaf]}")
    for node in g.nodes:
        for vid in node.outputs:
            if vid >= len(g.values):
                raise AssertionError(f"node #{node.nid} {node.op} names missing output %{vid}")
