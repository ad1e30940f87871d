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


class GroupedExperts(nn.Module):
    """Case: two MoE experts through ``torch._grouped_mm``, whose kernel needs 16-byte strides:
    widths must stay multiples of 4 floats. Coupling: inp out (8) with w1's K; the expert hidden
    width (12) with w1's N and w2's K; w2's N (8) with out's input."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.w1 = nn.Parameter(torch.randn(2, 8, 12) / 3)
        self.w2 = nn.Parameter(torch.randn(2, 12, 8) / 3)
        self.out = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offs = torch.tensor([4, x.shape[0]], dtype=torch.int32)  # rows 0-3 to expert 0, the rest to 1
        h = self.inp(x)
        a = torch.relu(torch._grouped_mm(h, self.w1, offs=offs))
        return self.out(torch._grouped_mm(a, self.w2, offs=offs))


def test_probe_finds_a_kernel_alignment_and_selectors_keep_to_it() -> None:
    """Removing one label breaks ``_grouped_mm`` ("strides should be multiple of 16 bytes"), and
    so does removing 2; removing 4 works: the probe makes both groups prunable in multiples of
    4 instead of unprunable. Every selector then keeps multiples of 4, ``prune`` refuses a count
    that is not one, and the slim model equals the masked original."""
    from pruning_ir import (
        BinarySearchLatencyLabelSelector,
        GlobalScoreLabelSelector,
        KnapsackLabelSelector,
        LabelError,
        MacsLatency,
        MacsModel,
        UniformLabelSelector,
    )

    torch.manual_seed(0)
    model = GroupedExperts().eval()
    x = torch.randn(10, 6)
    ir = PruningIR(model, example_inputs=(x,))
    steps = sorted((g.size, g.step) for g in ir.prunable_label_groups())
    assert steps == [(8, 4), (8, 4), (12, 4)], ir.report()
    assert "keeps a multiple of 4" in ir.report()
    g8 = next(g for g in ir.prunable_label_groups() if g.size == 8)
    with pytest.raises(LabelError, match="multiple of 4"):
        ir.prune(labels=ir.labels(g8)[:3])
    macs = MacsModel(ir)
    fn = MacsLatency((x,))
    selectors = [UniformLabelSelector(0.3), UniformLabelSelector(0.5), GlobalScoreLabelSelector(0.4),
                 KnapsackLabelSelector(0.6 * macs.baseline(), fn, verbose=False),
                 BinarySearchLatencyLabelSelector(0.6 * macs.baseline(), fn)]
    removed_any = False
    for sel in selectors:
        labels = sel.select(ir)
        for g in ir.prunable_label_groups():
            n = sum(lab.group == g.gid for lab in labels)
            assert (g.size - n) % 4 == 0, (sel, g.size, n)
        removed_any |= bool(labels)
        if isinstance(sel, (KnapsackLabelSelector, BinarySearchLatencyLabelSelector)):
            assert 0 < macs.cost(labels) <= 0.6 * macs.baseline(), sel
        rep = verify_pruning(ir, labels)
        assert rep.max_abs_diff < 1e-5, (sel, rep)
    assert removed_any
    assert UniformLabelSelector(0.3).select(ir) == []  # 12 * 0.3 -> 3, rounded to a multiple: 0


class AliasedWeight(nn.Module):
    """A plain attribute (a list) that holds ``fc1``'s weight, read in forward, and a random op
    (so the probe works on a meta trace). The slim model the user gets has the sliced weight in
    that list too (the module-tree copy maps every reference), so the hidden width prunes."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, 3)
        self.__dict__["ws"] = [self.fc1.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0 * torch.rand_like(x)
        return self.fc2(torch.nn.functional.linear(x, self.ws[0], self.fc1.bias).relu())


@pytest.mark.parametrize("hidden", [7, 8])
def test_probe_prunes_copies_as_the_user_prune_does(hidden: int) -> None:
    # oracle: the probe's verdict agrees with the user's own prune of one label (no step, no
    # refusal), and that prune is exact against the masked original (found in review: a probe
    # that sliced its meta copy in place left the list's weight unsliced and gave a step of 2,
    # or refused the odd width)
    torch.manual_seed(0)
    ir = PruningIR(AliasedWeight(hidden), example_inputs=(torch.randn(2, 4),))
    g = next(g for g in ir.label_groups() if g.size == hidden)
    assert g.prunable and g.step == 1, ir.report()
    labels = ir.labels(g)[:1]
    slim = ir.prune(labels=labels).model
    assert slim.ws[0].shape == (hidden - 1, 4)
    assert verify_pruning(ir, labels).max_abs_diff < 1e-5


def test_inplace_prune_slices_what_plain_attributes_hold_too() -> None:
    # oracle: the same prune made on a copy (the default) and in place give the same outputs on
    # new inputs; in place, the list's weight is the sliced one (before, only the module's own
    # parameter dict was updated: verification refused it, the model left half-sliced)
    torch.manual_seed(0)
    model = AliasedWeight(8)
    ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
    g = next(g for g in ir.label_groups() if g.size == 8)
    labels = ir.labels(g)[2:5]
    copy = ir.prune(labels=labels).model
    same = ir.prune(labels=labels, inplace=True).model
    assert same is model and model.ws[0] is model.fc1.weight and model.ws[0].shape == (5, 4)
    x = torch.randn(3, 4)
    assert torch.allclose(copy(x), same(x), atol=1e-6)
