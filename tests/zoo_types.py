"""Shared types for the test model zoos (``tests/hf_zoo.py``, ``tests/torch_zoo.py``).

A :class:`ZooCase` bundles a ready-to-run model with example inputs and a function that
extracts the "main" output tensor, so tests and benchmarks can treat HuggingFace models
(which return ``ModelOutput`` objects) and plain PyTorch models uniformly::

    case = factory()
    out = case.model(*case.example_inputs, **case.example_kwargs)
    y = case.output_to_tensor(out)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "ZooCase",
    "identity_output",
    "perturb_constant_tensors",
    "self_check",
]


def perturb_constant_tensors(
    model: torch.nn.Module, seed: int = 0, scale: float = 0.1
) -> torch.nn.Module:
    """Break the symmetry of freshly initialised models, in place; returns ``model``.

    Default inits leave many tensors constant (norm weights = 1, biases = 0, layer
    scale = const, BatchNorm running stats = 0 / 1). Slicing such a tensor with the
    wrong channel indices gives the *same* result, so pruning bugs stay invisible.
    This adds seeded noise ``N(0, scale)`` to every constant floating-point parameter
    with more than one element and gives BatchNorm layers random running statistics
    (mean ``N(0, scale)``, var ``U(0.5, 1.5)``). Meta tensors are left alone.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():  # deduplicates tied parameters
            if param.is_meta or not param.is_floating_point() or param.numel() < 2:
                continue
            if bool((param == param.flatten()[0]).all()):
                noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
                param.add_(noise.to(param.device) * scale)
        for mod in model.modules():
            if not isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                continue
            mean, var = mod.running_mean, mod.running_var
            if mean is None or var is None or mean.is_meta:
                continue
            mean.copy_(torch.randn(mean.shape, generator=gen, dtype=mean.dtype) * scale)
            var.copy_(torch.rand(var.shape, generator=gen, dtype=var.dtype) + 0.5)
    return model


def identity_output(out: Any) -> torch.Tensor:
    """Output picker for models that already return a single tensor."""
    return out


@dataclass(frozen=True)
class ZooCase:
    """A model plus everything needed to call it once.

    Attributes:
        name: Short identifier, e.g. ``"bert"``.
        model: The model in ``eval()`` mode (built after ``torch.manual_seed(0)``).
        example_inputs: Positional arguments for ``model(...)``.
        example_kwargs: Keyword arguments for ``model(...)`` (may be empty).
        output_to_tensor: Picks the main output tensor from whatever ``model`` returns.
    """

    name: str
    model: torch.nn.Module
    example_inputs: tuple[Any, ...]
    example_kwargs: dict[str, Any] = field(default_factory=dict)
    output_to_tensor: Callable[[Any], torch.Tensor] = identity_output

    def run(self) -> torch.Tensor:
        """Run the model on the example inputs (no grad); return the main output."""
        with torch.no_grad():
            return self.output_to_tensor(
                self.model(*self.example_inputs, **self.example_kwargs)
            )


def self_check(cases: dict[str, Callable[[], ZooCase]], repeats: int = 3) -> list[str]:
    """Build and run every case; print a table; return the names of failed cases.

    Columns: output shape, parameter count, build time, first forward time and the
    best of ``repeats`` further forwards (all in seconds, under ``torch.no_grad``).
    """
    failed: list[str] = []
    cols = ("build s", "fwd1 s", "fwd s")
    print(
        f"{'name':<18} {'output shape':<24} {'params':>14} "
        + " ".join(f"{c:>8}" for c in cols)
    )
    for name, factory in cases.items():
        try:
            t0 = time.perf_counter()
            case = factory()
            t1 = time.perf_counter()
            out = case.run()
            t2 = time.perf_counter()
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                case.run()
                best = min(best, time.perf_counter() - t)
            assert case.name == name, (case.name, name)
            assert not case.model.training, f"{name} is not in eval mode"
            if not out.is_meta:
                assert torch.isfinite(out).all(), f"{name} produced non-finite output"
            n_params = sum(p.numel() for p in case.model.parameters())
            print(
                f"{name:<18} {tuple(out.shape)!s:<24} {n_params:>14,} "
                f"{t1 - t0:>8.3f} {t2 - t1:>8.3f} {best:>8.3f}"
            )
        except Exception as exc:
            failed.append(name)
            print(f"{name:<18} FAILED: {type(exc).__name__}: {exc}")
    return failed
