"""A named snapshot: the traced graph of one model state with its label groups."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import torch

from .chains import view_chains
from .graph import Graph, constant_nodes
from .labels import Label, LabelGroup
from .spaces import SpaceTable

REBUILT_AFTER_LOAD = frozenset({"selector_label_groups"})
"""Keys of :attr:`Snapshot.cache` that are not pickled (rebuilt lazily from the snapshot)."""


@dataclass
class Issue:
    """Something the engine could not reason about (kept in the IR's report)."""

    kind: str
    module: str
    op: str
    detail: str


@dataclass
class Snapshot:
    """Graph + space table + label groups (+ scores once a criterion ran).

    ``owner`` is a random id (from the OS, not the seedable ``random`` module: two IRs built
    after the same ``random.seed`` must still differ) stamped into every :class:`Label` of this snapshot,
    so labels of another IR (or of a stale, pre-prune snapshot) are refused.
    ``example`` holds the example ``(args, kwargs)`` used to trace and verify.
    """

    name: str
    graph: Graph
    spaces: SpaceTable
    groups: list[LabelGroup]
    issues: list[Issue]
    example: tuple[tuple[Any, ...], dict[str, Any]]
    output_shapes: list[tuple[int, ...]]
    owner: int = field(default_factory=lambda: secrets.randbits(62))
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    """Label scores per group id (higher = more important), written by a criterion."""
    score_source: str = ""
    """Which criterion wrote ``scores`` (empty: none; selectors fall back to magnitude)."""
    modes: dict[str, bool] = field(default_factory=dict)
    """``module path -> training`` flag at trace time; verification runs the model in these modes."""
    extra: list[tuple[tuple[Any, ...], dict[str, Any], dict[str, bool]]] = field(default_factory=list)
    """Calls traced after the example call: ``(args, kwargs, module path -> training flag)``;
    verification runs each of them too (their nodes are ``graph.extra_calls``)."""
    cache: dict[str, Any] = field(default_factory=dict, repr=False)
    """Derived data (default magnitude scores); recomputed when the weights change."""

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the cache entries that are large and cheap to rebuild (a selector's
        label lists: one ``Label`` per channel); they come back on first use."""
        state = dict(self.__dict__)
        state["cache"] = {k: v for k, v in self.cache.items() if k not in REBUILT_AFTER_LOAD}
        return state

    def view_chains(self) -> dict[int, tuple[list[int], list[int]]]:
        """:func:`~pruning_ir._ir.chains.view_chains` of the graph, computed once (cached)."""
        if "view_chains" not in self.cache:
            self.cache["view_chains"] = view_chains(self.graph)
        chains: dict[int, tuple[list[int], list[int]]] = self.cache["view_chains"]
        return chains

    def constant_nodes(self) -> set[int]:
        """:func:`~pruning_ir._ir.graph.constant_nodes` of the graph, computed once (cached)."""
        if "constant_nodes" not in self.cache:
            self.cache["constant_nodes"] = constant_nodes(self.graph)
        nodes: set[int] = self.cache["constant_nodes"]
        return nodes

    def calls(self) -> list[tuple[tuple[Any, ...], dict[str, Any], dict[str, bool]]]:
        """Every traced call as ``(args, kwargs, modes)``, the example call first."""
        return [(self.example[0], self.example[1], self.modes), *getattr(self, "extra", [])]

    @property
    def prunable_groups(self) -> list[LabelGroup]:
        return [g for g in self.groups if g.prunable]

    def labels(self, group: LabelGroup) -> list[Label]:
        return list(map(Label, repeat(self.owner, group.size), repeat(group.gid, group.size), range(group.size)))
