"""Builds that used to take minutes (HF sweep: DiffLlama, Mask2Former), pinned by behaviour.

* One-slot factors: unifying ``1 x 1 x Y`` with ``Y`` split ``Y`` into ``1 x Y'`` (no smaller
  leaf) and restarted until the restart cap, with ever longer layouts: minutes, then a
  spurious refusal. It now ends at once, leaves ``Y`` whole, and still cuts a one-slot slice
  of a longer leaf out of it.
* Negative slice bounds over rigid axes (``y[:, -1:, :]`` on a spatial axis): the recorded
  size fact read as changed in every prune, so a literal patch was installed on a module that
  holds no channel size, broke it, and the build-time probe marked every group unprunable
  (after bisecting them all).
* The cached ``SpaceTable.normalize`` follows every refinement and pickles without its cache.
* Output shapes drawn at random (VITS): every probe failed by chance, and the probe bisected
  all groups one by one. The unpruned model is now seen to vary first.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning
from pruning_ir._ir.spaces import SpaceTable


def leaf(sp: SpaceTable, n: int) -> int:
    return sp.new_leaf(n, f"l{n}")[0][0][0]


def one_slot_leaf(sp: SpaceTable) -> int:
    """A free (not rigid) leaf of one slot, as a cut makes them: slot 0 of two size-2 leaves
    meet, each is cut out of its leaf, and the two one-slot pieces are linked."""
    a, b = leaf(sp, 2), leaf(sp, 2)
    sp.unify((((a, 0, 1),),), (((b, 0, 1),),))
    (((one, s, e),),) = sp.normalize((((a, 0, 1),),))
    assert (s, e) == (0, 1) and sp.size[one] == 1 and one not in sp.rigid
    return one


def test_unify_of_a_leaf_with_itself_times_one_slot_factors_ends_at_once() -> None:
    sp = SpaceTable()
    p, q, y = one_slot_leaf(sp), one_slot_leaf(sp), leaf(sp, 3)
    n = len(sp.size)
    sp.unify((((p, 0, 1), (q, 0, 1), (y, 0, 3)),), (((y, 0, 3),),))  # 1 x 1 x Y == Y
    assert len(sp.size) == n  # nothing refined
    assert sp.normalize((((y, 0, 3),),)) == (((y, 0, 3),),)
    assert y in sp.groups() and y not in sp.rigid


def test_one_slot_slice_of_a_longer_leaf_is_still_cut_out() -> None:
    """Slot 2 of H (4 heads) times D (5 features) meets X (5): head 2 alone feeds X, so it
    cannot be removed (X would lose every entry): it becomes its own one-slot piece, the
    other heads stay removable, and X's channels are D's. The same with X replaced by D
    itself (``H[2] x D == D``, the self-referential form that used to loop)."""
    for self_ref in (False, True):
        sp = SpaceTable()
        h, d, x = leaf(sp, 4), leaf(sp, 5), leaf(sp, 5)
        other = d if self_ref else x
        sp.unify((((h, 2, 3), (d, 0, 5)),), (((other, 0, 5),),))
        pieces = [t[0][2] - t[0][1] for t in sp.normalize((((h, 0, 4),),))]
        assert pieces == [2, 1, 1]
        (term,) = sp.normalize((((other, 0, 5),),))
        assert term[-1] == (sp.find(d), 0, 5) and all(e - s == 1 for _, s, e in term[:-1])
        assert sp.find(d) in sp.groups() and sp.size[sp.find(d)] == 5


def test_normalize_cache_follows_refinements_and_is_not_pickled() -> None:
    sp = SpaceTable()
    q = leaf(sp, 12)
    lay = (((q, 0, 12),),)
    assert sp.normalize(lay) == lay
    sp.split2(lay, 3, 4)  # q now reads as heads x features
    (term,) = sp.normalize(lay)
    assert [e - s for _, s, e in term] == [3, 4]
    heads = term[0][0]
    other = leaf(sp, 3)
    sp.unify((((heads, 0, 3),),), (((other, 0, 3),),))
    assert sp.normalize(lay)[0][0][0] == sp.find(heads)
    state = pickle.dumps(sp)
    assert b"_normal" in state
    back = pickle.loads(state)
    assert back._normal == {} and back.normalize(lay) == sp.normalize(lay)


class SinePosition(nn.Module):
    """DETR/Mask2Former-style position embedding: ramps over the spatial axes normalised by
    their last entry (``y[:, -1:, :]``). It holds no channel size."""

    def forward(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        b, _, h, w = shape
        y = torch.arange(1, h + 1, dtype=dtype)[None, :, None].expand(b, h, w)
        x = torch.arange(1, w + 1, dtype=dtype)[None, None, :].expand(b, h, w)
        y = y / (y[:, -1:, :] + 1e-6)
        x = x / (x[:, :, -1:] + 1e-6)
        return torch.stack((y, x), dim=1)  # (B, 2, H, W)


class TwoScalePositions(nn.Module):
    """Case: negative slice starts over rigid spatial axes, at two scales (4x6 and 2x3).
    Coupling: inp out (6) with mid in; mid out (4) with out in, at both scales."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, 6, 1)
        self.mid = nn.Conv2d(6, 4, 1)
        self.pos = SinePosition()
        self.out = nn.Conv2d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.mid(torch.relu(self.inp(x)))  # (B, 4, 4, 6)
        g = nn.functional.avg_pool2d(f, 2)  # (B, 4, 2, 3)
        p, q = self.pos(f.shape, f.dtype), self.pos(g.shape, g.dtype)
        return self.out(f + p.sum(1, keepdim=True)), self.out(g + q.sum(1, keepdim=True))


def test_negative_slice_over_a_rigid_axis_patches_nothing_and_groups_stay_prunable() -> None:
    torch.manual_seed(0)
    model = TwoScalePositions().eval()
    x = (torch.randn(2, 3, 4, 6),)
    ir = PruningIR(model, example_inputs=x)
    assert sorted(g.size for g in ir.prunable_label_groups()) == [4, 6], ir.report()
    for g in ir.prunable_label_groups():
        rep = verify_pruning(ir, ir.labels(g)[:2])
        assert rep.exact and rep.params_after < rep.params_before
        slim = ir.prune(labels=ir.labels(g)[:2])
        assert not any("pos" in line for line in slim.rewrite_log), slim.rewrite_log


def test_diffllama_builds_and_prunes() -> None:
    """DiffLlama: ``repeat_kv`` over a chunked value head axis leaves one-slot factors around
    the kv-head leaf, and ``num_key_value_groups`` ties layouts ``1 x 1 x Y`` and ``Y``."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "DiffLlamaForCausalLM"):
        pytest.skip("this transformers has no DiffLlama")
    torch.manual_seed(0)
    config = transformers.DiffLlamaConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=99)
    model = transformers.DiffLlamaForCausalLM(config).eval()
    ids = torch.randint(3, 99, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[-1, -2:] = 0  # right padding
    ir = PruningIR(model, example_inputs=(ids,), example_kwargs={"attention_mask": mask})
    assert not any(i.kind == "tie" for i in ir.snapshot().issues), ir.report()
    assert len(ir.prunable_label_groups()) >= 4, ir.report()
    labels = UniformLabelSelector(0.3).select(ir)
    rep = verify_pruning(ir, labels)
    assert rep.params_after < rep.params_before
    assert rep.exact or rep.inexact_reasons, rep


class RandomLength(nn.Module):
    """Case: the output length is drawn in forward (``repeat`` by a random count, like VITS's
    stochastic durations). Coupling: lin out (6) with out in."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.out(torch.relu(self.lin(x)))  # (B, 3)
        n = int(torch.randint(1, 100, ()).item())
        return h.repeat(n, 1)  # (n * B, 3)


def test_random_output_shapes_make_every_group_uncheckable_without_probing_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe of such a model fails by chance (VITS: 70 groups, 139 probe prunes, minutes).
    The probe sees the unpruned model change its output shapes and stops there."""
    calls: list[int] = []
    prune = PruningIR.prune

    def counting_prune(self: PruningIR, *args: object, **kwargs: object) -> PruningIR:
        calls.append(1)
        return prune(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PruningIR, "prune", counting_prune)
    torch.manual_seed(0)
    ir = PruningIR(RandomLength().eval(), example_inputs=(torch.randn(2, 4),))
    assert calls == []  # no probe prune ran
    assert ir.prunable_label_groups() == []
    hidden = next(g for g in ir.label_groups() if ("lin.weight", 0) in g.members)
    assert hidden.reason.startswith("pruning it cannot be checked: the unpruned RandomLength itself changes")
