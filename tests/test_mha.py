"""``nn.MultiheadAttention`` and the ``nn.Transformer*`` layers built on it.

Oracles: the stock module (``mha_forward`` must compute what ``nn.MultiheadAttention``
computes for every option), the equivalence battery of ``checks.check_battery``
(ratio 0 bit-identical, slim ≡ masked original, backward, user model unchanged,
dill round-trips), and hand-counted group sizes.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from checks import check_battery
from torch import nn

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning
from pruning_ir.modules import PrunedMultiheadAttention, mha_forward

E, H = 24, 4  # embed dim, heads (head_dim 6)


def _inputs(bf: bool, b: int, n: int, e: int) -> torch.Tensor:
    return torch.randn(b, n, e) if bf else torch.randn(n, b, e)


OPTIONS = list(itertools.product([True, False], [False, True], [False, True], [True, False], [False, True]))


@pytest.mark.parametrize(("bias", "bias_kv", "zero_attn", "batch_first", "separate"), OPTIONS)
def test_explicit_forward_matches_stock(bias: bool, bias_kv: bool, zero_attn: bool, batch_first: bool,
                                        separate: bool) -> None:
    torch.manual_seed(0)
    kw = {"kdim": 6, "vdim": 5} if separate else {}
    m = nn.MultiheadAttention(12, 3, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn,
                              batch_first=batch_first, **kw).eval()
    b, n_q, n_k = 2, 4, 5
    q = _inputs(batch_first, b, n_q, 12)
    k = _inputs(batch_first, b, n_k, 6 if separate else 12)
    v = _inputs(batch_first, b, n_k, 5 if separate else 12)
    masks: list[dict[str, torch.Tensor | bool]] = [
        {},
        {"attn_mask": torch.rand(n_q, n_k) > 0.7},
        {"attn_mask": torch.randn(b * 3, n_q, n_k)},
        {"key_padding_mask": torch.tensor([[False] * 4 + [True]] * b)},
        {"key_padding_mask": torch.randn(b, n_k), "attn_mask": torch.randn(n_q, n_k)},
        {"attn_mask": torch.triu(torch.ones(n_q, n_k, dtype=torch.bool), 1), "is_causal": True},
    ]
    for mask, (need, avg) in itertools.product(masks, [(True, True), (True, False), (False, True)]):
        ref_out, ref_w = m(q, k, v, need_weights=need, average_attn_weights=avg, **mask)
        out, w = mha_forward(m, q, k, v, need_weights=need, average_attn_weights=avg, **mask)  # type: ignore[arg-type]
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
        if need:
            assert w is not None and ref_w is not None
            torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
        else:
            assert w is None and ref_w is None
    # unbatched (2-D) inputs, with a per-head 3-D mask
    qu, ku, vu = q[0] if batch_first else q[:, 0], k[0] if batch_first else k[:, 0], v[0] if batch_first else v[:, 0]
    mask3 = torch.randn(3, n_q, n_k)
    for ref, got in zip(m(qu, ku, vu, attn_mask=mask3), mha_forward(m, qu, ku, vu, attn_mask=mask3), strict=True):
        assert ref is not None and got is not None
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="is_causal=True needs attn_mask"):
        mha_forward(m, q, k, v, is_causal=True)


class SelfAttention(nn.Module):
    """Case: ``x + mha(h, h, h)``: residual width 24, 4 heads of 6 q/k and 6 v features."""

    def __init__(self, batch_first: bool = True, bias: bool = True, need_weights: bool = False,
                 bias_kv: bool = False, zero_attn: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(10, E)
        self.mha = nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first, add_bias_kv=bias_kv,
                                         add_zero_attn=zero_attn)
        self.out = nn.Linear(E, 3)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.mha(h, h, h, need_weights=self.need_weights)
        return self.out(torch.relu(a + h))


def _groups(ir: PruningIR) -> list[tuple[int, bool]]:
    return sorted((g.size, g.structured) for g in ir.prunable_label_groups())


@pytest.mark.parametrize(("batch_first", "bias", "need_weights", "bias_kv", "zero_attn"),
                         [(True, True, False, False, False), (False, True, True, False, False),
                          (True, False, True, False, False), (True, True, False, True, True),
                          (False, True, False, True, False)])
def test_self_attention_prunes(batch_first: bool, bias: bool, need_weights: bool, bias_kv: bool,
                               zero_attn: bool) -> None:
    torch.manual_seed(0)
    model = SelfAttention(batch_first, bias, need_weights, bias_kv, zero_attn).eval()
    x = _inputs(batch_first, 2, 5, 10)
    ir = check_battery(model, (x,))
    # residual (24), heads (4, whole heads), q/k features per head (6), v features per head (6)
    assert _groups(ir) == [(4, True), (6, False), (6, False), (24, False)], ir.report()
    pruned = ir.prune(labels=UniformLabelSelector(0.5).select(ir))
    mha = pruned.model.mha
    assert isinstance(mha, PrunedMultiheadAttention) and isinstance(mha, nn.MultiheadAttention)
    assert (mha.embed_dim, mha.num_heads, mha.head_dim, mha.v_head_dim) == (12, 2, 3, 3)
    assert mha.scaling == pytest.approx(6 ** -0.5)  # the original scale: slim ≡ masked
    assert type(model.mha) is nn.MultiheadAttention  # the user's module is untouched


def test_single_groups_prune_exactly() -> None:
    """Each group alone, one and all-but-one labels: exact against the masked original."""
    torch.manual_seed(0)
    model = SelfAttention(need_weights=True).eval()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 5, 10),))
    for g in ir.prunable_label_groups():
        labels = ir.labels(g)
        for chosen in (labels[:1], labels[1:]):
            rep = verify_pruning(ir, chosen)
            assert rep.exact and not rep.inexact_reasons, (g, rep)


class CrossAttention(nn.Module):
    """Case: queries from ``x`` (width 16), keys/values from ``mem`` (kdim 7, vdim 7 through
    separate projection weights): the inner widths prune, the inputs keep their shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.q_in = nn.Linear(9, 16)
        self.mha = nn.MultiheadAttention(16, 2, kdim=7, vdim=7, batch_first=True)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.q_in(x)
        a, _ = self.mha(h, mem, mem, key_padding_mask=pad)
        return self.out(a + h)


def test_cross_attention_with_padding_mask() -> None:
    torch.manual_seed(0)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    ir = check_battery(CrossAttention().eval(), (torch.randn(2, 3, 9), torch.randn(2, 6, 7), pad))
    assert _groups(ir) == [(2, True), (8, False), (8, False), (16, False)], ir.report()


class PerHeadMask(nn.Module):
    """Case: a (B*H, L, S) attention mask given as input: its head axis is a model input, so
    whole heads cannot be pruned; the within-head features and the residual still can."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(E, H, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0] + x


def test_per_head_mask_pins_heads() -> None:
    torch.manual_seed(0)
    model = PerHeadMask().eval()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 5, E), torch.randn(2 * H, 5, 5)), keep_io_shapes=False)
    sizes = _groups(ir)
    assert (4, True) not in sizes and (6, False) in sizes, ir.report()
    labels = UniformLabelSelector(0.3).select(ir)
    assert verify_pruning(ir, labels).exact


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=40, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)


class Encoder(nn.Module):
    """Case: ``nn.TransformerEncoder`` of 2 post-norm layers, with a padding mask (eval mode
    would run PyTorch's fused encoder kernel and its nested-tensor path on the stock model)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(10, E)
        self.enc = _encoder()
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.embed(x), src_key_padding_mask=pad)[:, 0])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_transformer_encoder_fast_paths() -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(2, 5, 10)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    ir = check_battery(model, (x, pad))
    pruned = ir.prune(labels=UniformLabelSelector(0.5).select(ir))
    slim = pruned.model
    assert not slim.enc.use_nested_tensor
    assert all(isinstance(layer.self_attn, PrunedMultiheadAttention) for layer in slim.enc.layers)
    # under no_grad in eval, the stock layers would take torch's fused kernels; the slim ones
    # must not, and still match the masked original on the unpadded positions
    rep = verify_pruning(ir, UniformLabelSelector(0.5).select(ir))
    assert rep.exact or rep.inexact_reasons
    with torch.no_grad():
        out = slim(x, pad)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


class Decoder(nn.Module):
    """Case: ``nn.TransformerDecoderLayer`` (self-attention with a causal mask, then
    cross-attention on an encoder memory of the same width)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(10, E)
        self.mem = nn.Linear(8, E)
        self.dec = nn.TransformerDecoderLayer(E, H, dim_feedforward=32, batch_first=True, norm_first=True)
        self.head = nn.Linear(E, 5)

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.dec(self.embed(x), self.mem(mem), tgt_mask=causal, tgt_is_causal=True))


def test_transformer_decoder_layer() -> None:
    torch.manual_seed(0)
    ir = check_battery(Decoder().eval(), (torch.randn(2, 4, 10), torch.randn(2, 6, 8)))
    # residual 24, FFN 32, and for each of the two attentions: heads, q/k and v features
    assert _groups(ir) == [(4, True), (4, True), (6, False), (6, False), (6, False), (6, False),
                           (24, False), (32, False)], ir.report()


def test_unbatched_input() -> None:
    torch.manual_seed(0)
    model = SelfAttention(need_weights=True).eval()
    check_battery(model, (torch.randn(5, 10),))


def test_train_mode_and_dropout() -> None:
    """A model traced in train mode (dropout on the attention weights) prunes and trains; in
    eval the slim model equals the masked original on the groups without listed notes (the
    residual is normalised by LayerNorm, so it has one)."""
    torch.manual_seed(0)
    model = Encoder().train()
    x, pad = torch.randn(2, 5, 10), torch.zeros(2, 5, dtype=torch.bool)
    ir = PruningIR(model, example_inputs=(x, pad))
    labels = [lab for lab in UniformLabelSelector(0.3).select(ir) if not ir.label_groups()[lab.group].notes]
    assert labels
    pruned = ir.prune(labels=labels)
    pruned.model(x, pad).sum().backward()
    model.eval()
    pruned.model.eval()
    from pruning_ir.oracle import masked_model

    ref = masked_model(ir, labels).eval()
    torch.testing.assert_close(pruned.model(x, pad), ref(x, pad), rtol=1e-4, atol=1e-5)
