"""Plots (matplotlib, an optional extra: ``pip install -e ".[plots]"``), each written as a PNG file.

* :func:`plot_widths`: kept output channels per layer, before and after pruning;
* :func:`plot_costs`: MACs and parameters per block (a module path up to its first number,
  ``model.layers.3``; else the top-level submodule), before and after;
* :func:`plot_search`: a knapsack search's rounds, cost against kept score (``selector.history``);
* :func:`plot_sensitivity`: the curves of a sensitivity analysis (``runner.ana``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cost import MacsModel, ParamsModel
from .errors import InvalidInputError
from .ir import PruningIR
from .layers import layer_table

__all__ = ["plot_costs", "plot_search", "plot_sensitivity", "plot_widths"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InvalidInputError("plots need matplotlib: pip install matplotlib (or the [plots] extra)") from exc
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def plot_widths(before: PruningIR, after: PruningIR, path: str | Path) -> Path:
    """Bars of each layer's output width in ``before`` (the IR that was pruned) and ``after``
    (what ``prune`` returned); layers in module order."""
    plt = _pyplot()
    old = {r.module: r.out_width for r in layer_table(before) if r.out_width is not None}
    new = {r.module: r.out_width for r in layer_table(after) if r.out_width is not None}
    names = [m for m in old if m in new]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(names) + 2), 4))
    xs = range(len(names))
    ax.bar(xs, [old[m] for m in names], color="#c8c8c8", label="before")
    ax.bar(xs, [new[m] for m in names], color="#3b6ea5", label="after")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(f"{type(before.model).__name__}: kept channels per layer")
    ax.legend()
    return _save(fig, path)


def _stage(tag: str) -> str:
    """A module path cut after its first numbered part (``model.layers.3``, ``layer1.0``: a block),
    else its top-level submodule."""
    if not tag:
        return "<root>"
    parts = tag.split(".")
    for i, p in enumerate(parts[:4]):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def plot_costs(before: PruningIR, after: PruningIR, path: str | Path) -> Path:
    """MACs and parameters per block (see the module docstring) a node or parameter is in, before
    and after pruning, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, model_cls, label in ((axes[0], MacsModel, "MACs"), (axes[1], ParamsModel, "parameters")):
        per: list[dict[str, int]] = []
        for ir in (before, after):
            out: dict[str, int] = {}
            for tag, v in model_cls(ir).breakdown().items():
                where = tag.split(" ", 2)[2] if tag.startswith("#") and tag.count(" ") >= 2 else tag
                out[_stage(where)] = out.get(_stage(where), 0) + v
            per.append(out)
        stages = [s for s in per[0] if per[0][s] or per[1].get(s)]
        xs = range(len(stages))
        ax.bar([x - 0.2 for x in xs], [per[0][s] for s in stages], 0.4, color="#c8c8c8", label="before")
        ax.bar([x + 0.2 for x in xs], [per[1].get(s, 0) for s in stages], 0.4, color="#3b6ea5", label="after")
        ax.set_xticks(list(xs), stages, rotation=45, ha="right", fontsize=7)
        ax.set_title(label)
        ax.legend()
    return _save(fig, path)


def plot_search(history: Sequence[dict[str, Any]], path: str | Path, target: float | None = None) -> Path:
    """A knapsack search's rounds (``KnapsackLabelSelector.history``): measured cost against
    kept score, numbered in order, feasible rounds filled; ``target`` drawn as a line."""
    if not history:
        raise InvalidInputError("plot_search needs a search history: run KnapsackLabelSelector(...).select(ir) first "
                                "and pass selector.history.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    cost = [float(h["latency"]) for h in history]
    score = [float(h["kept_score"]) for h in history]
    feasible = [bool(h.get("feasible")) for h in history]
    ax.plot(cost, score, color="#999999", linewidth=0.8, zorder=1)
    ax.scatter(cost, score, c=["#3b6ea5" if f else "white" for f in feasible], edgecolors="#3b6ea5", zorder=2)
    for i, (c, s) in enumerate(zip(cost, score, strict=True)):
        ax.annotate(str(i), (c, s), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if target is not None:
        ax.axvline(target, color="#c0392b", linestyle="--", linewidth=1, label="target")
        ax.legend()
    ax.set_xlabel("cost (the selector's function)")
    ax.set_ylabel("kept score")
    ax.set_title("knapsack search: rounds")
    return _save(fig, path)


def plot_sensitivity(sensitivity: dict[str, Any], path: str | Path, *, top: int = 12) -> Path:
    """Sensitivity curves of an analysis (what ``runner.ana`` returns): the score against the
    fraction of each group's labels removed, for the ``top`` groups whose score falls most at
    their largest analysed ratio (the baseline drawn as a line)."""
    groups = sensitivity.get("groups") if isinstance(sensitivity, dict) else None
    if not groups:
        raise InvalidInputError("plot_sensitivity needs the result of runner.ana(...) (a dict with 'groups').")
    plt = _pyplot()
    base = float(sensitivity["baseline"])

    def curve(entry: dict[str, Any]) -> tuple[list[float], list[float]]:
        pts = sorted((int(n), float(s)) for n, s in entry["scores"].items())
        return [0.0] + [n / entry["size"] for n, _ in pts], [base] + [s for _, s in pts]

    worst = sorted(groups.items(), key=lambda kv: curve(kv[1])[1][-1])[:top]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for gid, entry in worst:
        xs, ys = curve(entry)
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=f"g{gid} ({entry['describe'][:30]})")
    ax.axhline(base, color="#999999", linestyle="--", linewidth=0.8)
    ax.set_xlabel("fraction of the group's labels removed")
    ax.set_ylabel("eval_fn")
    ax.set_title("sensitivity analysis")
    ax.legend(fontsize=6, loc="lower left")
    return _save(fig, path)
