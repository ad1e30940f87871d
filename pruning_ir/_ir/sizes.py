"""Which attributes of a module (and fields of a config) look like channel sizes: read by the
IR's size ties (``ties.py``), the attribute rewrite and the HF config update alike."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

SIZE_NAME = re.compile(r"(head|dim|size|hidden|channel|feature|group|width|embed|inner|split|^n_|num_|heads|nf$|nx$)",
                        re.I)
NOT_SIZE = re.compile(r"(idx|index|layer|_id$|position|vocab|max_|min_|seed|eps|stride|pad|kernel|dilation)", re.I)


def size_like(name: str) -> bool:
    """Whether an attribute or config field named ``name`` looks like a size (``num_heads``,
    ``head_dim``; not ``layer_idx``, ``max_position_embeddings`` or a private name)."""
    return not name.startswith("_") and bool(SIZE_NAME.search(name)) and not NOT_SIZE.search(name)


def attribute_values(mod: nn.Module) -> dict[str, Any]:
    """Instance attributes and plain class attributes (ints, lists of ints) of a module."""
    out: dict[str, Any] = {}
    for cls in reversed(type(mod).__mro__):
        if cls in (nn.Module, object) or issubclass(nn.Module, cls):
            continue
        for k, v in vars(cls).items():
            if type(v) is int or (isinstance(v, (list, tuple)) and v and all(type(x) is int for x in v)):
                out[k] = v
    out.update({k: v for k, v in vars(mod).items() if not k.startswith("_")})
    return out


def size_attributes(mod: nn.Module) -> dict[str, int]:
    """Integer attributes of ``mod`` whose names look like sizes (``num_heads``, ``head_dim``)."""
    return {k: v for k, v in attribute_values(mod).items()
            if type(v) is int and size_like(k)}
