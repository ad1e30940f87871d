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
    """Literal offsets in a submodule's own code (the patch goes on ``block``, not the root)."""

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


class ComposedLiteralNet(nn.Module):
    """Case: literals in functions that check their sizes in Python before any ATen op runs,
    so a stale literal raises instead of reaching the patch: ``reshape`` of a transposed
    (non-viewable) tensor, ``unflatten`` and ``narrow`` (literal start and length).
    Coupling: conv out (12) with the tokens' channel axis and lin in (12); conv2 out (11)
    with lin2 in, its slice [2:9] read by the narrow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.lin = nn.Linear(12, 7)
        self.conv2 = nn.Conv2d(3, 11, 1)
        self.lin2 = nn.Linear(11, 7)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x))
        tokens = h.transpose(2, 3).reshape(h.shape[0], 12, -1).transpose(1, 2)  # (B, WH, 12)
        g = F.relu(self.conv2(x))
        cols = g.flatten(2).sum(-1).unflatten(1, (11, 1)).sum(-1)  # (B, 11)
        picked = g.narrow(1, 2, 7).sum(dim=(1, 2, 3))[:, None]
        return self.lin(tokens).sum(dim=1) + self.lin2(cols) + picked


class AttentionPoolNet(nn.Module):
    """Case: attention pooling with a learned query token (AIMv2's head): every reshape computes
    the head size as ``width // self.num_heads`` from the *input* width (which keeps its size)
    and the last one holds that width. Pruning v's head dims apart from q/k's sends SDPA from
    its fused kernel to the math fallback, whose own views must not count as the module's
    calls (they shifted every later literal: the final reshape kept the old width).
    Coupling: 3 heads of 8 q/k dims (k out, query token) and 8 v dims (v out, out in)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 3
        self.k = nn.Linear(24, 24)
        self.v = nn.Linear(24, 24)
        self.query = nn.Parameter(torch.randn(1, 1, 24))
        self.out = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        k = self.k(x).reshape(b, s, self.num_heads, d // self.num_heads).transpose(1, 2)
        v = self.v(x).reshape(b, s, self.num_heads, d // self.num_heads).transpose(1, 2)
        q = self.query.expand(b, -1, -1).reshape(b, 1, self.num_heads, d // self.num_heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(b, 1, d).mean(1))


def _repeat_kv(h: Tensor, n_rep: int) -> Tensor:
    b, kv, s, d = h.shape
    if n_rep == 1:  # as in HF LLaMA: the expand/reshape is skipped
        return h
    return h[:, :, None].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


class GQALiteralNet(nn.Module):
    """Case: GQA attention with literal head counts (``view(b, s, 6, 4)``, ``view(b, s, 24)``)
    next to ``repeat_kv``, which skips its expand/reshape once ``n_rep`` becomes 1. The patch
    must rewrite the literals of the calls the slim code makes, not of the recorded calls
    at the same position (the skipped ones shift every later ``view`` by two).
    Coupling: 2 kv heads x 3 queries each; q/k head dim 4, v head dim 4."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(10, 24)
        self.k = nn.Linear(10, 8)
        self.v = nn.Linear(10, 8)
        self.o = nn.Linear(24, 10)
        self.n_rep = 3

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 6, 4).transpose(1, 2)
        k = _repeat_kv(self.k(x).view(b, s, -1, 4).transpose(1, 2), self.n_rep)
        v = _repeat_kv(self.v(x).view(b, s, -1, 4).transpose(1, 2), self.n_rep)
        a = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, s, 24))


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
    "composed_literal": _case(ComposedLiteralNet),
}
PATCHED = {"slice_sum": "<root>", "view_literal": "<root>", "slice_in_child": "block",
           "plain_attribute": "<root>", "split_chunk": "<root>", "split_add": "<root>",
           "composed_literal": "<root>"}


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


@pytest.mark.parametrize("verify", [False, True])
def test_literal_patch_follows_calls_the_slim_code_skips(verify: bool) -> None:
    """Query heads per kv head 3 -> 1: ``repeat_kv`` stops calling expand/reshape, and the
    literal ``6`` and ``24`` must still be rewritten (to 2 and 8). The slim model then equals
    the masked original on the traced inputs and on another batch size and length, also
    after a dill round-trip of the slim model (the patch keeps what it learnt)."""
    import io

    import dill

    torch.manual_seed(0)
    model = GQALiteralNet().eval()
    x = torch.randn(2, 5, 10)
    ir = PruningIR(model, example_inputs=(x,))
    per_kv = [g for g in ir.prunable_label_groups() if g.size == 3]
    assert len(per_kv) == 1, ir.report()
    for k in (1, 2):
        labels = ir.labels(per_kv[0])[:k]
        slim = ir.prune(labels=labels, verify=verify)
        assert f"<root>.n_rep: 3 -> {3 - k}" in slim.rewrite_log
        assert "<root>: literal sizes in forward patched by hooks" in slim.rewrite_log
        for inputs in [(x,), (torch.randn(3, 9, 10),)]:
            rep = verify_pruning(ir, labels, example_inputs=inputs)
            assert rep.max_abs_diff < 1e-5, rep
        buf = io.BytesIO()
        torch.save(slim.model, buf, pickle_module=dill)
        buf.seek(0)
        loaded = torch.load(buf, pickle_module=dill, weights_only=False)
        y = torch.randn(4, 6, 10)
        assert torch.equal(loaded(y), slim.model(y))


def test_sdpa_fallback_kernel_does_not_shift_the_literal_patch() -> None:
    """Heads and v head dims of :class:`AttentionPoolNet` prune, alone and together, exactly
    (the old patch counted the math kernel's views as the module's and left the final
    reshape at the old width: heads and v dims were refused by the probe, and pruning them
    with the q/k dims failed verification). With the q/k dims too, the only difference is the
    listed attention scale."""
    torch.manual_seed(0)
    model = AttentionPoolNet().eval()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 6, 24),))
    by_members = {tuple(sorted(g.members)): g for g in ir.prunable_label_groups()}
    heads = next(g for m, g in by_members.items() if ("v.weight", 0) in m and ("k.weight", 0) in m)
    v_dims = next(g for m, g in by_members.items() if ("v.weight", 0) in m and ("k.weight", 0) not in m)
    qk_dims = next(g for m, g in by_members.items() if ("v.weight", 0) not in m)
    assert (heads.size, v_dims.size, qk_dims.size) == (3, 8, 8)
    other = (torch.randn(3, 5, 24),)
    for labels in (ir.labels(heads)[:1], ir.labels(v_dims)[:3], ir.labels(heads)[1:2] + ir.labels(v_dims)[2:5]):
        for inputs in (None, other):
            rep = verify_pruning(ir, labels, example_inputs=inputs)
            assert rep.exact and rep.params_after < rep.params_before, rep
    every = ir.labels(heads)[:1] + ir.labels(v_dims)[:3] + ir.labels(qk_dims)[:2]
    rep = verify_pruning(ir, every)
    assert not rep.exact and len(rep.inexact_reasons) == 1 and "attention scale" in rep.inexact_reasons[0], rep
