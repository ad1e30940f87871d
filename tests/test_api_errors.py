"""Bad input gets an error that names the problem and says what to do, and loses nothing."""

from __future__ import annotations

import io

import dill
import pytest
import torch
from checks import state_hash
from torch import nn

import pruning_ir
from pruning_ir import (
    InvalidInputError,
    LabelError,
    PruningIR,
    SnapshotVersionError,
    TraceError,
    UniformLabelSelector,
)


def small() -> tuple[nn.Module, tuple[torch.Tensor]]:
    return nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3)).eval(), (torch.randn(2, 4),)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "0.3", True])
def test_ratio_out_of_range(ratio: object) -> None:
    with pytest.raises(InvalidInputError, match=r"ratio must be a number in \[0, 1\)"):
        UniformLabelSelector(ratio)  # type: ignore[arg-type]


def test_non_module() -> None:
    with pytest.raises(InvalidInputError, match=r"needs a torch\.nn\.Module, got function"):
        PruningIR(lambda x: x, example_inputs=(torch.randn(1),))  # type: ignore[arg-type]


def test_missing_example_inputs() -> None:
    """Without example inputs the IR is lazy (ENOT's ``PruningIR(model)``): what needs the graph
    says it is not traced yet and how to trace it; create_snapshot without inputs is refused."""
    model, _ = small()
    ir = PruningIR(model)
    assert not ir.is_traced() and "not traced yet" in repr(ir)
    with pytest.raises(InvalidInputError, match=r"not traced the model yet.*collect"):
        UniformLabelSelector(0.5).select(ir)
    with pytest.raises(InvalidInputError, match="not traced the model yet"):
        ir.prune(labels=[])
    with pytest.raises(InvalidInputError, match="needs example_inputs"):
        ir.create_snapshot()


def test_example_inputs_that_do_not_run_the_model() -> None:
    model, _ = small()
    with pytest.raises(TraceError, match=r"failed inside module .0..*example_inputs run the model"):
        PruningIR(model, example_inputs=(torch.randn(2, 5),))


def test_bad_example_inputs_type() -> None:
    model, _ = small()
    with pytest.raises(InvalidInputError, match="must be a tensor, a tuple"):
        PruningIR(model, example_inputs=3)


def test_labels_from_another_ir() -> None:
    model, x = small()
    ir1 = PruningIR(model, example_inputs=x)
    ir2 = PruningIR(model, example_inputs=x)
    labels = UniformLabelSelector(0.5).select(ir1)
    with pytest.raises(LabelError, match="belongs to another IR or snapshot"):
        ir2.prune(labels=labels)


def test_stale_labels_after_prune() -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    labels = UniformLabelSelector(0.5).select(ir)
    pruned = ir.prune(labels=labels)
    with pytest.raises(LabelError, match="select again from the returned IR"):
        pruned.prune(labels=labels)


def test_removing_a_whole_group() -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    group = ir.prunable_label_groups()[0]
    with pytest.raises(LabelError, match="remove every channel of group g"):
        ir.prune(labels=ir.labels(group))


def test_unprunable_group() -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    fixed = next(g for g in ir.label_groups() if not g.prunable)
    with pytest.raises(LabelError, match="is not prunable: model"):
        ir.prune(labels=ir.labels(fixed)[:1])


def test_not_a_label() -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    with pytest.raises(LabelError, match="expected pruning_ir Labels, got int"):
        ir.prune(labels=[3])  # type: ignore[list-item]


def test_unknown_snapshot_name() -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    with pytest.raises(InvalidInputError, match="no snapshot named 'other'"):
        ir.prune("other", labels=[])


def test_strict_tracing_names_module_and_op() -> None:
    class Fft(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft(self.fc(x), dim=-1).abs()

    with pytest.raises(TraceError, match=r"op aten\._fft_r2c in module '<root>' has no channel rule"):
        PruningIR(Fft(), example_inputs=(torch.randn(2, 6),), soft_tracing=False)


def test_snapshot_version_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    buf = io.BytesIO()
    torch.save(ir, buf, pickle_module=dill)  # written with the current format
    buf.seek(0)
    monkeypatch.setattr(pruning_ir.ir, "SNAPSHOT_FORMAT", 999)  # a newer reader
    with pytest.raises(SnapshotVersionError, match="saved with snapshot format 1, but pruning_ir reads format 999"):
        torch.load(buf, pickle_module=dill, weights_only=False)


def test_failed_prune_leaves_model_untouched() -> None:
    model, x = small()
    before = state_hash(model)
    ir = PruningIR(model, example_inputs=x)
    group = ir.prunable_label_groups()[0]
    with pytest.raises(LabelError):
        ir.prune(labels=ir.labels(group))
    assert state_hash(model) == before


def test_inplace_prune_modifies_only_when_asked() -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    labels = UniformLabelSelector(0.5).select(ir)
    pruned = ir.prune(labels=labels, inplace=True)
    assert pruned.model is model
    assert model[0].out_features == 5 and model[0].weight.shape == (5, 4)


class WidthChecked(nn.Module):
    """Its forward asserts a width in Python; the assertion is switched on after the IR is built
    (as a user's edit would), so the prune's verification refuses the slim model."""

    check = False

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        self.extra = [self.fc1.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x).relu()
        assert not self.check or h.shape[1] == 8, "width changed"
        return self.fc2(h + 0 * self.extra[0].sum())


def test_failed_inplace_prune_leaves_model_as_it_was() -> None:
    # oracle: the model's state (values and shapes), its parameter objects, attributes, plain
    # attribute references and hooks are those from before the refused in-place prune, and
    # it computes what it computed
    torch.manual_seed(0)
    model = WidthChecked().eval()
    x = torch.randn(2, 4)
    ir = PruningIR(model, example_inputs=(x,), probe=False)
    WidthChecked.check = True
    try:
        params = list(model.parameters())
        before, out = state_hash(model), model(x)
        group = next(g for g in ir.label_groups() if g.size == 8)
        with pytest.raises(pruning_ir.errors.PruningIRError, match="width changed"):
            ir.prune(labels=ir.labels(group)[:2], inplace=True)
        assert state_hash(model) == before
        assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
        assert model.fc1.out_features == 8 and model.extra[0] is model.fc1.weight
        assert not model.fc1._forward_hooks and not model._forward_hooks
        assert torch.equal(model(x), out)
    finally:
        WidthChecked.check = False


def test_empty_labels_returns_a_copy() -> None:
    model, x = small()
    ir = PruningIR(model, example_inputs=x)
    copy = ir.prune(labels=[])
    assert copy.model is not model
    assert torch.equal(copy.model(*x), model(*x))
