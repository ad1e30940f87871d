"""Update module attributes after slicing so the user's own classes keep working.

Two mechanisms:

1. Known module types (``nn.Linear``, convolutions, norms, ``nn.Embedding``,
   HF ``Conv1D``) read their new sizes off their sliced weights and the facts
   recorded for their own ops (``groups``, ``normalized_shape``).
2. Any other module: the trace recorded, for every integer argument that
   depends on channel sizes (``view`` shapes, ``expand`` sizes, split sizes), its
   old and new value (a *fact*). An integer attribute of the module that ran the
   op whose name looks like a size (``num_heads``, ``head_dim``, ``hidden_size``,
   ...) and whose value equals the old value is set to the new one when all facts
   agree. The rewrite is then verified by a forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._ir.axes import kept_size
from .._ir.sizes import attribute_values, size_like
from .._ir.snapshot import Snapshot
from ..modules import PrunedMultiheadAttention


def fact_changes(snap: Snapshot, kept: dict[int, torch.Tensor]) -> dict[str, list[tuple[str, int, int]]]:
    """Module path -> [(op, old, new)] for every size fact of the ops it ran itself."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for node in snap.graph.nodes:
        for f in node.facts:
            if snap.spaces.any_positional(f.layout):
                continue  # sizes mixing batch/sequence/spatial axes come from run-time shapes
            new = kept_size(snap.spaces, f.layout, kept)
            out.setdefault(node.module, []).append((node.op, f.old, new))
    return out


def list_changes(snap: Snapshot, kept: dict[int, torch.Tensor]) -> dict[str, list[tuple[list[int], list[int]]]]:
    """Module path -> [(old list, new list)] for list arguments (split sizes, view shapes)."""
    out: dict[str, list[tuple[list[int], list[int]]]] = {}
    for node in snap.graph.nodes:
        by_arg: dict[str, list[tuple[int, int]]] = {}
        for f in node.facts:
            if len(f.path) == 2:
                by_arg.setdefault(f.path[0], []).append((f.path[1], kept_size(snap.spaces, f.layout, kept)))
        for arg, items in by_arg.items():
            old = list(node.kwargs[arg])
            new = list(old)
            for i, v in items:
                new[i] = v
            if new != old:
                out.setdefault(node.module, []).append((old, new))
    return out


def _conv_groups(changes: list[tuple[str, int, int]], old: int) -> int:
    for op, o, n in changes:
        if op in ("aten.convolution", "aten._convolution") and o == old:
            return n
    return old


def update_known(mod: nn.Module, changes: list[tuple[str, int, int]], log: list[str], path: str) -> set[str]:
    """Update the attributes of well-known module types; returns attribute names handled."""
    def setattr_(name: str, value: Any) -> None:
        old = getattr(mod, name)
        if old != value:
            setattr(mod, name, value)
            log.append(f"{path or '<root>'}.{name}: {old} -> {value}")

    if isinstance(mod, nn.Linear):
        setattr_("out_features", mod.weight.shape[0])
        setattr_("in_features", mod.weight.shape[1])
        return {"in_features", "out_features"}
    if isinstance(mod, nn.modules.conv._ConvNd):
        g = _conv_groups(changes, mod.groups)
        setattr_("groups", g)
        if mod.transposed:
            setattr_("in_channels", mod.weight.shape[0])
            setattr_("out_channels", mod.weight.shape[1] * g)
        else:
            setattr_("out_channels", mod.weight.shape[0])
            setattr_("in_channels", mod.weight.shape[1] * g)
        return {"groups", "in_channels", "out_channels"}
    if isinstance(mod, nn.modules.batchnorm._NormBase):
        t = mod.weight if mod.weight is not None else mod.running_mean
        if t is not None:
            setattr_("num_features", t.shape[0])
        return {"num_features"}
    if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
        ns = list(mod.normalized_shape)
        if mod.weight is not None:
            ns = list(mod.weight.shape)
        else:
            olds = {o: n for op, o, n in changes if op in ("aten.native_layer_norm", "aten.rms_norm",
                                                            "aten._fused_rms_norm")}
            ns = [olds.get(s, s) for s in ns]
        setattr_("normalized_shape", tuple(ns))
        return {"normalized_shape"}
    if isinstance(mod, nn.GroupNorm):
        for op, o, n in changes:
            if op == "aten.native_group_norm" and o == mod.num_groups:
                setattr_("num_groups", n)
        if mod.weight is not None:
            setattr_("num_channels", mod.weight.shape[0])
        return {"num_groups", "num_channels"}
    if isinstance(mod, nn.MultiheadAttention):
        return _update_mha(mod, changes, setattr_, path)
    if isinstance(mod, nn.Embedding):
        setattr_("num_embeddings", mod.weight.shape[0])
        setattr_("embedding_dim", mod.weight.shape[1])
        return {"num_embeddings", "embedding_dim"}
    weight = getattr(mod, "weight", None)
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and isinstance(weight, torch.Tensor):
        setattr_("nf", weight.shape[1])  # HF GPT-2 style (in, out) weight
        if hasattr(mod, "nx"):
            setattr_("nx", weight.shape[0])
        return {"nf", "nx"}
    return set()


_MHA_ATTRS = {"embed_dim", "kdim", "vdim", "num_heads", "head_dim", "v_head_dim", "scaling", "dropout",
              "batch_first", "add_zero_attn"}


def _update_mha(mod: nn.MultiheadAttention, changes: list[tuple[str, int, int]], setattr_: Any,
                path: str) -> set[str]:
    """Sizes of an ``nn.MultiheadAttention`` traced through ``pruning_ir.modules.mha_forward``.

    That forward splits the packed projection with ``[H*d, H*d, H*dv]`` and views each
    projection as ``(B, L, H, -1)``: the split's facts give the new q/k/v widths, the
    views' facts the new head count. If anything changed, the instance becomes a
    :class:`~pruning_ir.modules.PrunedMultiheadAttention` (the stock forward requires
    every inner width to equal ``embed_dim``).
    """
    from ..modules import _sizes

    head_dim, v_head_dim, scale = _sizes(mod)
    # only changed sizes: an unchanged view size equal to the head count (a batch of 2 over 2
    # heads) said "ambiguous" and kept the old count, splitting the packed bias wrongly
    heads_new = {n for op, o, n in changes if op == "aten.view" and o == mod.num_heads and n != o}
    n_heads = heads_new.pop() if len(heads_new) == 1 else int(mod.num_heads)
    if mod.in_proj_weight is not None:
        split = [n for op, _, n in changes if op == "aten.split_with_sizes"][:3]
        widths = split if len(split) == 3 else [n_heads * head_dim] * 2 + [n_heads * v_head_dim]
        kdim = vdim = int(mod.in_proj_weight.shape[1])
    else:
        widths = [int(w.shape[0]) for w in (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight)]
        kdim, vdim = int(mod.k_proj_weight.shape[1]), int(mod.v_proj_weight.shape[1])
    embed_dim = int(mod.out_proj.weight.shape[0])
    new = {"embed_dim": embed_dim, "kdim": kdim, "vdim": vdim, "num_heads": n_heads,
           "head_dim": widths[0] // n_heads, "v_head_dim": widths[2] // n_heads}
    old = {"embed_dim": mod.embed_dim, "kdim": mod.kdim, "vdim": mod.vdim, "num_heads": mod.num_heads,
           "head_dim": head_dim, "v_head_dim": v_head_dim}
    if new == old and not isinstance(mod, PrunedMultiheadAttention):
        return _MHA_ATTRS
    if not isinstance(mod, PrunedMultiheadAttention):
        mod.__class__ = PrunedMultiheadAttention
        setattr_("_qkv_same_embed_dim", False)
        mod.__dict__["v_head_dim"] = v_head_dim
        mod.__dict__["scaling"] = scale
    for name, value in new.items():
        setattr_(name, value)
    return _MHA_ATTRS


def update_generic(mod: nn.Module, changes: list[tuple[str, int, int]], lists: list[tuple[list[int], list[int]]],
                   handled: set[str], log: list[str], unresolved: list[str], path: str,
                   undo: dict[str, list[tuple[str, Any]]] | None = None,
                   ambiguous: dict[str, list[tuple[str, int, list[int]]]] | None = None) -> None:
    """Set size-like int attributes whose old value a fact of this module changed."""
    by_old: dict[int, set[int]] = {}
    for _, o, n in changes:
        by_old.setdefault(o, set()).add(n)
    for name, value in attribute_values(mod).items():
        if name.startswith("_") or name in handled:
            continue
        if isinstance(value, (list, tuple)) and value and all(type(x) is int for x in value):
            news_l = {tuple(n) for o, n in lists if list(value) == o}
            if len(news_l) == 1:
                (nl,) = news_l
                if undo is not None:
                    undo.setdefault(path, []).append((name, value))
                setattr(mod, name, type(value)(nl))
                log.append(f"{path or '<root>'}.{name}: {list(value)} -> {list(nl)}")
            continue
        if type(value) is not int:
            continue
        if value not in by_old or not size_like(name):
            continue
        news = by_old[value]
        if len(news) == 1:
            (new,) = news
            if new != value:
                if undo is not None:
                    undo.setdefault(path, []).append((name, value))
                setattr(mod, name, new)
                log.append(f"{path or '<root>'}.{name}: {value} -> {new}")
        elif any(n != value for n in news):
            unresolved.append(f"{path or '<root>'}.{name}={value} could become any of {sorted(news)}")
            if ambiguous is not None:
                ambiguous.setdefault(path, []).append((name, value, sorted(n for n in news if n != value)))


def update_attributes(model: nn.Module, snap: Snapshot, kept: dict[int, torch.Tensor],
                      undo: dict[str, list[tuple[str, Any]]] | None = None,
                      ambiguous: dict[str, list[tuple[str, int, list[int]]]] | None = None
                      ) -> tuple[list[str], list[str], str | None]:
    """Update every module of ``model``; returns (changes made, ambiguities left, why a Hugging
    Face config could not be updated or ``None``).

    ``undo`` collects, per module path, the (attribute, old value) pairs set by matching
    values, so that a module whose guess fails verification can be restored and patched.
    ``ambiguous`` collects, per module path, the attributes left as they were because facts of
    equal old value changed differently: ``(name, old value, the other candidate values)``
    (verification tries them).
    """
    facts = fact_changes(snap, kept)
    lists = list_changes(snap, kept)
    log: list[str] = []
    unresolved: list[str] = []
    modules = list(model.named_modules())  # one walk (a generator per module level: not free)
    no_changes: list[tuple[str, int, int]] = []
    for path, mod in modules:
        changes = facts.get(path, no_changes)
        handled = update_known(mod, changes, log, path)
        if any(o != n for _, o, n in changes):
            update_generic(mod, changes, lists.get(path, []), handled, log, unresolved, path, undo, ambiguous)
    for path, mod in modules:
        # the nested-tensor fast path of nn.TransformerEncoder assumes stock attention layers
        if isinstance(mod, nn.TransformerEncoder) and getattr(mod, "use_nested_tensor", False) and any(
                isinstance(m, PrunedMultiheadAttention) for m in mod.modules()):
            mod.use_nested_tensor = False
            log.append(f"{path or '<root>'}.use_nested_tensor: True -> False (pruned attention layers)")
    from .hf_config import update_hf_config

    undescribed = update_hf_config(model, snap, kept, log)
    return log, unresolved, undescribed
