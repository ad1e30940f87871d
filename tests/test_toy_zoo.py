"""Each toy model isolates one coupling case; the expected label groups are read off the
docstrings in toy_zoo.py (hand-set known answers), then the full battery runs."""

from __future__ import annotations

import pytest
import torch
from checks import check_battery
from torch import nn
from toy_zoo import TOY_CASES, FusedQKVAttention

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning

EXPECTED_GROUPS: dict[str, list[int]] = {
    "chain": [6, 10],
    "mlp": [12, 18],
    "residual": [6, 10],
    "residual_downsample": [6, 10, 14],
    "se_gate": [6, 10],
    "concat": [6, 11],
    "inception": [5, 6, 7, 10, 11],
    "split_chunk": [5, 7, 8, 11],
    "split_add": [6, 10],
    "channel_shuffle": [6, 10],  # the two shuffled halves share one group of 6
    "flatten_linear": [6, 11, 13],
    "permute_linear": [10, 40],
    "grouped_conv": [3, 4, 5],  # 4 conv groups x (3 in, 5 out) per group
    "depthwise": [6, 22],
    "groupnorm": [3, 5],  # 3 norm groups x 5 channels
    "rmsnorm": [12, 18],
    "mha_separate": [3, 5],  # 3 heads, 5 features per head (q/k/v tied by head_dim)
    "mha_fused": [4, 5],
    "mha_sdpa": [3, 5],
    "mha_torch": [3, 5, 5, 15],  # nn.MultiheadAttention: 3 heads, q/k and v features per head, embed
    "gqa": [2, 3, 4],  # 2 kv heads, 3 query heads per kv head, head_dim 4
    "gqa_repeat_interleave": [2, 3, 4],
    "embedding_tied": [14, 22],
    "cls_token_pos": [10],
    "conv1d_hf": [26],
    "unknown_op": [10],
    "data_dependent_index": [],
    "multi_input_output": [6],
    "conv_transpose": [6, 10],
    "pixel_shuffle": [5],
    "lstm_free_1d": [6, 10, 14],
    "literal_groups_slice": [3, 3, 4],  # 4 conv groups; channels per group split by the literal slices
}


def test_every_toy_case_has_an_expectation() -> None:
    assert set(EXPECTED_GROUPS) == set(TOY_CASES)


@pytest.mark.parametrize("name", sorted(TOY_CASES))
def test_label_groups(name: str) -> None:
    model, x = TOY_CASES[name]()
    ir = PruningIR(model, example_inputs=x)
    assert sorted(g.size for g in ir.prunable_label_groups()) == EXPECTED_GROUPS[name], ir.report()


@pytest.mark.parametrize("name", sorted(TOY_CASES))
def test_battery(name: str) -> None:
    model, x = TOY_CASES[name]()
    check_battery(model, x, expect_prunable=bool(EXPECTED_GROUPS[name]))


def test_unknown_op_is_reported() -> None:
    model, x = TOY_CASES["unknown_op"]()
    ir = PruningIR(model, example_inputs=x)
    assert "aten._fft_r2c" in ir.report()


class _CustomMHA(nn.MultiheadAttention):
    """A subclass with its own forward over the stock functional code (whose Python ties the
    inner width to ``embed_dim``): not traced through pruning_ir's explicit forward."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: object) -> tuple[torch.Tensor, None]:
        return super().forward(q, k, v, need_weights=False)[0] * 2, None


def test_multihead_attention_subclass_with_own_forward_is_reported() -> None:
    model, x = TOY_CASES["mha_torch"]()
    model.attn.__class__ = _CustomMHA
    ir = PruningIR(model, example_inputs=x)
    assert "MultiheadAttention 'attn' ties its inner width to embed_dim" in ir.report()
    assert not any("attn.in_proj_weight" in name for g in ir.prunable_label_groups() for name, _ in g.members)


def test_literal_equal_to_a_size_attribute_is_resolved_by_verification() -> None:
    """With 3 heads, the literal 3 of ``reshape(b, s, 3, num_heads, head_dim)`` equals
    ``num_heads``: one op takes the value 3 for two different axes, so the engine does not tie
    them by that attribute (only one of them can be it); the heads prune (the head count in
    the reshape is rewritten, by the attribute or a run-time patch, as verification settles)
    and the literal 3 stays."""

    class ThreeHeads(FusedQKVAttention):
        num_heads = 3

    torch.manual_seed(0)
    model = ThreeHeads().eval()
    x = (torch.randn(2, 7, 14),)
    ir = PruningIR(model, example_inputs=x)
    assert sorted(g.size for g in ir.prunable_label_groups()) == [3, 5]
    heads = next(g for g in ir.prunable_label_groups() if g.size == 3)
    slim = ir.prune(labels=ir.labels(heads)[:1]).model
    assert slim.proj.in_features == 10 and slim.qkv.out_features == 30
    check_battery(model, x)


def test_vector_products_couple_their_operands() -> None:
    """torch.mv(w, h) and torch.vdot(a, h): the hidden channels of h are coupled with w's
    columns / a's entries and prune exactly (their rules read the schema's argument names)."""
    class MV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 8))
            self.a = nn.Parameter(torch.randn(8))
            self.fc = nn.Linear(3, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc(x))
            return torch.mv(self.w, h) + torch.vdot(self.a, h)

    ir = PruningIR(MV(), example_inputs=(torch.randn(3),))
    assert [g.size for g in ir.prunable_label_groups()] == [8], ir.report()
    labels = UniformLabelSelector(0.5).select(ir)
    assert verify_pruning(ir, labels).exact
    assert ir.prune(labels=labels).model.w.shape == (4, 4)


def test_gradients_follow_run_time_literal_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A patch rewrites ``groups=4`` and slice bounds below autograd; gradients must follow the
    rewritten calls. Oracle: the masked original's gradients on the kept entries, on random
    selections; and with the gradient replay switched off the same check must fail (the old
    behaviour: backward raised or placed gradients at the old slice positions)."""
    import random

    import pruning_ir._rewrite.hooks as hooks

    model, x = TOY_CASES["literal_groups_slice"]()
    ir = PruningIR(model, example_inputs=x)
    gen = random.Random(0)
    selections = [[lab for g in ir.prunable_label_groups() for lab in gen.sample(ir.labels(g), g.size // 2)]
                  for _ in range(3)]
    for labels in selections:
        assert any("patched by hooks" in line for line in ir.prune(labels=labels).rewrite_log)
        rep = verify_pruning(ir, labels)
        assert rep.exact and all(c.max_grad_diff is not None for c in rep.checks), rep
    monkeypatch.setattr(hooks, "replace_outputs", lambda tape, out: out)
    assert not any(verify_pruning(ir, labels).exact for labels in selections)


def test_selection_that_empties_a_concatenation_of_slices_is_refused() -> None:
    """Every group keeps labels, yet ``cat(h[:, 2:6], h[:, 9:12])`` loses all 7 channels when the
    conv groups behind both slices go: a clear LabelError naming the parameter, not a slim model
    whose next layer has 0 input channels (known answer: conv groups 0, 1 and 3 feed the slices)."""
    from pruning_ir.errors import LabelError

    model, x = TOY_CASES["literal_groups_slice"]()
    ir = PruningIR(model, example_inputs=x)
    heads = next(g for g in ir.prunable_label_groups() if g.size == 4)
    labels = [ir.labels(heads)[i] for i in (0, 1, 3)]
    with pytest.raises(LabelError, match=r"none of out\.weight's axis 1"):
        ir.prune(labels=labels)
    ir.prune(labels=labels[:2])  # one slice left: prunes


def test_selectors_never_empty_a_concatenation_of_slices() -> None:
    """Scores that make every selector want conv groups 0, 1 and 3 (the ones behind both
    slices) gone: each must keep a channel of ``out``'s input (known answer: the toy above)."""
    from pruning_ir import (
        GlobalScoreLabelSelector,
        KnapsackLabelSelector,
        MacsLatency,
        UniformLabelSelector,
    )

    model, x = TOY_CASES["literal_groups_slice"]()
    ir = PruningIR(model, example_inputs=x)
    snap = ir.snapshot()
    heads = next(g for g in ir.prunable_label_groups() if g.size == 4)
    for g in ir.prunable_label_groups():
        snap.scores[g.gid] = torch.full((g.size,), 10.0, dtype=torch.float64)
    snap.scores[heads.gid] = torch.tensor([0.0, 0.1, 5.0, 0.2], dtype=torch.float64)
    fn = MacsLatency(x)
    selectors = [UniformLabelSelector(0.75), GlobalScoreLabelSelector(3),
                 KnapsackLabelSelector(0.3 * fn(model), fn, verbose=False)]
    for sel in selectors:
        labels = sel.select(ir)
        slim = ir.prune(labels=labels).model  # no LabelError
        assert slim.out.in_channels >= 1, sel
        assert verify_pruning(ir, labels).exact, sel
