"""A per-layer view of an IR: each module with parameters, its widths, its label groups, whether
they prune (or why not) and its share of the model's MACs and parameters.

Built from :meth:`PruningIR.to_networkx` (which group each parameter axis lies in) and the cost
models (MACs per node, attributed to the innermost module that ran it).

>>> import torch
>>> from torch import nn
>>> from pruning_ir import PruningIR
>>> from pruning_ir.layers import format_layers, layer_table
>>> ir = PruningIR(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), example_inputs=(torch.randn(2, 4),))
>>> [(r.module, r.out_width, r.out_group) for r in layer_table(ir)]
[('0', 8, 'g2:8 prunable'), ('2', 2, 'model output (kept)')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cost import MacsModel, ParamsModel
from .ir import PruningIR

__all__ = ["LayerRow", "format_layers", "layer_table"]


@dataclass(frozen=True)
class LayerRow:
    """One module holding parameters. Widths are its weight's output and input axes (for
    embeddings: the embedding width; ``None`` where the weight has no such axis); ``out_group``
    / ``in_group`` say which label group slices that axis and whether it prunes (or why not);
    ``kernel_groups`` lists groups on other axes (a conv's kernel axes are never prunable)."""

    module: str
    type: str
    shapes: dict[str, tuple[int, ...]]
    out_width: int | None
    in_width: int | None
    out_group: str
    in_group: str
    kernel_groups: str
    macs_share: float
    params_share: float


_IO = {"Embedding": (1, None), "EmbeddingBag": (1, None)}
"""Which weight axes are a module type's output and input widths, where not (0, 1)."""
_TRANSPOSED = ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Conv1D")


def _axes(type_name: str) -> tuple[int | None, int | None]:
    if type_name in _IO:
        return _IO[type_name]
    if type_name in _TRANSPOSED:
        return 1, 0
    return 0, 1


def _group_text(graph: Any, gid: int) -> str:
    data = graph.nodes[("group", gid)]
    if data["prunable"]:
        return f"g{gid}:{data['size']} prunable" + (f" (step {data['step']})" if data["step"] > 1 else "")
    reason = str(data["reason"])
    if reason.startswith("model input") or reason.startswith("model output"):
        return reason.split(":")[0].split("(")[0].strip() + " (kept)"
    return f"g{gid}:{data['size']} fixed: {reason[:80]}"


def _macs_by_module(ir: PruningIR, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for tag, value in MacsModel(ir, name).breakdown().items():
        parts = tag.split(" ", 2)  # "#nid op module"
        module = parts[2] if len(parts) == 3 else ""
        out[module] = out.get(module, 0) + value
    return out


def layer_table(ir: PruningIR, name: str = "main", *, kernel_axes: bool = False) -> list[LayerRow]:
    """One :class:`LayerRow` per module holding parameters, in module order. ``kernel_axes``:
    also list groups on axes other than the output and input widths."""
    graph = ir.to_networkx(name)
    macs = _macs_by_module(ir, name)
    total_macs = max(1, sum(macs.values()))
    total_params = max(1, ParamsModel(ir, name).params())
    rows = []
    for path, mod in ir.model.named_modules():
        node = ("module", path)
        params = [p for p in graph.neighbors(node) if p[0] == "param"]
        own = [p for p in params if p[1].rsplit(".", 1)[0] == path or (not path and "." not in p[1])]
        if not own:
            continue
        shapes = {p[1].rsplit(".", 1)[-1]: graph.nodes[p]["shape"] for p in own}
        weight = ("param", f"{path}.weight" if path else "weight")
        out_ax, in_ax = _axes(type(mod).__name__)
        by_axis: dict[int, list[int]] = {}
        if weight in graph:
            for grp in graph.neighbors(weight):
                if grp[0] == "group":
                    for ax in graph.edges[weight, grp]["axes"]:
                        by_axis.setdefault(ax, []).append(grp[1])
        wshape = graph.nodes[weight]["shape"] if weight in graph else ()

        def text(ax: int | None, shape: tuple[int, ...] = wshape, axes: dict[int, list[int]] = by_axis) -> str:
            if ax is None or ax >= len(shape):
                return "-"
            return ", ".join(_group_text(graph, g) for g in axes.get(ax, [])) or "not traced"

        def width(ax: int | None, shape: tuple[int, ...] = wshape) -> int | None:
            return shape[ax] if ax is not None and ax < len(shape) else None

        others = sorted({g for ax, gs in by_axis.items() if ax not in (out_ax, in_ax) for g in gs})
        kernel = ", ".join(_group_text(graph, g) for g in others) if kernel_axes else ""
        n_params = sum(int(_numel(s)) for s in shapes.values())
        rows.append(LayerRow(path or "<root>", type(mod).__name__, shapes, width(out_ax), width(in_ax),
                             text(out_ax), text(in_ax), kernel, macs.get(path, 0) / total_macs,
                             n_params / total_params))
    return rows


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def format_layers(rows: list[LayerRow], *, markdown: bool = False) -> str:
    """The rows as an aligned text table (or a Markdown table)."""
    head = ["module", "type", "out", "in", "out group", "in group", "MACs %", "params %"]
    kernel = any(r.kernel_groups for r in rows)
    if kernel:
        head.insert(6, "other axes")
    body = []
    for r in rows:
        cells = [r.module, r.type, "-" if r.out_width is None else str(r.out_width),
                 "-" if r.in_width is None else str(r.in_width), r.out_group, r.in_group,
                 f"{100 * r.macs_share:.1f}", f"{100 * r.params_share:.1f}"]
        if kernel:
            cells.insert(6, r.kernel_groups or "-")
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*cells) for cells in body)])
