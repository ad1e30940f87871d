"""verify_pruning on models that do not run in float64 (forward fixes dtypes): differences are judged
against the masked original's own rounding noise. Oracles: a correct prune of an ill-conditioned
model is exact only through that noise floor (its raw float32 difference is above the fixed
tolerance), and deliberately wrong slim models are still caught, ill-conditioned or not."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from pruning_ir import PruningIR, verify_pruning
from pruning_ir.oracle import NOISE_CAP, NOISE_FACTOR, masked_model


class Amplifier(nn.Module):
    """``forward`` casts to float32 (so float64 comparison is impossible) and divides by a difference
    of nearly equal numbers: rounding in the hidden layer's sums (which pruning reorders) is
    amplified ten-thousandfold in the output and more in its gradient."""

    def __init__(self, amplify: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 1)
        self.amplify = amplify
        self.register_buffer("anchor", torch.zeros(4, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc2(torch.relu(self.fc1(x.float())))
        if not self.amplify:
            return y
        return 1.0 / (self.anchor.float() - y)


X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))


def _selection(ir: PruningIR) -> list[Any]:
    """A third of the hidden channels; the anchor set 1e-4 away from the masked model's ``fc2``
    output, so that the amplified output is about 1e4."""
    (g,) = ir.prunable_label_groups()
    labels = ir.labels(g)[::3]
    masked = masked_model(ir, labels)
    with torch.no_grad():
        ir.model.anchor.copy_(masked.fc2(torch.relu(masked.fc1(X))) + 1e-4)
    return labels


def test_an_ill_conditioned_model_is_exact_within_its_own_noise() -> None:
    model = Amplifier(amplify=True).eval()
    ir = PruningIR(model, example_inputs=(X,))
    rep = verify_pruning(ir, _selection(ir), train=False, other_batch_size=False)
    (c,) = rep.checks
    raw_ok = c.max_abs_diff <= 1e-4 * max(1.0, c.max_reference) and c.max_grad_diff is not None and \
        c.max_grad_diff <= 1e-4 * max(1.0, c.max_grad_reference)
    assert not raw_ok, c  # the fixed tolerance alone would call the correct prune wrong
    assert rep.exact and rep.precision == "as the model, within its own rounding noise" and c.grad_noise > 0, c
    assert c.grad_noise <= NOISE_CAP * c.max_grad_reference


def test_noise_as_large_as_the_outputs_verifies_nothing() -> None:
    """At a pole (the anchor 1e-6 away) rounding-sized changes move the output by tens of percent:
    the check is not exact, whatever the slim model does."""
    model = Amplifier(amplify=True).eval()
    ir = PruningIR(model, example_inputs=(X,))
    labels = _selection(ir)
    with torch.no_grad():
        model.anchor.sub_(1e-4 - 1e-6)
    (c,) = verify_pruning(ir, labels, train=False, other_batch_size=False).checks
    assert c.noise > NOISE_CAP * c.max_reference and not c.exact, c


@pytest.mark.parametrize("amplify", [False, True])
def test_a_wrong_slim_model_is_caught_through_the_noise_floor(amplify: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slim model whose kept weights moved by 1 % (a defect far smaller than a wrong channel) is not
    exact, in a well-conditioned and in an ill-conditioned float32-only model."""
    model = Amplifier(amplify).eval()
    ir = PruningIR(model, example_inputs=(X,))
    real_prune = PruningIR.prune

    def broken(self: PruningIR, *args: Any, **kwargs: Any) -> Any:
        out = real_prune(self, *args, **kwargs)
        with torch.no_grad():
            out.model.fc2.weight.mul_(1.01)
        return out

    monkeypatch.setattr(PruningIR, "prune", broken)
    rep = verify_pruning(ir, _selection(ir), train=False, other_batch_size=False)
    (c,) = rep.checks
    assert not rep.exact, c
    assert c.max_grad_diff is not None and c.max_grad_diff > NOISE_FACTOR * c.grad_noise, c
