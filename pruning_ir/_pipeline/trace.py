"""Trace a model on its calls (the example call, the user's extra calls, the automatic padded-mask
and training-mode calls) and infer its label groups: the build stage without the probe."""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .._infer.infer import infer
from .._infer.modules import apply_module_constraints
from .._infer.ties import tie_shared_sizes
from .._ir.graph import Graph, untraced_parameters
from .._ir.labels import build_groups
from .._ir.snapshot import Snapshot
from .._trace.recorder import record
from .._trace.run import Call
from .options import BuildOptions

log = logging.getLogger(__name__)


def padded_mask_call(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None:
    """The example call with a padded ``attention_mask`` (see ``auto_calls``), or ``None`` when
    ``forward`` takes no such argument, the call gives one, or there are no token ids."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None
    if "attention_mask" not in params or "attention_mask" in kwargs or params.index("attention_mask") < len(args):
        return None
    ids = next((t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() == 2
                and not t.is_floating_point() and not t.is_complex() and t.shape[1] > 1), None)
    if ids is None:
        return None
    mask = torch.ones(ids.shape, dtype=torch.long, device=ids.device)
    mask[0, 0] = 0
    return args, {**kwargs, "attention_mask": mask}, {p: m.training for p, m in model.named_modules()}


def _with_train_call(model: nn.Module, graph: Graph, args: tuple[Any, ...], kwargs: dict[str, Any],
                     extra: list[Call], leaf_modules: list[Any]) -> tuple[Graph, list[Call]]:
    """Trace again with the example call in training mode appended; keep it only when it uses
    parameters that no call used before (a path only training takes)."""
    modules = list(model.named_modules())
    if all(m.training for _, m in modules):
        return graph, extra
    missing = untraced_parameters(model, graph)
    train = (args, kwargs, {p: True for p, _ in modules})
    try:
        again = record(model, args, kwargs, leaf_modules, extra=[*extra, train])
    except Exception as exc:  # training mode does not run on these inputs: keep what we have
        log.info("%s: no training-mode trace (%s: %s)", type(model).__name__, type(exc).__name__, exc)
        return graph, extra
    if len(untraced_parameters(model, again)) < len(missing):
        log.info("%s: parameters used only in training mode (%s) are traced by a training-mode call",
                 type(model).__name__, sorted(set(missing) - set(untraced_parameters(model, again))))
        return again, [*extra, train]
    return graph, extra


def trace_snapshot(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], options: BuildOptions,
                   name: str) -> Snapshot:
    """Trace ``model`` on the example call (and the extra and automatic calls), infer its label
    groups; no probe."""
    t0 = time.perf_counter()
    leaves = list(options.leaf_modules)
    extra: list[Call] = [(c.args, dict(c.kwargs), c.modes(model)) for c in options.extra_calls]
    padded = padded_mask_call(model, args, kwargs) if options.auto_calls else None
    graph = None
    if padded is not None:
        try:  # one trace with the padded call; without it only if the model refuses such a mask
            graph = record(model, args, kwargs, leaves, extra=[*extra, padded])
            extra = [*extra, padded]
        except Exception as exc:
            log.info("%s: no padded-mask call (%s: %s)", type(model).__name__, type(exc).__name__, exc)
    if graph is None:
        graph = record(model, args, kwargs, leaves, extra=list(extra))
    if options.auto_calls and untraced_parameters(model, graph):
        graph, extra = _with_train_call(model, graph, args, kwargs, extra, leaves)
    t1 = time.perf_counter()
    res = infer(graph, soft_tracing=options.soft_tracing, keep_io=options.keep_io_shapes)
    apply_module_constraints(model, graph, res)
    tie_shared_sizes(model, graph, res)
    groups = build_groups(graph, res.spaces)
    log.info("traced %s: %d nodes in %.3fs, labels inferred in %.3fs", type(model).__name__,
             len(graph.nodes), t1 - t0, time.perf_counter() - t1)
    out_shapes = [graph.values[v].shape for v in graph.outputs]
    modes = {path: m.training for path, m in model.named_modules()}
    return Snapshot(name, graph, res.spaces, groups, res.issues, (args, kwargs), out_shapes, modes=modes,
                    extra=extra)
