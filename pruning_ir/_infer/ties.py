"""Size ties that come from one Python attribute feeding several ops.

HF attention code reshapes q, k and v with the same ``self.head_dim``; a slim
model can only run if the three keep the same within-head width. When, inside
one module, several channel layouts are recorded with the same size value and
exactly one size-like integer attribute of that module holds that value, the
layouts are unified (unless one op takes that value for two different axes: then at most one
of them can be the attribute, and nothing is tied): the same features are removed from each (ENOT's
"cooperative" q/k/v features). Several candidate attributes with that value is
ambiguous: nothing is tied and the rewrite falls back to run-time patching.
"""

from __future__ import annotations

from torch import nn

from .._ir.graph import Graph
from .._ir.sizes import size_attributes
from .._ir.snapshot import Issue
from .._ir.spaces import Layout, Misaligned
from .infer import InferResult


def tie_shared_sizes(model: nn.Module, graph: Graph, res: InferResult) -> None:
    sp = res.spaces
    modules = dict(model.named_modules())
    by_module: dict[str, dict[int, list[Layout]]] = {}
    crowded: dict[str, set[int]] = {}  # values that one op takes at two different axes
    for node in graph.nodes:
        seen: dict[int, Layout] = {}
        for f in node.facts:
            if f.kind != "size" or sp.any_positional(f.layout):
                continue
            by_module.setdefault(node.module, {}).setdefault(f.old, []).append(f.layout)
            other = seen.setdefault(f.old, f.layout)
            if other is not f.layout and sp.normalize(other) != sp.normalize(f.layout):
                crowded.setdefault(node.module, set()).add(f.old)
    for path, by_value in by_module.items():
        mod = modules.get(path)
        if mod is None or path in graph.explicit_modules:
            continue
        attrs = size_attributes(mod)
        for value, layouts in by_value.items():
            distinct = {sp.normalize(lay) for lay in layouts}
            if len(distinct) < 2 or value in crowded.get(path, ()):
                # one op sizing two different axes with this value (``expand(b, kv, n_rep, ...)``
                # with 2 kv heads repeated twice): at most one of them is the attribute
                continue
            names = [n for n, v in attrs.items() if v == value]
            if len(names) != 1:
                continue
            first, *rest = list(distinct)
            for lay in rest:
                try:
                    sp.unify(first, lay)
                except Misaligned as exc:
                    reason = f"'{path}'.{names[0]} sizes several axes that cannot be aligned: {exc}"
                    sp.mark_rigid(first, reason)
                    sp.mark_rigid(lay, reason)
                    res.issues.append(Issue("tie", path, names[0], reason))
