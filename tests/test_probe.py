"""Sizes that live in Python, not in ops: the build-time probe and the rewrite's verification."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_ir import PruningIR, RewriteError, verify_pruning


class InputSizedHeads(nn.Module):
    """Attention whose head width is read off the *input* (``x.shape[-1] // num_heads``) but
    applied to the q projection's output: the hidden width (10) and the q width (12) are
    separate channel spaces to the ops, yet Python ties them. (BLIP-style code.)"""

    num_heads = 2

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.q = nn.Linear(12, 12)
        self.out = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        b, t, c = h.shape
        q = self.q(h).view(b, t, self.num_heads, c // self.num_heads)  # c read from h, not from q
        return self.out(q.flatten(2))


def test_probe_marks_python_tied_groups_unprunable_with_the_reason() -> None:
    torch.manual_seed(0)
    model = InputSizedHeads().eval()
    x = (torch.randn(2, 3, 6),)
    ir = PruningIR(model, example_inputs=x)
    hidden = next(g for g in ir.label_groups() if ("inp.weight", 0) in g.members)
    assert not hidden.prunable
    assert hidden.reason.startswith("pruning it breaks the model's Python code")
    for g in ir.prunable_label_groups():  # what stays prunable prunes correctly
        assert verify_pruning(ir, ir.labels(g)[:1]).exact


def test_without_probe_the_rewrite_refuses_a_model_it_cannot_verify() -> None:
    torch.manual_seed(0)
    model = InputSizedHeads().eval()
    x = (torch.randn(2, 3, 6),)
    ir = PruningIR(model, example_inputs=x, probe=False)
    hidden = next(g for g in ir.prunable_label_groups() if ("inp.weight", 0) in g.members)
    with pytest.raises(RewriteError, match=r"the slim InputSizedHeads (does not run|runs, but)"):
        ir.prune(labels=ir.labels(hidden)[:1])
