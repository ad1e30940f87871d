"""``prune(verify=False)`` builds the same slim model as ``prune(verify=True)``.

Channel sizes written as literals in ``forward`` (``h[:, :5]``, ``x.view(b, 12, -1)``,
``torch.split(x, [5, 8])``) need run-time patches. They are installed whatever ``verify``
is, so a fast (unverified) candidate computes what the verified one computes.

Oracle, for every model and several selections: slim(verify=False) output ==
slim(verify=True) output (bit for bit, same rewrite log), and slim(verify=True) ==
the original model with the removed labels masked to zero (``verify_pruning``). And the
fast path copies: its slim model shares no storage with the original.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from checks import outputs, state_hash
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from toy_zoo import TOY_CASES

from pruning_ir import Label, PruningIR, UniformLabelSelector, verify_pruning


class SliceSumNet(nn.Module):
    """Case: a literal slice bound whose stale value is *silently* wrong: ``h[:, :5].sum(1)``
    over conv1's 13 channels still runs when conv1 keeps 9, but sums the wrong channels.
    Coupling: conv1 out [0:13] with conv_out in; the sum reads conv1 out [0:5]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 13, 3, padding=1)
        self.conv_out = nn.Conv2d(13, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        return self.conv_out(h) + h[:, :5].sum(dim=1, keepdim=True)


class ViewLiteralNet(nn.Module):
    """Case: a literal channel count in ``view``: ``h.view(b, 12, -1)`` then tokens -> Linear.
    Coupling: conv out (12) with the view's channel axis and lin in (12)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.lin = nn.Linear(12, 7)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x))
        tokens = h.view(h.shape[0], 12, -1).transpose(1, 2)  # (B, HW, 12)
        return self.lin(tokens).mean(dim=1)


class SliceBlock(nn.Module):
    """Literal offsets in a submodule's own code (the patch goes on ``block``, not the root).
    (``x.narrow(1, 6, 8)`` would not do: ``narrow`` checks its literal length before any op
    is dispatched, so the build-time probe makes such channels unprunable.)"""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(6, 5, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = x[:, :6]
        b = x[:, 6:]
        return torch.cat([F.relu(self.conv_a(a)), F.relu(self.conv_b(b))], dim=1)


class SliceInChildNet(nn.Module):
    """Case: channel slices with a literal bound inside a child module.
    Coupling: stem out [0:6] with conv_a in, [6:14] with conv_b in; the cat (9) with head in."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 14, 3, padding=1)
        self.block = SliceBlock()
        self.head = nn.Conv2d(9, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(F.relu(self.stem(x))))


class PlainAttributeNet(nn.Module):
    """Case: a size held in an attribute whose name does not look like a size (``self.k``),
    so attribute matching leaves it alone and it behaves like a literal; next to it a size
    the code computes from the tensor (``c - self.k``), which adapts by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 5
        self.conv1 = nn.Conv2d(3, 13, 3, padding=1)
        self.conv_a = nn.Conv2d(5, 7, 1)
        self.conv_b = nn.Conv2d(8, 7, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        c = h.shape[1]
        return self.conv_a(h[:, : self.k]) + self.conv_b(h[:, self.k : self.k + (c - self.k)])


def _case(cls: type[nn.Module]) -> Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]:
    def make() -> tuple[nn.Module, tuple[Tensor, ...]]:
        torch.manual_seed(0)
        return cls().eval(), (torch.randn(2, 3, 4, 5),)

    return make


LITERAL_CASES: dict[str, Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]] = {
    "slice_sum": _case(SliceSumNet),
    "view_literal": _case(ViewLiteralNet),
    "slice_in_child": _case(SliceInChildNet),
    "plain_attribute": _case(PlainAttributeNet),
    "split_chunk": TOY_CASES["split_chunk"],  # torch.split(x, [5, 8])
    "split_add": TOY_CASES["split_add"],  # torch.split(x, 6)
}
PATCHED = {"slice_sum": "<root>", "view_literal": "<root>", "slice_in_child": "block",
           "plain_attribute": "<root>", "split_chunk": "<root>", "split_add": "<root>"}


def _random_labels(ir: PruningIR, seed: int) -> list[Label]:
    """Up to half of every prunable group's labels, at random (at least one kept)."""
    rng = random.Random(seed)
    out: list[Label] = []
    for g in ir.prunable_label_groups():
        labels = ir.labels(g)
        out += rng.sample(labels, rng.randint(1, len(labels) // 2))
    return out


def _selections(ir: PruningIR) -> list[list[Label]]:
    first = ir.prunable_label_groups()[0]
    return [UniformLabelSelector(0.25).select(ir), UniformLabelSelector(0.5).select(ir),
            _random_labels(ir, 1), _random_labels(ir, 2), ir.labels(first)[:1]]


def _patched(log: list[str]) -> list[str]:
    return [line.split(":")[0] for line in log if "patched by hooks" in line]


def _check_same(ir: PruningIR, labels: list[Label], args: tuple[Tensor, ...], exact: bool = True) -> list[str]:
    """slim(verify=False) == slim(verify=True) == masked original (exactly, or with the listed
    reasons unless ``exact``); returns the patched modules."""
    fast = ir.prune(labels=labels, verify=False)
    checked = ir.prune(labels=labels, verify=True)
    assert fast.rewrite_log == checked.rewrite_log
    for a, b in zip(outputs(fast.model, args, {}), outputs(checked.model, args, {}), strict=True):
        assert torch.equal(a, b)
    rep = verify_pruning(ir, labels)
    assert rep.exact or (rep.inexact_reasons and not exact), rep
    return _patched(fast.rewrite_log)


@pytest.mark.parametrize("name", sorted(LITERAL_CASES))
def test_verify_false_patches_literals_like_verify_true(name: str) -> None:
    model, args = LITERAL_CASES[name]()
    before = state_hash(model)
    ir = PruningIR(model, example_inputs=args)
    assert ir.prunable_label_groups(), ir.report()
    uniform_patched = []
    for labels in _selections(ir):
        patched = _check_same(ir, labels, args)
        assert set(patched) <= {PATCHED[name]}
        uniform_patched.append(patched)
    assert uniform_patched[0] == [PATCHED[name]]  # uniform 0.25 changes the literal
    assert state_hash(model) == before


def test_unpatched_slim_model_would_be_silently_wrong() -> None:
    """Without its patch the slice-sum slim model runs but computes something else, so
    the patch (not luck) is what makes verify=False right."""
    model, args = LITERAL_CASES["slice_sum"]()
    ir = PruningIR(model, example_inputs=args)
    labels = UniformLabelSelector(0.5).select(ir)
    fast = ir.prune(labels=labels, verify=False)
    want = outputs(fast.model, args, {})
    patched = fast.model._pruning_ir_patch
    patched.edits = {}  # the hooks stay, but rewrite nothing
    got = outputs(fast.model, args, {})
    assert got[0].shape == want[0].shape
    assert not torch.allclose(got[0], want[0])


@pytest.mark.parametrize("name", ["channel_shuffle", "mha_separate", "flatten_linear"])
def test_sizes_computed_from_tensors_get_no_patch(name: str) -> None:
    """Sizes the code reads off tensors (``c // groups``, ``x.shape``) or attributes adapt by
    themselves: no module gets hooks, with or without verification."""
    model, args = TOY_CASES[name]()
    ir = PruningIR(model, example_inputs=args)
    for labels in _selections(ir)[:3]:
        assert _check_same(ir, labels, args, exact=False) == []
        fast = ir.prune(labels=labels, verify=False)
        assert not any(hasattr(m, "_pruning_ir_patch") for m in fast.model.modules())
        assert not any(m._forward_pre_hooks for m in fast.model.modules())


class CountingSliceSumNet(SliceSumNet):
    calls = 0

    def forward(self, x: Tensor) -> Tensor:
        type(self).calls += 1
        return super().forward(x)


def test_literals_are_learnt_once_per_snapshot() -> None:
    """The forward that tells literals from computed sizes runs once; later candidates of a
    search reuse the answer (and a pruned IR, a new snapshot, learns its own)."""
    torch.manual_seed(0)
    model = CountingSliceSumNet().eval()
    args = (torch.randn(2, 3, 4, 5),)
    ir = PruningIR(model, example_inputs=args)
    CountingSliceSumNet.calls = 0
    first = ir.prune(labels=UniformLabelSelector(0.25).select(ir), verify=False)
    assert CountingSliceSumNet.calls == 1
    for ratio in (0.3, 0.5, 0.6):
        again = ir.prune(labels=UniformLabelSelector(ratio).select(ir), verify=False)
        assert _patched(again.rewrite_log) == ["<root>"]
    assert CountingSliceSumNet.calls == 1
    assert _patched(first.rewrite_log) == ["<root>"]


@pytest.mark.parametrize("name", ["slice_sum", "split_chunk", "slice_in_child"])
def test_second_prune_chains_patches_without_verification(name: str) -> None:
    """Pruning a pruned IR again: the literal's patch is chained (5 -> 3 -> 2); verify=False
    still equals verify=True and the masked (once-pruned) model."""
    model, args = LITERAL_CASES[name]()
    ir = PruningIR(model, example_inputs=args)
    pruned = ir.prune(labels=UniformLabelSelector(0.25).select(ir), verify=False)
    for labels in [UniformLabelSelector(0.34).select(pruned), _random_labels(pruned, 3)]:
        assert _check_same(pruned, labels, args) in ([], [PATCHED[name]])


def _storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}


@pytest.mark.parametrize("name", ["residual_downsample", "embedding_tied", "split_chunk"])
@pytest.mark.parametrize("ratio", [0.0, 0.3])
def test_fast_slim_model_is_independent_of_the_original(name: str, ratio: float) -> None:
    """The fast path copies, it does not share: no tensor of the slim model (sliced or not)
    shares storage with the original, training the slim model leaves the original as it was,
    and tied weights stay tied."""
    model, args = TOY_CASES[name]()
    ir = PruningIR(model, example_inputs=args)
    before = state_hash(model)
    slim = ir.prune(labels=UniformLabelSelector(ratio).select(ir), verify=False).model
    assert not _storages(slim) & _storages(model)
    if name == "embedding_tied":
        assert slim.lm_head.weight is slim.embed.weight
    slim.train()
    opt = torch.optim.SGD(slim.parameters(), lr=0.1)
    flat = pytree.tree_flatten(slim(*args))[0]
    sum(t.float().pow(2).sum() for t in flat if isinstance(t, Tensor) and t.is_floating_point()).backward()
    opt.step()
    assert state_hash(model) == before
