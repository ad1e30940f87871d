"""Derive the snapshot of a pruned model from the original one, without re-tracing.

Every layout is normalised and each factor ``(leaf, s, e)`` is renumbered to the
kept slots' ranks; shapes, integer arguments and scores follow. Pre: ``kept``
leaves at least one slot per group. Post: ``lint`` holds on the result.
"""

from __future__ import annotations

import torch

from .axes import kept_size
from .graph import Fact, Graph, Node, Value, set_path
from .labels import build_groups
from .snapshot import Snapshot
from .spaces import Layout, SpaceTable


def _remap_layout(sp: SpaceTable, layout: Layout, ranks: dict[int, list[int]]) -> Layout:
    out = []
    for t in sp.normalize(layout):
        nt = []
        empty = False
        for leaf, s, e in t:
            r = ranks.get(leaf)
            if r is None:
                nt.append((leaf, s, e))
                continue
            ns, ne = r[s], r[e]
            if ne == ns:
                empty = True
                break
            nt.append((leaf, ns, ne))
        if not empty:
            out.append(tuple(nt))
    return SpaceTable.simplify(tuple(out))


def remap_snapshot(snap: Snapshot, kept: dict[int, torch.Tensor]) -> Snapshot:
    sp = snap.spaces
    # rank of each slot among the kept ones (slot s of a leaf moves to ranks[leaf][s])
    ranks = {leaf: [0, *k.long().cumsum(0).tolist()] for leaf, k in kept.items()}
    g = snap.graph
    remapped: dict[Layout, Layout] = {}  # most values share their axes' layouts with others

    def remap(layout: Layout) -> Layout:
        got = remapped.get(layout)
        if got is None:
            got = remapped[layout] = _remap_layout(sp, layout, ranks)
        return got

    values = [Value(v.vid, v.shape, v.dtype, v.kind, v.name, v.producer, [remap(ax) for ax in v.axes])
              for v in g.values]
    nodes = []
    for n in g.nodes:
        kwargs = n.kwargs
        facts = []
        for f in n.facts:
            size = kept_size(sp, f.layout, kept)
            if size != f.old:
                kwargs = set_path(kwargs, f.path, size)
            facts.append(Fact(f.path, f.kind, remap(f.layout), size))
        nodes.append(Node(n.nid, n.op, n.args, kwargs, n.outputs, n.out_spec, n.module_stack, n.leaf, facts))
    nsp = SpaceTable()
    nsp.size = list(sp.size)
    nsp.parent = list(range(len(sp.size)))
    nsp.origin = list(sp.origin)
    for leaf in sp.groups():
        nsp.inherit(leaf, sp, leaf, step=True)
        if leaf in kept:
            nsp.size[leaf] = int(kept[leaf].sum())
    for v in values:
        v.shape = tuple(sum(_term(nsp, t) for t in ax) for ax in v.axes)
    extra = [(start, list(outs), list(seq)) for start, outs, seq in getattr(g, "extra_calls", [])]
    graph = Graph(values, nodes, list(g.inputs), list(g.outputs), dict(g.params), dict(g.aliases),
                  set(g.explicit_modules), extra)
    groups = build_groups(graph, nsp)
    new = Snapshot(snap.name, graph, nsp, groups, list(snap.issues), snap.example, snap.output_shapes,
                   modes=snap.modes, extra=list(getattr(snap, "extra", [])))
    # functions of the graph's ops and edges alone, which remapping keeps: computed once per source
    # snapshot and handed to every snapshot remapped from it (verification reads them)
    new.cache["view_chains"], new.cache["constant_nodes"] = snap.view_chains(), snap.constant_nodes()
    old_by_leaf = {gr.leaf: gr for gr in snap.groups}
    for gr in groups:
        old = old_by_leaf.get(gr.leaf)
        if old is not None and old.gid in snap.scores:
            score = snap.scores[old.gid]
            new.scores[gr.gid] = score[kept[gr.leaf]] if gr.leaf in kept else score.clone()
    if new.scores:  # kept labels keep their scores (iterative pruning without re-analysis)
        new.score_source = f"{snap.score_source or 'scores'} carried over by prune(); recalibrate after fine-tuning"
    return new


def _term(sp: SpaceTable, t: tuple[tuple[int, int, int], ...]) -> int:
    n = 1
    for _, s, e in t:
        n *= e - s
    return n
