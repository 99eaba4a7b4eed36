"""The one interface every backend offers, so search and training are written once.

A backend is an nn.Module with:
  forward(src, src_mask, tgt_in)        -> logits (B, T, V)          teacher forcing
  encode(src, src_mask)                 -> memory (dict)             once per batch
  init_state(memory)                    -> state (dict)              explicit decoder state
  step(prev, state, need_attention)     -> log_probs (B, V), state, attention (B, K, S) or None
  reorder(state, index)                 -> state                     beam bookkeeping / pruning
Attention maps are K = layers x heads per step (1 x 1 for the RNN attention backend).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = dict[str, Any]


def reorder_tree(value: Any, index: torch.Tensor) -> Any:
    """index_select(0, index) on every tensor in nested dicts/lists/tuples; other values pass through."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index)
    if isinstance(value, dict):
        return {k: reorder_tree(v, index) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(reorder_tree(v, index) for v in value)
    return value


class Backend(nn.Module):
    has_attention: bool = True

    def attention_shape(self) -> tuple[int, int]:
        """(layers, heads) of the K maps that step() returns per target position."""
        return (1, 1)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        raise NotImplementedError

    def init_state(self, memory: State) -> State:
        raise NotImplementedError

    def step(self, prev: torch.Tensor, state: State, need_attention: bool = False
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        raise NotImplementedError

    def reorder(self, state: State, index: torch.Tensor) -> State:
        return reorder_tree(state, index)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class OutputLayer(nn.Module):
    """Hidden vector -> vocabulary logits, optionally sharing the target embedding's weight."""

    def __init__(self, dim: int, vocab_size: int, tied: nn.Embedding | None):
        super().__init__()
        self.tied = tied
        if tied is None:
            self.proj = nn.Linear(dim, vocab_size, bias=False)
        else:
            assert tied.embedding_dim == dim, "tied output needs hidden size == embedding size"

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tied is not None:
            return hidden @ self.tied.weight.t()
        return self.proj(hidden)


def make_embeddings(src_vocab: int, tgt_vocab: int, dim: int, tie: str
                    ) -> tuple[nn.Embedding, nn.Embedding, nn.Embedding | None]:
    """(source embedding, target embedding, embedding shared with the output layer or None)."""
    tgt = nn.Embedding(tgt_vocab, dim, padding_idx=0)
    if tie == "all":
        assert src_vocab == tgt_vocab, "tie_embeddings 'all' needs one joint vocabulary"
        return tgt, tgt, tgt
    src = nn.Embedding(src_vocab, dim, padding_idx=0)
    return src, tgt, (tgt if tie == "decoder" else None)
