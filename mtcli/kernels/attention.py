"""Scaled dot-product attention, softmax(q k^T / sqrt(d)) v, through whichever kernel is faster here.

torch's fused kernel (F.scaled_dot_product_attention) runs by default. Plain products run instead
  - when the weights are wanted (visualization): the fused kernel does not return them;
  - for one query (incremental decoding steps), where they beat the fused kernel: together with beam
    search leaving the encoder-side state in place (measured as one change), fp32 beam 5 of the bench
    Transformer went from 1,400 to 1,550-1,610 out tok/s;
  - under bf16 autocast on a CPU, where torch's fused bf16 kernel trains ~4x slower than bf16 products
    with an fp32 softmax (25.9 vs 6.5 ms forward + backward at 136 x 4 x 30 x 64, torch 2.13, 2 cores;
    2x faster than the fused fp32 kernel too, which also needs fp32 copies of q, k, v): the attention
    share of a bench Transformer update fell from 1.43 s to ~0.55 s per 15 updates; end to end within
    noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q (B, h, T, d) over keys/values (B, h, S, d); mask (B, 1, 1, S) True = attend; causal: query t sees
    keys up to t. Returns the output (B, h, T, d) and, with need_weights, the weights (B, h, T, S) in fp32."""
    if need_weights or q.size(-2) == 1 or (q.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
        out, weights = attention_products(q, k, v, mask, causal)
        return out, weights if need_weights else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None), None


def attention_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                       causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v and its weights as plain products; under autocast the products run in
    bf16 and the softmax in fp32."""
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # (B, h, T, S)
    if causal:
        scores = scores.masked_fill(scores.new_ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)  # fp32 even when the products are bf16
    return weights.to(v.dtype) @ v, weights
