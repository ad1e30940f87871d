"""Readable printouts of an IR: ``print(ir)`` and ``ir.report()``."""

from __future__ import annotations

from torch import nn

from .graph import ValueRef, untraced_parameters
from .snapshot import Snapshot


def _arg(v: object) -> str:
    if isinstance(v, ValueRef):
        return f"%{v.vid}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_arg(x) for x in v) + "]"
    return repr(v)


def format_ir(snap: Snapshot, model: nn.Module, max_nodes: int = 60) -> str:
    g = snap.graph
    lines = [f"PruningIR of {type(model).__name__} (snapshot {snap.name!r}): {len(g.nodes)} nodes, "
             f"{len(snap.groups)} label groups ({len(snap.prunable_groups)} prunable, "
             f"{sum(gr.size for gr in snap.prunable_groups)} prunable labels)", "nodes:"]
    for n in g.nodes[:max_nodes]:
        outs = ", ".join(f"%{o}{list(g.values[o].shape)}" for o in n.outputs if o >= 0)
        args = ", ".join(f"{k}={_arg(v)}" for k, v in n.kwargs.items()
                         if k != "__params__" and (isinstance(v, (ValueRef, list, tuple)) or k in ("dim", "groups")))
        lines.append(f"  {outs} = {n.leaf or n.op}({args})  # {n.module or '<root>'}")
    if len(g.nodes) > max_nodes:
        lines.append(f"  ... {len(g.nodes) - max_nodes} more nodes")
    lines.append("label groups:")
    for gr in snap.groups:
        flag = "prunable" if gr.prunable else f"fixed: {gr.reason}"
        kind = " structured" if gr.structured else ""
        if gr.step > 1:
            flag += f" in multiples of {gr.step}"
        lines.append(f"  g{gr.gid}: size {gr.size}{kind}, {flag} -- {gr.describe()}")
    return "\n".join(lines)


def format_report(snap: Snapshot, model: nn.Module) -> str:
    lines = [f"{type(model).__name__}: {len(snap.prunable_groups)} of {len(snap.groups)} label groups prunable"]
    if snap.issues:
        lines.append("could not reason about:")
        for i in snap.issues:
            lines.append(f"  [{i.kind}] {i.op} in '{i.module or '<root>'}': {i.detail}")
    extra = getattr(snap.graph, "extra_calls", [])
    if extra:
        lines.append(f"traced calls: the example call and {len(extra)} more (label groups cover their union)")
    untraced = untraced_parameters(model, snap.graph)
    if untraced:
        modules = sorted({n.rsplit(".", 1)[0] if "." in n else "<root>" for n in untraced})
        lines.append(f"not used by any traced call ({len(untraced)} parameters in {', '.join(modules)}): pruning "
                     "cannot see how their channels couple and never slices them; if some input takes that path, "
                     "give it as PruningIR(..., extra_calls=[ExampleCall(...)])")
    fixed = [g for g in snap.groups if not g.prunable]
    if fixed:
        lines.append("unprunable groups:")
        for g in fixed:
            lines.append(f"  g{g.gid} (size {g.size}, {g.describe()}): {g.reason}")
    stepped = [g for g in snap.prunable_groups if g.step > 1]
    if stepped:
        lines.append("prunable only in multiples (a kernel's alignment, found by probing):")
        for g in stepped:
            lines.append(f"  g{g.gid} (size {g.size}, {g.describe()}): keeps a multiple of {g.step}")
    inexact = [g for g in snap.prunable_groups if g.notes]
    if inexact:
        lines.append("pruning not exactly equivalent to masking (normalisation/softmax over the group):")
        for g in inexact:
            lines.append(f"  g{g.gid} ({g.describe()}): {g.notes[0]}")
    return "\n".join(lines)
