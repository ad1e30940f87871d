"""Verification re-traces the slim model and compares it op by op with the pruned IR. Code
may legitimately make fewer (or more) calls in one run than in another; those runs must not
be refused, and the channels around them must stay prunable.

Oracle: the masked original (``verify_pruning``) and the groups the IR reports prunable.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> Tensor:
    ys = torch.arange(0.5, h) / h
    xs = torch.arange(0.5, w) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) * 2 - 1


class CachedGridNet(nn.Module):
    """Case: a position grid from an ``lru_cache``d function of the input size (as DINOv3's
    RoPE): computed by the first call, served from the cache by the next ones. Coupling: conv
    out (12) with fc1 in; fc1 out (20) with fc2 in; the grid enters through a Linear(2, 12)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.pos = nn.Linear(2, 12)
        self.fc1 = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x)).flatten(2).transpose(1, 2)  # (B, HW, 12)
        h = h + self.pos(_grid(x.shape[2], x.shape[3]))
        return self.fc2(F.relu(self.fc1(h))).sum(dim=1)


def test_results_a_python_cache_serves_do_not_block_pruning() -> None:
    """The IR is traced on a cold cache (the grid's arange/stack are recorded); verification's
    re-trace finds them cached. Before, every group failed the build-time probe ("computes
    unsqueeze where the pruned IR predicts arange") and nothing was prunable."""
    torch.manual_seed(0)
    model = CachedGridNet().eval()
    x = torch.randn(2, 3, 4, 5)
    _grid.cache_clear()
    ir = PruningIR(model, example_inputs=(x,))
    sizes = sorted(g.size for g in ir.prunable_label_groups())
    assert sizes == [12, 20], ir.report()
    labels = UniformLabelSelector(0.5).select(ir)
    rep = verify_pruning(ir, labels)
    assert rep.exact, rep
    # and traced on a warm cache (the grid is a constant from outside the trace), the same
    ir2 = PruningIR(model, example_inputs=(x,))
    assert sorted(g.size for g in ir2.prunable_label_groups()) == [12, 20], ir2.report()
    assert verify_pruning(ir2, UniformLabelSelector(0.5).select(ir2)).exact


def test_one_kept_input_feature_is_not_a_false_refusal() -> None:
    """conv -> flatten -> transpose -> Linear keeping 1 channel: torch then runs F.linear as a
    view and a product instead of t and mm; verification compared ops inside the Linear and
    refused a right model. Oracle: the masked original."""
    import torch
    from torch import nn

    from pruning_ir import PruningIR, verify_pruning

    class ConvTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.lin = nn.Linear(6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.conv(x).flatten(2).transpose(1, 2))  # (B, HW, C)

    torch.manual_seed(0)
    ir = PruningIR(ConvTokens(), example_inputs=(torch.randn(2, 3, 7, 6),))
    g = ir.prunable_label_groups()[0]
    assert g.size == 6
    rep = verify_pruning(ir, ir.labels(g)[:-1])
    assert rep.exact and rep.params_after < rep.params_before, rep


def test_repair_choices_order_and_log() -> None:
    """Hand-set answer for the repair search of one module: an ambiguous ``a`` (old 4, may be 2)
    and a guess ``g`` (set 16 -> 4 by matching values). Order: other ambiguous values with the
    guess kept, then the guess put back, then both; ``guesses=False`` (before the module is
    patched) skips the put-back ones; exhausted, the starting values return. The rewrite log
    loses the guess that was put back."""
    from torch import nn

    from pruning_ir._pipeline.repair import Choices

    m = nn.Module()
    m.a, m.g = 4, 4
    ch = Choices.of([("a", 4, [2])], [("g", 16)], m)
    assert ch.every == [(2, 4), (4, 16), (2, 16)]
    assert ch.try_next(m, guesses=False) == ("a=2, g=4", False) and (m.a, m.g) == (2, 4)
    assert ch.try_next(m, guesses=False) is None and (m.a, m.g) == (4, 4)  # put-back combos skipped
    ch.rearm()
    assert [ch.try_next(m, guesses=True) for _ in range(3)] == [("a=2, g=4", False), ("a=4, g=16", True),
                                                                 ("a=2, g=16", True)]
    assert (m.a, m.g) == (2, 16)
    log = ["<root>.g: 16 -> 4", "x.out_features: 8 -> 6"]
    ch.log("", m, log)
    assert log == ["x.out_features: 8 -> 6", "<root>.a: 4 -> 2 (ambiguous; the value verification accepted)"]


class _Asserting(nn.Module):
    """Python code (no op) that checks a channel count: pruning ``lin``'s outputs breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        assert h.shape[-1] == 8, "eight channels expected"
        return h


class _Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(_Asserting())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


def test_a_python_exception_names_the_module_it_left() -> None:
    """An exception raised by Python code (not by an op) is located in the innermost module it
    left, as verification and the probe report it: the probe's reason names 'block.0'."""
    import pytest

    from pruning_ir._trace.recorder import record
    from pruning_ir.errors import TraceError

    model = _Holder()
    model.block[0].lin = nn.Linear(4, 7)  # what a slice of the 8 channels would leave
    model.head = nn.Linear(7, 2)
    with pytest.raises(TraceError) as info:
        record(model, (torch.randn(2, 4),), {})
    assert info.value.module == "block.0" and info.value.raised
    assert isinstance(info.value.__cause__, AssertionError)
    ir = PruningIR(_Holder(), example_inputs=(torch.randn(2, 4),))
    assert not ir.prunable_label_groups()
    reasons = [i.detail for i in ir.snapshot().issues if i.kind == "probe"]
    assert any("in module 'block.0'" in r and "AssertionError" in r for r in reasons), reasons


class _FallsBack(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return torch.cat([x, x[:, :, None]], 1)  # an op fails; the code recovers
        except RuntimeError:
            return x


class _Reshapes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], 7, -1)


class _Handles(nn.Module):
    """Runs a module inside an except block (the exception being handled is not the one raised)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _Reshapes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            raise KeyError("handled")
        except KeyError:
            return self.inner(x)


def test_the_failure_is_located_where_the_escaping_exception_was_raised() -> None:
    """An op error that the model caught and recovered from does not take the blame for a later
    failure, nor does an exception being handled around a module that then fails."""
    import pytest

    from pruning_ir._trace.recorder import record
    from pruning_ir.errors import TraceError

    for model, where in ((nn.Sequential(_FallsBack(), _Reshapes()), "1"), (nn.Sequential(_Handles()), "0.inner")):
        with pytest.raises(TraceError) as info:
            record(model, (torch.randn(2, 6),), {})
        assert info.value.module == where and "aten.view" in str(info.value), (where, str(info.value))


class _TwiceSized(nn.Module):
    """Reshapes by the channel count: as a literal on one call, computed on the other."""

    def forward(self, h: torch.Tensor, literal: bool) -> torch.Tensor:
        c = 8 if literal else h.shape[1]
        return h.reshape(h.shape[0], c, -1).sum(-1)


class _CalledTwice(nn.Module):
    def __init__(self, literal_first: bool) -> None:
        super().__init__()
        self.a, self.t, self.b = nn.Linear(4, 8), _TwiceSized(), nn.Linear(8, 3)
        self.order = (True, False) if literal_first else (False, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(self.t(h, self.order[0]) + self.t(h, self.order[1]))


def test_a_size_seen_both_literal_and_computed_is_verified_on_the_final_model() -> None:
    """A module called twice holds the channel count as a literal on one call and computes it on
    the other: the run that learns literal sizes rewrote the literal, so it does not stand for the
    final model's re-trace; verification re-traces, and the slim model runs and is exact in both
    call orders."""
    x = torch.randn(2, 4)
    for literal_first in (True, False):
        ir = PruningIR(_CalledTwice(literal_first), example_inputs=(x,))
        labels = UniformLabelSelector(0.25).select(ir)
        assert labels, literal_first
        slim = ir.prune(labels=labels)
        assert slim.model(x).shape == (2, 3)
        assert any(line.startswith("t: literal sizes") for line in slim.rewrite_log), slim.rewrite_log
        assert verify_pruning(ir, labels).exact, literal_first


def test_a_module_that_drops_an_uncopyable_attribute_in_getstate_prunes() -> None:
    """A module holding a lock, which its ``__getstate__`` leaves out (as ``deepcopy`` and pickle
    honour): the slim copy is made from that state (``prune`` raised a TypeError, "cannot pickle
    '_thread.lock'"), and the user's model keeps its lock. Oracle: slim == masked, exactly."""
    import threading

    class Locked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)
            self.lock = threading.Lock()

        def __getstate__(self) -> dict[str, object]:
            state = dict(self.__dict__)
            state.pop("lock", None)
            return state

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = Locked()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 3),))
    labels = ir.labels(ir.prunable_label_groups()[0])[:3]
    slim = ir.prune(labels=labels).model
    assert slim.a.out_features == 5 and not hasattr(slim, "lock") and hasattr(model, "lock")
    assert verify_pruning(ir, labels).exact
