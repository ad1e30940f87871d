"""Example calls: what a model is traced and verified on besides ``example_inputs``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import InvalidInputError


@dataclass(frozen=True)
class ExampleCall:
    """One more call to trace, as ``model(*args, **kwargs)``.

    The IR covers the union of every call's couplings, and every prune is verified on each of
    them. Give one per path the example call does not take: the other branch of an ``if`` on the
    data, a padded ``attention_mask``, training mode (``train=True``: every module in training
    mode during the call; ``False``: every module in eval mode; ``None``: modules as they are).

    Example:
        >>> import torch
        >>> from pruning_ir import ExampleCall
        >>> ExampleCall((torch.zeros(2, 4),), train=True).train
        True
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    train: bool | None = None

    def modes(self, model: nn.Module) -> dict[str, bool]:
        """Module path -> training flag during this call."""
        if self.train is None:
            return {p: m.training for p, m in model.named_modules()}
        return {p: bool(self.train) for p, _ in model.named_modules()}


def as_example_call(obj: Any) -> ExampleCall:
    """An :class:`ExampleCall` from one, a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    import torch

    if isinstance(obj, ExampleCall):
        return obj
    if isinstance(obj, torch.Tensor):
        return ExampleCall((obj,))
    if isinstance(obj, dict):
        return ExampleCall((), dict(obj))
    if isinstance(obj, (list, tuple)):
        return ExampleCall(tuple(obj))
    raise InvalidInputError(
        f"extra_calls entries are ExampleCall(args, kwargs, train=...), a tensor, a tuple of positional inputs "
        f"or a dict of keyword inputs, not {type(obj).__name__}."
    )
