"""FLOP formulas for ``FlopCounterMode`` made from the engine's MAC formulas (one formula per op,
registered with its channel rule in ``pruning_ir/_rules/``), for the ops ``FlopCounterMode`` lacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry

from .._ir.ops import op_packet
from .._rules.base import MAC_FORMULAS, MacFormula, NotUnderstood, prod_dims


class _ShapeOperands:
    """One op call's operands as ``FlopCounterMode`` hands them to a formula (tensors as shapes),
    bound to the names of the op's schema, for the MAC formulas of ``pruning_ir/_rules/``."""

    def __init__(self, bound: dict[str, Any], out_shape: Any) -> None:
        self.bound, self.out_shape = bound, out_shape

    def dims(self, name: str) -> list[int]:
        value = self.bound.get(name)
        if not isinstance(value, torch.Size):
            raise NotUnderstood(f"{name} is not a tensor")
        return list(value)

    def out(self, i: int = 0) -> list[int]:
        shapes = [self.out_shape] if isinstance(self.out_shape, torch.Size) else list(self.out_shape or ())
        if i >= len(shapes) or not isinstance(shapes[i], torch.Size):
            raise NotUnderstood("the output is missing")
        return list(shapes[i])

    def arg(self, name: str, default: Any = None) -> Any:
        return self.bound.get(name, default)

    def is_tensor(self, name: str) -> bool:
        return isinstance(self.bound.get(name), torch.Size)


def _flop_formula(names: list[str], formula: MacFormula) -> Callable[..., int]:
    """``formula`` (MACs) as a ``FlopCounterMode`` formula: 2 FLOPs per MAC over the call's shapes."""

    def flops(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        bound = {**dict(zip(names, args, strict=False)), **kwargs}
        try:
            monos = formula(_ShapeOperands(bound, out_shape))
        except NotUnderstood:  # not counted by the cost model either
            return 0
        return 2 * sum(coef * prod_dims(dims) for coef, dims in monos)

    return flops


def _packet(name: str) -> Any:
    """The op packet ``torch.ops.<ns>.<op>`` of ``"<ns>.<op>"``, or ``None`` where this build has none."""
    try:
        return op_packet(name)
    except (AttributeError, RuntimeError):
        return None


def flop_formulas() -> dict[Any, Callable[..., int]]:
    """``FlopCounterMode(custom_mapping=...)`` entries (op packet -> FLOPs from shapes) for every op
    with a MAC formula (the engine's and those registered with
    :func:`~pruning_ir.extend.register_macs`) that ``FlopCounterMode`` lacks, so that its count
    agrees with :class:`~pruning_ir.cost.MacsModel`: the same formulas, over a run's shapes."""
    out: dict[Any, Callable[..., int]] = {}
    for name, formula in MAC_FORMULAS.items():
        packet = _packet(name)
        if packet is None or packet in flop_registry or not packet.overloads():
            continue
        overload = getattr(packet, "default" if "default" in packet.overloads() else packet.overloads()[0])
        if overload.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
            continue  # decomposes before any dispatch mode sees it
        out[packet] = _flop_formula([a.name for a in overload._schema.arguments], formula)
    return out
