"""The coupling graph of a snapshot as a ``networkx`` graph: modules, their parameters, label groups.

Nodes are tuples ``("module", path)``, ``("param", name)`` and ``("group", gid)``; a module is
joined to the parameters and buffers it holds (``kind="holds"``), a parameter to every label
group one of its axes lies in (``kind="sliced"``, ``axes=[...]``: which axes). Node attributes:
modules ``type``; parameters ``shape``; groups ``size``, ``prunable``, ``reason``, ``structured``,
``step``, ``describe``. Parameters the trace never touched have no group edges. Two modules are
coupled when a path joins them through a group: ``networkx`` answers that, and more
(``nx.node_connected_component``, bipartite projections), without pruning_ir knowing.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
from torch import nn

from .snapshot import Snapshot


def coupling_graph(snap: Snapshot, model: nn.Module) -> Any:
    """The ``networkx.Graph`` described in the module docstring."""
    g = nx.Graph()
    tensors: dict[str, Any] = {}
    for path, mod in model.named_modules():
        g.add_node(("module", path), type=type(mod).__name__)
        prefix = f"{path}." if path else ""
        for name, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            full = prefix + name
            tensors[full] = t
            g.add_node(("param", full), shape=tuple(t.shape))
            g.add_edge(("module", path), ("param", full), kind="holds")
    aliases = getattr(snap.graph, "aliases", {})
    canonical: dict[str, list[str]] = {}
    for other, name in aliases.items():
        canonical.setdefault(name, []).append(other)
    for grp in snap.groups:
        g.add_node(("group", grp.gid), size=grp.size, prunable=grp.prunable, reason=grp.reason,
                   structured=grp.structured, step=grp.step, describe=grp.describe())
        for name, axis in grp.members:
            for full in (name, *canonical.get(name, ())):
                if full not in tensors:
                    continue
                edge = g.get_edge_data(("param", full), ("group", grp.gid))
                if edge is None:
                    g.add_edge(("param", full), ("group", grp.gid), kind="sliced", axes=[axis])
                elif axis not in edge["axes"]:
                    edge["axes"].append(axis)
    return g
