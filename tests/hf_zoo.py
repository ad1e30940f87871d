"""Tiny random-init HuggingFace ``transformers`` models for structured-pruning tests.

Every factory here builds a small model *from a config object only* (no downloads, no
network), puts it in ``eval()`` mode and returns a :class:`ZooCase` with example inputs.
The models are deliberately tiny (well under 1M parameters, forward in milliseconds on
CPU) but keep the real architecture: multi-head / grouped-query attention, rotary
embeddings, gated MLPs, tied embeddings, encoder-decoder cross-attention, windowed
attention, depthwise convolutions, etc.

Dimensions are chosen to be pairwise *distinct* so that a transposed or mixed-up axis
fails loudly instead of silently broadcasting. The common text shape is::

    hidden 48 = 4 heads x 12   (LLaMA-style GQA: 6 query heads x 8, 2 kv heads)
    intermediate 80, 2 layers, vocab 101, batch 2, sequence length 7

Transformer vision models use 32x32 images (patch 8 where applicable); CNNs use
64x96 (non-square) images; Whisper uses 16 mel bins and 24 input frames.

After the default HF initialisation, tensors that are constant (LayerNorm/RMSNorm
weights of 1, zero biases, BatchNorm running stats, ConvNeXt layer scale) get small
seeded noise (:func:`tests.zoo_types.perturb_constant_tensors`), so slicing them with
wrong indices changes the output. Everything is deterministic: factories seed with
``torch.manual_seed(0)`` and inputs come from fixed ``torch.Generator`` seeds.

Usage::

    from tests.hf_zoo import HF_CASES, hf_available
    case = HF_CASES["llama"]()
    y = case.run()  # output_to_tensor(model(*inputs, **kwargs)) under no_grad

Run ``python tests/hf_zoo.py`` to build every case, run it once and print shapes,
parameter counts and timings.

All ``transformers`` imports are local to the factories so this module can be imported
(e.g. for test collection) even when ``transformers`` is not installed; guard tests with
:func:`hf_available`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

# Works both as ``tests.hf_zoo`` and with ``tests/`` itself on sys.path (pytest rootdir
# import mode, or ``python tests/hf_zoo.py``).
try:
    from tests.zoo_types import ZooCase, perturb_constant_tensors, self_check
except ImportError:  # pragma: no cover - depends on how the file is imported
    from zoo_types import ZooCase, perturb_constant_tensors, self_check  # type: ignore[no-redef]

__all__ = ["HF_CASES", "ZooCase", "hf_available"]

# ----------------------------------------------------------------------------- sizes
BATCH = 2
SEQ = 7
VOCAB = 101
HIDDEN = 48
HEADS = 4  # head_dim 12
INTER = 80
LAYERS = 2
MAX_POS = 64
# LLaMA-family GQA shape
GQA_HEADS = 6
GQA_KV_HEADS = 2
GQA_HEAD_DIM = 8
# vision
IMG = 32
PATCH = 8
# CNNs take non-square inputs (H != W) so that the final feature map is 2x3, not 1x1.
CNN_IMG = (64, 96)


def hf_available() -> bool:
    """Whether ``transformers`` is importable (needed by :data:`HF_CASES`)."""
    return importlib.util.find_spec("transformers") is not None


# ----------------------------------------------------------------------------- helpers
def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def _input_ids(
    batch: int = BATCH, seq: int = SEQ, vocab: int = VOCAB, low: int = 3
) -> torch.Tensor:
    """Random token ids avoiding the small ids typically used for pad/bos/eos."""
    return torch.randint(low, vocab, (batch, seq), generator=_gen())


def _padded_attention_mask(batch: int = BATCH, seq: int = SEQ) -> torch.Tensor:
    """All ones except the last two positions of the last row (right padding)."""
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, -2:] = 0
    return mask


def _pixels(
    batch: int = BATCH, size: int | tuple[int, int] = IMG, channels: int = 3
) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, channels, h, w, generator=_gen())


def _build(model_cls: type, config: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    model = model_cls(config)
    perturb_constant_tensors(model, seed=0)
    return model.eval()


def _last_hidden(out: Any) -> torch.Tensor:
    return out.last_hidden_state


def _logits(out: Any) -> torch.Tensor:
    return out.logits


def _pooler(out: Any) -> torch.Tensor:
    return out.pooler_output


# ------------------------------------------------------------------ encoders (text)
def _bert(attn: str, name: str) -> ZooCase:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        max_position_embeddings=MAX_POS,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return ZooCase(
        name=name,
        model=_build(BertModel, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"attention_mask": _padded_attention_mask()},
        output_to_tensor=_last_hidden,
    )


def bert() -> ZooCase:
    """BertModel (post-LN encoder + pooler), eager attention, right-padded mask."""
    return _bert("eager", "bert")


def bert_sdpa() -> ZooCase:
    """Same as :func:`bert` but with ``attn_implementation="sdpa"``."""
    return _bert("sdpa", "bert_sdpa")


def roberta() -> ZooCase:
    """RobertaModel (padding-offset position ids, pad_token_id=1)."""
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        max_position_embeddings=MAX_POS,
        type_vocab_size=1,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return ZooCase(
        name="roberta",
        model=_build(RobertaModel, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"attention_mask": _padded_attention_mask()},
        output_to_tensor=_last_hidden,
    )


def distilbert() -> ZooCase:
    """DistilBertModel (q_lin/k_lin/v_lin/out_lin attention, ffn.lin1/lin2)."""
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=VOCAB,
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=INTER,
        max_position_embeddings=MAX_POS,
        dropout=0.0,
        attention_dropout=0.0,
        attn_implementation="eager",
    )
    return ZooCase(
        name="distilbert",
        model=_build(DistilBertModel, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"attention_mask": _padded_attention_mask()},
        output_to_tensor=_last_hidden,
    )


# -------------------------------------------------------------- decoders (causal LM)
def gpt2() -> ZooCase:
    """GPT2LMHeadModel: fused c_attn Conv1D (weight is [in, out]!), tied lm_head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=MAX_POS,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=INTER,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return ZooCase(
        name="gpt2",
        model=_build(GPT2LMHeadModel, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"use_cache": False},
        output_to_tensor=_logits,
    )


def _llama(attn: str, name: str) -> ZooCase:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=GQA_HEADS,
        num_key_value_heads=GQA_KV_HEADS,
        head_dim=GQA_HEAD_DIM,
        max_position_embeddings=MAX_POS,
        tie_word_embeddings=False,
        attn_implementation=attn,
    )
    return ZooCase(
        name=name,
        model=_build(LlamaForCausalLM, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"use_cache": False},
        output_to_tensor=_logits,
    )


def llama() -> ZooCase:
    """LlamaForCausalLM, GQA: 6 q heads, 2 kv heads, head_dim 8 (q 48, kv 16), eager."""
    return _llama("eager", "llama")


def llama_sdpa() -> ZooCase:
    """Same as :func:`llama` but with ``attn_implementation="sdpa"``."""
    return _llama("sdpa", "llama_sdpa")


def mistral() -> ZooCase:
    """MistralForCausalLM: GQA (head layout as :func:`llama`) + sliding window 4."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=GQA_HEADS,
        num_key_value_heads=GQA_KV_HEADS,
        head_dim=GQA_HEAD_DIM,
        max_position_embeddings=MAX_POS,
        sliding_window=4,  # shorter than SEQ so the window mask is exercised
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return ZooCase(
        name="mistral",
        model=_build(MistralForCausalLM, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"use_cache": False},
        output_to_tensor=_logits,
    )


def qwen2() -> ZooCase:
    """Qwen2ForCausalLM: GQA, q/k/v biases (no o_proj bias), tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=GQA_HEADS,
        num_key_value_heads=GQA_KV_HEADS,
        head_dim=GQA_HEAD_DIM,
        max_position_embeddings=MAX_POS,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return ZooCase(
        name="qwen2",
        model=_build(Qwen2ForCausalLM, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"use_cache": False},
        output_to_tensor=_logits,
    )


def phi() -> ZooCase:
    """PhiForCausalLM: parallel attn+MLP, partial rotary (0.5), ``dense`` o-proj."""
    from transformers import PhiConfig, PhiForCausalLM

    config = PhiConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POS,
        partial_rotary_factor=0.5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        attn_implementation="eager",
    )
    return ZooCase(
        name="phi",
        model=_build(PhiForCausalLM, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"use_cache": False},
        output_to_tensor=_logits,
    )


def gpt_neox() -> ZooCase:
    """GPTNeoXForCausalLM (Pythia): fused qkv laid out per head ``(H, 3 * head_dim)``, chunked
    into q/k/v, partial rotary (half of each head), parallel attention + MLP residual."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        max_position_embeddings=MAX_POS,
        rotary_pct=0.5,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    return ZooCase(
        name="gpt_neox",
        model=_build(GPTNeoXForCausalLM, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"use_cache": False},
        output_to_tensor=_logits,
    )


def opt() -> ZooCase:
    """OPTForCausalLM: pre-LN decoder, learned positions with offset 2, fc1/fc2 MLP."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        ffn_dim=INTER,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POS,
        word_embed_proj_dim=HIDDEN,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        attn_implementation="eager",
    )
    return ZooCase(
        name="opt",
        model=_build(OPTForCausalLM, config),
        example_inputs=(_input_ids(),),
        example_kwargs={"use_cache": False},
        output_to_tensor=_logits,
    )


# ------------------------------------------------------------------ encoder-decoder
def t5() -> ZooCase:
    """Full T5Model (encoder + decoder with cross-attention, relative position bias).

    ``d_kv * num_heads = 40 != d_model = 48`` on purpose: T5's attention inner dim is
    independent of the model width.
    """
    from transformers import T5Config, T5Model

    config = T5Config(
        vocab_size=VOCAB,
        d_model=HIDDEN,
        d_kv=10,
        d_ff=INTER,
        num_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=HEADS,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        attn_implementation="eager",
    )
    decoder_input_ids = torch.randint(
        2, VOCAB, (BATCH, 5), generator=torch.Generator().manual_seed(99)
    )
    return ZooCase(
        name="t5",
        model=_build(T5Model, config),
        example_inputs=(_input_ids(),),
        example_kwargs={
            "attention_mask": _padded_attention_mask(),
            "decoder_input_ids": decoder_input_ids,
            "use_cache": False,
        },
        output_to_tensor=_last_hidden,
    )


# ----------------------------------------------------------------------------- vision
def vit() -> ZooCase:
    """ViTModel: 32x32 image, patch 8 -> 16 patches + CLS token, pre-LN encoder."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        image_size=IMG,
        patch_size=PATCH,
        num_channels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return ZooCase(
        name="vit",
        model=_build(ViTModel, config),
        example_inputs=(_pixels(),),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


def swin() -> ZooCase:
    """SwinModel: 32x32, patch 4 -> 8x8 tokens, window 4, shifts, patch merging.

    Stage 1 (8x8 tokens) alternates regular/shifted windows; stage 2 (4x4) has a single
    window, so HF disables the shift there.
    """
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(
        image_size=IMG,
        patch_size=4,
        num_channels=3,
        embed_dim=24,
        depths=[2, 2],
        num_heads=[2, 4],  # head_dim 12 in both stages (24/2, 48/4)
        window_size=4,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return ZooCase(
        name="swin",
        model=_build(SwinModel, config),
        example_inputs=(_pixels(),),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


def segformer() -> ZooCase:
    """SegformerModel: overlapping patch embeddings, spatial-reduction attention (keys and
    values from a strided conv over the token grid, ``reshape(b, num_channels, -1)`` with
    the *input* width, a size the code holds that pruning the conv changes), Mix-FFN with
    a depthwise conv.

    Stages of widths 16/24/40 (heads 1/2/4: head dims 16/12/10), reductions 4/2/1.
    """
    from transformers import SegformerConfig, SegformerModel

    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=3,
        depths=[1, 1, 1],
        sr_ratios=[4, 2, 1],
        hidden_sizes=[16, 24, 40],
        patch_sizes=[7, 3, 3],
        strides=[4, 2, 2],
        num_attention_heads=[1, 2, 4],
        mlp_ratios=[2, 2, 2],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return ZooCase(
        name="segformer",
        model=_build(SegformerModel, config),
        example_inputs=(_pixels(),),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


def convnext() -> ZooCase:
    """ConvNextModel: depthwise 7x7 conv, channels-last LN, Linear MLP, layer scale.

    ``layer_scale_init_value=0.5`` (default 1e-6) so residual branches really contribute
    to the output and pruning mistakes are visible.
    """
    from transformers import ConvNextConfig, ConvNextModel

    config = ConvNextConfig(
        num_channels=3,
        patch_size=4,
        num_stages=4,
        hidden_sizes=[16, 24, 40, 56],
        depths=[2, 1, 1, 1],
        image_size=IMG,
        layer_scale_init_value=0.5,
        drop_path_rate=0.0,
    )
    return ZooCase(
        name="convnext",
        model=_build(ConvNextModel, config),
        example_inputs=(_pixels(size=CNN_IMG),),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


def resnet() -> ZooCase:
    """ResNetModel with bottleneck blocks (reduction 4) and projection shortcuts."""
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(
        num_channels=3,
        embedding_size=16,
        hidden_sizes=[24, 32, 48, 64],
        depths=[1, 2, 1, 1],
        layer_type="bottleneck",
        hidden_act="relu",
    )
    return ZooCase(
        name="resnet",
        model=_build(ResNetModel, config),
        example_inputs=(_pixels(size=CNN_IMG),),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


def mobilenet_v2() -> ZooCase:
    """MobileNetV2Model: inverted residuals, depthwise 3x3 convs, width 0.35."""
    from transformers import MobileNetV2Config, MobileNetV2Model

    config = MobileNetV2Config(
        num_channels=3,
        image_size=IMG,
        depth_multiplier=0.35,
        finegrained_output=False,
    )
    return ZooCase(
        name="mobilenet_v2",
        model=_build(MobileNetV2Model, config),
        example_inputs=(_pixels(size=CNN_IMG),),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


def clip_vision() -> ZooCase:
    """CLIPVisionModel: pre-LN ViT, quick_gelu, pre/post LayerNorm, pooled CLS."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=IMG,
        patch_size=PATCH,
        num_channels=3,
        projection_dim=32,
        attention_dropout=0.0,
        attn_implementation="eager",
    )
    return ZooCase(
        name="clip_vision",
        model=_build(CLIPVisionModel, config),
        example_inputs=(_pixels(),),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


# ----------------------------------------------------------------------------- audio
WHISPER_MEL_BINS = 16
WHISPER_MAX_SOURCE_POSITIONS = 12  # input frames = 2 * 12 = 24 (conv2 has stride 2)


def whisper_encoder() -> ZooCase:
    """WhisperEncoder: conv1d stem (strides 1, 2), sinusoidal positions, pre-LN.

    ``input_features`` has shape ``(batch, num_mel_bins, 2 * max_source_positions)``.
    """
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=WHISPER_MEL_BINS,
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        encoder_ffn_dim=INTER,
        decoder_layers=LAYERS,
        decoder_attention_heads=HEADS,
        decoder_ffn_dim=INTER,
        max_source_positions=WHISPER_MAX_SOURCE_POSITIONS,
        max_target_positions=MAX_POS,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=2,
        begin_suppress_tokens=None,
        attn_implementation="eager",
    )
    features = torch.randn(
        BATCH, WHISPER_MEL_BINS, 2 * WHISPER_MAX_SOURCE_POSITIONS, generator=_gen()
    )
    return ZooCase(
        name="whisper_encoder",
        model=_build(WhisperEncoder, config),
        example_inputs=(features,),
        example_kwargs={},
        output_to_tensor=_last_hidden,
    )


# ----------------------------------------------------------------------------- registry
HF_CASES: dict[str, Callable[[], ZooCase]] = {
    "bert": bert,
    "bert_sdpa": bert_sdpa,
    "roberta": roberta,
    "distilbert": distilbert,
    "gpt2": gpt2,
    "llama": llama,
    "llama_sdpa": llama_sdpa,
    "mistral": mistral,
    "qwen2": qwen2,
    "phi": phi,
    "opt": opt,
    "gpt_neox": gpt_neox,
    "t5": t5,
    "vit": vit,
    "swin": swin,
    "segformer": segformer,
    "convnext": convnext,
    "resnet": resnet,
    "mobilenet_v2": mobilenet_v2,
    "clip_vision": clip_vision,
    "whisper_encoder": whisper_encoder,
}


if __name__ == "__main__":
    import sys

    if not hf_available():
        print("transformers is not installed")
        sys.exit(1)
    bad = self_check(HF_CASES)
    sys.exit(1 if bad else 0)
