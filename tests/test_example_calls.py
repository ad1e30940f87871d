"""Paths the example call does not take: branches on the data, training-only code. Oracles:
the masked original on every call, and hand-set known answers (which group must be refused,
which parameter is reported)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_ir import ExampleCall, PruningIR, UniformLabelSelector, verify_pruning


class BranchNet(nn.Module):
    """Case: ``fa(h)`` for positive inputs, ``fb(h[:, :4])`` otherwise (a literal slice of the
    hidden units on the branch the example does not take)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.fa = nn.Linear(8, 3)
        self.fb = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).relu()
        return self.fa(h) if x.sum() > 0 else self.fb(h[:, :4])


def test_parameters_no_call_used_are_reported_and_warned_about() -> None:
    torch.manual_seed(0)
    model, x = BranchNet(), torch.rand(2, 4)
    ir = PruningIR(model, example_inputs=(x,))
    assert "not used by any traced call (2 parameters in fb)" in ir.report()
    labels = UniformLabelSelector(0.5).select(ir)
    with pytest.warns(UserWarning, match=r"parameters \['fb\.weight', 'fb\.bias'\] were not used"):
        ir.prune(labels=labels)
    # the other branch really differs from the masked original: what the warning is about
    assert not verify_pruning(ir, labels, example_inputs=(-x,)).exact


def test_an_extra_call_covers_the_other_branch() -> None:
    torch.manual_seed(0)
    model, x = BranchNet(), torch.rand(2, 4)
    ir = PruningIR(model, example_inputs=(x,), extra_calls=[(-x,)])
    report = ir.report()
    assert "the example call and 1 more" in report and "not used by any traced call" not in report
    # known answer: the 4 hidden units behind the literal h[:, :4] cannot be pruned (the slice is
    # not on the example call's path, so nothing rewrites it), the other 4 can
    prunable = ir.prunable_label_groups()
    assert [g.size for g in prunable] == [4], report
    assert "traced call 2" in report
    labels = ir.labels(prunable[0])[:2]
    rep = verify_pruning(ir, labels)
    assert rep.exact and [c.name for c in rep.checks][:2] == ["example call", "traced call 2"], rep
    assert verify_pruning(ir, labels, example_inputs=(-x,)).exact
    # the pruned IR keeps its calls: its own prunes are verified on both, with or without verify
    for verify in (True, False):
        again = ir.prune(labels=labels, verify=verify)
        assert len(again.snapshot().graph.extra_calls) == 1 and len(again.snapshot().calls()) == 2
        assert again.snapshot().graph.explicit_modules == ir.snapshot().graph.explicit_modules


class TrainOnlyNet(nn.Module):
    """Case: a parameter used only in training mode (like HF wav2vec2's ``masked_spec_embed``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 12)
        self.noise = nn.Parameter(torch.randn(12))
        self.b = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).relu()
        if self.training:
            h = h + self.noise
        return self.b(h)


def test_training_only_parameters_are_traced_by_a_training_mode_call() -> None:
    torch.manual_seed(0)
    model, x = TrainOnlyNet().eval(), torch.randn(3, 5)
    ir = PruningIR(model, example_inputs=(x,))
    assert "the example call and 1 more" in ir.report()
    labels = UniformLabelSelector(0.5).select(ir)
    slim = ir.prune(labels=labels).model
    assert slim.noise.shape == (6,)
    rep = verify_pruning(ir, labels)
    assert rep.exact and {"traced call 2", "train mode"} <= {c.name for c in rep.checks}, rep


def test_without_the_training_call_the_train_mode_failure_is_reported() -> None:
    torch.manual_seed(0)
    model, x = TrainOnlyNet().eval(), torch.randn(3, 5)
    ir = PruningIR(model, example_inputs=(x,), auto_calls=False)
    assert "not used by any traced call (1 parameters in <root>)" in ir.report()
    labels = UniformLabelSelector(0.5).select(ir)
    with pytest.warns(UserWarning, match="were not used by any traced call"):
        rep = verify_pruning(ir, labels)
    train = next(c for c in rep.checks if c.name == "train mode")
    assert not rep.exact and train.error is not None and "must match" in train.error


def test_example_call_objects_set_training_mode() -> None:
    model = TrainOnlyNet().eval()
    call = ExampleCall((torch.randn(2, 5),), train=True)
    assert set(call.modes(model).values()) == {True}
    assert ExampleCall((torch.randn(2, 5),)).modes(model)[""] is False


class MaskedEmbedNet(nn.Module):
    """Case: training-only time masking as in wav2vec2: ``h[mask] = self.mask_embed`` with a
    boolean (batch, time) mask; the embedding's entries are written channel for channel, so it
    couples with the hidden width (known answer: one prunable hidden group of 10 that slices it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 10)
        self.mask_embed = nn.Parameter(torch.randn(10))
        self.b = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.training:
            mask = torch.zeros(h.shape[:2], dtype=torch.bool)
            mask[:, ::3] = True
            h[mask] = self.mask_embed
        return self.b(h.relu())


def test_boolean_mask_writes_couple_the_written_channels() -> None:
    torch.manual_seed(0)
    model, x = MaskedEmbedNet().eval(), torch.randn(2, 7, 6)
    ir = PruningIR(model, example_inputs=(x,))
    groups = ir.prunable_label_groups()
    assert [g.size for g in groups] == [10] and any(n == "mask_embed" for n, _ in groups[0].members), ir.report()
    labels = ir.labels(groups[0])[::2]
    assert ir.prune(labels=labels).model.mask_embed.shape == (5,)
    rep = verify_pruning(ir, labels)
    assert rep.exact and "train mode" in {c.name for c in rep.checks}, rep


class TwoSlicesNet(nn.Module):
    """Case: the extra call takes ``h[:, 4:8]`` where the example call took ``h[:, 0:4]``: same op,
    module, shapes and input, other bounds. Merging must not treat the two slices as one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 8)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, second: bool = False) -> torch.Tensor:
        h = self.a(x)
        return self.b(h[:, 4:8] if second else h[:, 0:4])


def test_merged_calls_keep_nodes_that_differ_only_in_their_arguments() -> None:
    """Known answer: with both calls, ``b``'s inputs couple to both halves of ``a``'s outputs; the
    literal bounds of the second call's slice are not on the example call's path, so that group
    is refused (before the fix the second slice was merged into the first and its group pruned
    into a model 0.34 off the masked original on the second call)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    ir = PruningIR(TwoSlicesNet(), example_inputs=(x,), extra_calls=[ExampleCall((x,), {"second": True})])
    for g in ir.prunable_label_groups():
        rep = verify_pruning(ir, ir.labels(g)[:1])
        assert rep.exact, rep
    coupled = next(g for g in ir.label_groups() if any(n == "b.weight" and ax == 1 for n, ax in g.members))
    assert not coupled.prunable and "traced call 2" in coupled.reason, ir.report()
