"""Module classes the rewrite may install in a slim model.

``nn.MultiheadAttention`` computes ``head_dim = embed_dim // num_heads`` from the
width of its *input* and asserts that q, k and v have that width, so once heads
or within-head dimensions are pruned (the inner width no longer equals the
residual width), the stock class cannot run the slim weights. The rewrite then
changes the instance's class to :class:`PrunedMultiheadAttention`, a subclass
(``isinstance(m, nn.MultiheadAttention)`` stays true, the parameter names and the
state-dict keys are the same) whose forward allows independent widths.

:func:`mha_forward` is that forward, written with sizes read from the tensors and
from the module's attributes. The tracer runs every stock ``nn.MultiheadAttention``
through it (instead of the fused ``aten._native_multi_head_attention`` fast path
or the Python size checks of ``F.multi_head_attention_forward``), so heads,
within-head dimensions, the q·kᵀ contraction and the input widths come out of the
op rules like any other attention. It computes what the stock forward computes
(tested against it for every option: packed and separate projections, bias,
``add_bias_kv``, ``add_zero_attn``, ``batch_first``, unbatched inputs, boolean
and float masks of every accepted shape, ``need_weights`` with and without
averaging, ``is_causal``), up to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = not allowed) as an additive float mask; float masks pass through."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _sizes(mod: nn.MultiheadAttention) -> tuple[int, int, float]:
    """(q/k head width, v head width, softmax scale) of a stock or pruned module."""
    head_dim = int(mod.head_dim)
    v_head_dim = int(getattr(mod, "v_head_dim", head_dim))
    scale = float(getattr(mod, "scaling", 1.0 / math.sqrt(head_dim)))
    return head_dim, v_head_dim, scale


def mha_forward(mod: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention.forward`` with the inner widths decoupled from ``embed_dim``.

    Same arguments and results as the stock forward, including its treatment of the
    ``is_causal`` hint (it requires ``attn_mask``; without ``key_padding_mask`` and
    ``need_weights`` the mask is dropped and the attention kernel's causal mode is used).
    """
    if is_causal and attn_mask is None:
        raise RuntimeError(f"{type(mod).__name__}: is_causal=True needs attn_mask (as in nn.MultiheadAttention)")
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
    elif not mod.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    n_heads = int(mod.num_heads)
    head_dim, v_head_dim, scale = _sizes(mod)
    widths = [n_heads * head_dim, n_heads * head_dim, n_heads * v_head_dim]
    if mod.in_proj_weight is not None:
        w_q, w_k, w_v = mod.in_proj_weight.split(widths, dim=0)
    else:
        w_q, w_k, w_v = mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight
    b_q = b_k = b_v = None
    if mod.in_proj_bias is not None:
        b_q, b_k, b_v = mod.in_proj_bias.split(widths, dim=0)
    q = F.linear(query, w_q, b_q)
    k = F.linear(key, w_k, b_k)
    v = F.linear(value, w_v, b_v)
    bsz, tgt_len = q.shape[0], q.shape[1]

    causal = is_causal and key_padding_mask is None and not need_weights
    mask = None if causal else _float_mask(attn_mask, q.dtype)
    if mask is not None:
        # (L, S) -> (1, 1, L, S); (B * H, L, S) -> (B, H, L, S) (H, L, S when unbatched)
        mask = mask.view(1, 1, *mask.shape) if mask.dim() == 2 else mask.view(bsz, n_heads, *mask.shape[-2:])
    pad = _float_mask(key_padding_mask, q.dtype)
    if pad is not None:
        pad = pad.view(bsz, 1, 1, pad.shape[-1])
    if mod.bias_k is not None and mod.bias_v is not None:
        k = torch.cat([k, mod.bias_k.expand(bsz, 1, -1)], dim=1)
        v = torch.cat([v, mod.bias_v.expand(bsz, 1, -1)], dim=1)
        mask = F.pad(mask, (0, 1)) if mask is not None else None
        pad = F.pad(pad, (0, 1)) if pad is not None else None

    qh = q.view(bsz, tgt_len, n_heads, -1).transpose(1, 2)
    kh = k.view(bsz, k.shape[1], n_heads, -1).transpose(1, 2)
    vh = v.view(bsz, v.shape[1], n_heads, -1).transpose(1, 2)
    if mod.add_zero_attn:
        kh = torch.cat([kh, torch.zeros_like(kh[:, :, :1])], dim=2)
        vh = torch.cat([vh, torch.zeros_like(vh[:, :, :1])], dim=2)
        mask = F.pad(mask, (0, 1)) if mask is not None else None
        pad = F.pad(pad, (0, 1)) if pad is not None else None
    if pad is not None:
        mask = pad if mask is None else mask + pad

    dropout_p = float(mod.dropout) if mod.training else 0.0
    weights: Tensor | None = None
    if need_weights:
        scores = torch.matmul(qh * scale, kh.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
        attn = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            attn = F.dropout(attn, p=dropout_p)
        out = torch.matmul(attn, vh)
        weights = attn.mean(dim=1) if average_attn_weights else attn
        if not batched:
            weights = weights.squeeze(0)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=dropout_p,
                                             is_causal=causal, scale=scale)
    # contiguous first: a reshape that happens to be a view (one feature per head) would hand
    # the projection a strided input, which it computes with other kernels
    out = out.transpose(1, 2).contiguous().view(bsz, tgt_len, -1)
    out = F.linear(out, mod.out_proj.weight, mod.out_proj.bias)
    if not batched:
        out = out.squeeze(0)
    elif not mod.batch_first:
        out = out.transpose(0, 1)
    return out, weights


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose inner widths may differ from ``embed_dim``.

    Installed by ``PruningIR.prune`` in place of a pruned ``nn.MultiheadAttention``
    (the instance keeps its parameters, names and hooks; only its class changes).
    Attributes, all updated by the rewrite:

    * ``embed_dim`` - width of the query input and of the output (``out_proj``);
      ``kdim`` / ``vdim`` - widths of the key / value inputs;
    * ``num_heads``, ``head_dim`` (q and k per head), ``v_head_dim`` (v per head);
    * ``scaling`` - the softmax scale of the original module, ``1/sqrt(head_dim)``
      *before* pruning, so that the slim module computes what the masked original does.

    ``_qkv_same_embed_dim`` is False, which keeps ``nn.TransformerEncoderLayer``'s fused
    inference kernel (it assumes inner width == ``embed_dim``) from running it; the q/k/v
    weights stay where they were (``in_proj_weight`` when packed).
    """

    head_dim: int
    v_head_dim: int
    scaling: float

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        return mha_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                           average_attn_weights, is_causal)


def traces_explicitly(mod: nn.Module) -> bool:
    """True for modules whose forward the tracer replaces by :func:`mha_forward`."""
    return (isinstance(mod, nn.MultiheadAttention) and not isinstance(mod, PrunedMultiheadAttention)
            and type(mod).forward is nn.MultiheadAttention.forward)


def explicit_forward(mod: nn.MultiheadAttention) -> Any:
    """A bound forward for ``mod`` that runs :func:`mha_forward` (installed while tracing)."""
    def forward(query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        return mha_forward(mod, query, key, value, key_padding_mask, need_weights, attn_mask,
                           average_attn_weights, is_causal)
    return forward
