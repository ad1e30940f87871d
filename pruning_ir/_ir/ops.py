"""The op vocabulary: which ATen ops share a property that passes other than their channel rule
need (a view chain, a shape-only check, a value-dependent size).

Every set is built from the few named families below, so that an op is spelled once and a
property is the union of the families it covers. Channel rules and cost formulas stay with
their op family in :mod:`pruning_ir._rules`; this module is the part of op knowledge that the
graph itself, verification and the probe read, below the rules.
"""

from __future__ import annotations

from typing import Any

import torch

from .graph import Node, ValueRef


def op_packet(name: str) -> Any:
    """The op packet ``torch.ops.<ns>.<op>`` of a recorded op name ``"<ns>.<op>"`` (the inverse
    of the recorder's ``op_name``); ``AttributeError`` (or ``RuntimeError``) where this build has
    no such op."""
    ns, _, op = name.partition(".")
    return getattr(getattr(torch.ops, ns), op)

RESHAPES = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten._reshape_alias"})
"""Row-major reinterpretations of a tensor's shape (a view or a copy, depending on strides)."""
SQUEEZES = frozenset({"aten.unsqueeze", "aten.squeeze"})
PERMUTES = frozenset({"aten.t", "aten.transpose", "aten.permute"})
ALIASES = frozenset({"aten.alias", "aten.detach"})
"""The same tensor under another name."""
COPIES = frozenset({"aten.clone", "aten.contiguous", "aten._to_copy", "aten.lift_fresh_copy"}) | ALIASES
"""The same values, the same shape."""
SPLITS = frozenset({"aten.split", "aten.split_with_sizes", "aten.unsafe_split", "aten.unsafe_split_with_sizes",
                    "aten.chunk"})
SLICES = frozenset({"aten.slice", "aten.narrow", "aten.select"})
EXPANDS = frozenset({"aten.expand"})
FLATTENS = frozenset({"aten.flatten", "aten.unflatten"})

REARRANGING = RESHAPES | SQUEEZES | PERMUTES | ALIASES
"""Views that keep every entry once and drop none (not slices): a write through them is a
write into the base."""
ORDER_KEEPING = RESHAPES | SQUEEZES | EXPANDS | FLATTENS | ALIASES | {"aten.clone", "aten.contiguous"}
"""Ops that never reorder or drop elements: a chain of them whose first input and last output
have one shape is the identity (views of row-major data, and only size-1 expansions keep the
element count), so code may skip the whole chain when sizes make it trivial."""
WEIGHT_VIEWS = PERMUTES | RESHAPES | EXPANDS | SQUEEZES | SPLITS | SLICES - {"aten.select"} \
    | {"aten.clone", "aten._to_copy", "aten.alias", "aten.contiguous"}
"""Ops through which a parameter is still "a weight" to the channel rules."""
SHAPE_ONLY = RESHAPES | SLICES | EXPANDS | SQUEEZES | PERMUTES | {"aten.as_strided"}
"""Ops whose output shape is all verification compares of them when their sizes follow values."""

SDPA = frozenset({"aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu",
                  "aten._scaled_dot_product_flash_attention", "aten._scaled_dot_product_efficient_attention",
                  "aten._scaled_dot_product_cudnn_attention", "aten._scaled_dot_product_attention_math",
                  "aten._scaled_dot_product_fused_attention_overrideable"})
"""Every ATen form of scaled dot-product attention (the composite and each backend's kernel)."""
BACKWARD_ALIGNED = frozenset({"aten._grouped_mm", "aten._scaled_grouped_mm", "aten._scaled_mm"})
"""Kernels whose backward needs 16-byte strides along axes forward reads contiguously."""

RANDOM = frozenset({"aten.rand", "aten.randn", "aten.rand_like", "aten.randn_like", "aten.randint", "aten.randperm",
                    "aten.bernoulli", "aten.bernoulli_", "aten.normal", "aten.normal_", "aten.uniform_",
                    "aten.exponential_", "aten.multinomial", "aten.native_dropout", "aten.randint_like"})
DATA_DEPENDENT = frozenset({"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2",
                            "aten.unique_dim", "aten.unique_consecutive", "aten.nonzero_static"})
"""Ops whose results (a Python number, or an output size) depend on tensor values."""


def value_sized(node: Node) -> bool:
    """Whether ``node``'s result (a Python number, or its output's size) follows tensor values:
    :data:`DATA_DEPENDENT` ops, and ``repeat_interleave`` by a tensor of counts."""
    return node.op in DATA_DEPENDENT or (node.op == "aten.repeat_interleave"
                                         and isinstance(node.kwargs.get("repeats"), ValueRef))
