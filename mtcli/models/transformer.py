"""Transformer backend: pre-norm encoder-decoder, sinusoidal positions, multi-head attention, and
incremental decoding with a key/value cache. Attention and dropout run through mtcli.kernels, which
chooses how to compute them.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mtcli.config import BackendOptions, ModelConfig
from mtcli.kernels.attention import attention
from mtcli.kernels.dropout import Dropout, relu_dropout
from mtcli.models.base import Backend, OutputLayer, State, make_embeddings


@dataclass(frozen=True)
class TransformerOptions(BackendOptions):
    heads: int = 4  # attention heads (must divide embed_dim)
    ff_dim: int = 1024  # feed-forward inner size
    positive: typing.ClassVar = ("heads", "ff_dim")

    def check(self, model: ModelConfig, fail: Callable[[str, str], typing.NoReturn]) -> None:
        super().check(model, fail)
        if model.embed_dim % self.heads:
            fail("model.heads", f"{self.heads} does not divide model.embed_dim {model.embed_dim}")
        if model.embed_dim % 2:
            fail("model.embed_dim", "must be even for sinusoidal positions")


def sinusoidal_positions(length: int, dim: int, offset: int = 0) -> torch.Tensor:
    """(length, dim) table of Vaswani et al.: sin on even, cos on odd features."""
    position = torch.arange(offset, offset + length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)  # (B, h, S, d) each

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) queries over keys/values (B, h, S, d); mask (B, 1, 1, S) True = attend. Returns the
        output (B, T, D) and, with need_weights, the weights (B, h, T, S)."""
        out, weights = attention(self.split(self.q_proj(x)), k, v, mask, causal, need_weights)  # (B, h, T, d)
        return self.out_proj(out.transpose(1, 2).reshape(x.size(0), x.size(1), -1)), weights


class FeedForward(nn.Module):
    """FFN(x) = W2 dropout(relu(W1 x + b1)) + b2, position by position (Vaswani et al.), with ReLU and
    dropout as one kernel. W1 and W2 are registered as "0" and "3", their places in the nn.Sequential
    (Linear, ReLU, Dropout, Linear) of earlier versions, so that checkpoints keep the names ff.0.*, ff.3.*."""

    def __init__(self, dim: int, ff_dim: int, dropout: float):
        super().__init__()
        self.p = dropout
        self.add_module("0", nn.Linear(dim, ff_dim))
        self.add_module("3", nn.Linear(ff_dim, dim))

    @property
    def inner(self) -> nn.Linear:
        """W1, b1: dim -> ff_dim."""
        return self._modules["0"]

    @property
    def outer(self) -> nn.Linear:
        """W2, b2: ff_dim -> dim."""
        return self._modules["3"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(relu_dropout(self.inner(x), self.p, self.training))  # (B, T, D)

    def extra_repr(self) -> str:
        return f"dropout={self.p}"


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d, cfg.heads)
        self.ff = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, *self.attn.keys_values(h), mask=mask)[0])
        return x + self.dropout(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, cfg.heads)
        self.cross_attn = MultiHeadAttention(d, cfg.heads)
        self.ff = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                cross_kv: tuple[torch.Tensor, torch.Tensor], src_mask: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """x (B, T, D); `past` caches the keys/values of earlier positions (None: x is the whole prefix,
        attended causally). Returns the output, the cache extended by x, and the cross-attention weights."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)  # (B, h, T, d)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.dropout(self.self_attn(h, k, v, causal=past is None)[0])
        out, weights = self.cross_attn(self.norm2(x), *cross_kv, mask=src_mask, need_weights=need_weights)
        x = x + self.dropout(out)
        return x + self.dropout(self.ff(self.norm3(x))), (k, v), weights


class Transformer(Backend):
    Options = TransformerOptions
    sentence_keys = ("cross_kv", "src_mask")

    @classmethod
    def attention_label(cls, cfg: ModelConfig) -> str:
        return f"{cfg.backend} cross-attention"

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        d = self.dim = cfg.embed_dim
        self.heads = cfg.heads
        self.src_embed, self.tgt_embed, tied = make_embeddings(src_vocab, tgt_vocab, d, cfg.tie_embeddings)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.output = OutputLayer(d, tgt_vocab, tied)
        self.dropout = Dropout(cfg.dropout)
        self.register_buffer("positions", sinusoidal_positions(1024, d), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, mean=0.0, std=self.dim ** -0.5)
                with torch.no_grad():
                    p[0].zero_()  # padding row
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def attention_shape(self) -> tuple[int, int]:
        return (len(self.decoder_layers), self.heads)

    def _positions(self, length: int, offset: int = 0) -> torch.Tensor:
        if offset + length > self.positions.size(0):
            return sinusoidal_positions(length, self.dim, offset).to(self.positions.device)
        return self.positions[offset: offset + length]

    def _embed(self, embed: nn.Embedding, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        x = embed(tokens) * math.sqrt(self.dim) + self._positions(tokens.size(1), offset).to(embed.weight.dtype)
        return self.dropout(x)  # (B, T, D)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return {"encoder_out": self.encoder_norm(x), "src_mask": mask}

    def _cross_kv(self, memory: State) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [layer.cross_attn.keys_values(memory["encoder_out"]) for layer in self.decoder_layers]

    def features(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory = self.encode(src, src_mask)
        x = self._embed(self.tgt_embed, tgt_in)
        for layer, cross_kv in zip(self.decoder_layers, self._cross_kv(memory)):
            x, _, _ = layer(x, None, cross_kv, memory["src_mask"])
        return self.decoder_norm(x)  # (B, T, D)

    def attention_maps(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """Every attention weight of one teacher-forced pass over `tgt_in` (B, T): BOS y1 .. yn.

        Returns "encoder" (B, encoder layers, heads, S, S), "decoder" (B, decoder layers, heads, T, T;
        causal) and "cross" (B, decoder layers, heads, T, S); query positions down, key positions across.
        The same computation as features(), with the attention weights asked for (need_weights).
        Call it under torch.no_grad() in eval mode.
        """
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.src_embed, src)
        encoder = []
        for layer in self.encoder_layers:
            h = layer.norm1(x)
            out, weights = layer.attn(h, *layer.attn.keys_values(h), mask=mask, need_weights=True)
            encoder.append(weights)
            x = x + layer.dropout(out)
            x = x + layer.dropout(layer.ff(layer.norm2(x)))
        memory = {"encoder_out": self.encoder_norm(x), "src_mask": mask}
        x = self._embed(self.tgt_embed, tgt_in)
        decoder, cross = [], []
        for layer, cross_kv in zip(self.decoder_layers, self._cross_kv(memory)):
            h = layer.norm1(x)
            out, weights = layer.self_attn(h, *layer.self_attn.keys_values(h), causal=True, need_weights=True)
            decoder.append(weights)
            x = x + layer.dropout(out)
            out, weights = layer.cross_attn(layer.norm2(x), *cross_kv, mask=mask, need_weights=True)
            cross.append(weights)
            x = x + layer.dropout(out)
            x = x + layer.dropout(layer.ff(layer.norm3(x)))
        return {"encoder": torch.stack(encoder, dim=1), "decoder": torch.stack(decoder, dim=1),
                "cross": torch.stack(cross, dim=1)}

    def state_floats(self, src_len: int, out_len: int) -> int:
        """Per decoder layer: cross-attention keys/values over the source, self-attention cache over the output."""
        return len(self.decoder_layers) * 2 * self.dim * (src_len + out_len) + src_len

    def init_state(self, memory: State) -> State:
        """Cross-attention keys/values once per sentence, made contiguous: the (B, h, S, d) views of the
        projection cost every step's products a copy (0.7 ms at 64x4x48x64 fp32 against 0.05 ms); an empty
        self-attention cache per layer."""
        cross_kv = [(k.contiguous(), v.contiguous()) for k, v in self._cross_kv(memory)]
        return {"cross_kv": cross_kv, "src_mask": memory["src_mask"],
                "cache": [None] * len(self.decoder_layers), "pos": 0}

    def step(self, prev: torch.Tensor, state: State, need_attention: bool = False
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        x = self._embed(self.tgt_embed, prev.unsqueeze(1), offset=state["pos"])  # (B, 1, D)
        cache, maps = [], []
        for layer, cross_kv, past in zip(self.decoder_layers, state["cross_kv"], state["cache"]):
            x, kv, weights = layer(x, past, cross_kv, state["src_mask"], need_weights=need_attention)
            cache.append(kv)
            maps.append(weights)
        log_probs = torch.log_softmax(self.output(self.decoder_norm(x[:, 0])), dim=-1, dtype=torch.float32)
        attention = torch.cat([w[:, :, 0] for w in maps], dim=1) if need_attention else None  # (B, L*h, S)
        return log_probs, {**state, "cache": cache, "pos": state["pos"] + 1}, attention
