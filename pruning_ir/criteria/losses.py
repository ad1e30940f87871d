"""Calibration losses that keep a loss-aware criterion informative on a converged model.

On a model that fits its calibration data (training loss near zero) the gradient of the task
loss vanishes on every confidently right example, so the empirical Fisher that
:class:`~pruning_ir.LossAwareCriterion` accumulates is carried by a handful of examples: it still
ranks labels one at a time well, but it ranks the removal of *many* labels badly (measured in
``benchmarks/criteria_diagnosis.py``: masking half of a layer by its order costs more than
masking by weight magnitude). These losses make the same criterion measure how much removing
labels changes the model's *predictions*, whatever the labels say:

* :func:`fisher_loss`: cross-entropy against classes *sampled* from the model's own tempered
  predictions ``softmax(z / T)``. Its squared gradient is, in expectation, the model's Fisher
  information at temperature ``T`` (the curvature of ``KL(p_T(original) || p_T(pruned))``), which
  does not vanish on confident examples for ``T > 1``. No labels needed.
* :func:`output_energy_loss`: a random projection ``sum(output * r)``, ``r ~ N(0, I)``; its squared
  gradient is, in expectation, the squared change of the output ``||J delta||^2`` (the Fisher of a
  unit Gaussian on the output): for embeddings, regressions, or any output without classes.

Both sum over the batch (examples' sampled terms are independent, so the squares of batch sums
are unbiased sums of per-example terms). Use them in the calibration loop in place of your loss::

    with LossAwareCriterion(ir) as collect:
        for x, _ in loader:
            fisher_loss(collect(x)).backward()
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError


def _tensor_output(output: Any, what: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("logits", "last_hidden_state"):
        t = getattr(output, attr, None)
        if isinstance(t, torch.Tensor):
            return t
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise InvalidInputError(f"{what}: cannot find a tensor in a {type(output).__name__} output; pass the tensor "
                            "(e.g. out.logits).")


def fisher_loss(output: Any, *, temperature: float = 4.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``output / temperature`` (logits, classes on the last dim; a tensor
    or an object with ``.logits``) against classes sampled from its own detached softmax."""
    if not temperature > 0:
        raise InvalidInputError(f"fisher_loss(temperature={temperature!r}): give a positive temperature.")
    z = _tensor_output(output, "fisher_loss")
    if z.dim() == 0 or z.shape[-1] < 2:
        raise InvalidInputError("fisher_loss: expected logits with classes on the last dim, got shape "
                                f"{tuple(z.shape)}.")
    flat = z.reshape(-1, z.shape[-1]).float() / temperature
    probs = torch.softmax(flat.detach(), -1)
    if generator is not None and generator.device != probs.device:
        raise InvalidInputError(f"fisher_loss: the generator is on {generator.device}, the output on {probs.device}.")
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return F.cross_entropy(flat, sampled, reduction="sum")


def output_energy_loss(output: Any, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``sum(output * r)`` with ``r`` standard normal (a tensor, or an object with ``.logits`` /
    ``.last_hidden_state``)."""
    z = _tensor_output(output, "output_energy_loss")
    r = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float32)
    return (z.float() * r).sum()
