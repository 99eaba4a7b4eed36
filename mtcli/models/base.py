"""The one interface every backend offers, so search and training are written once.

A backend is an nn.Module with:
  features(src, src_mask, tgt_in)       -> hidden (B, T, D)          teacher forcing, before the output layer
  forward(src, src_mask, tgt_in)        -> logits (B, T, V)          output(features(...)); features_only=True
                                                                     returns the features (the fused loss takes them)
  encode(src, src_mask)                 -> memory (dict)             once per batch
  init_state(memory)                    -> state (dict)              explicit decoder state
  step(prev, state, need_attention)     -> log_probs (B, V), state, attention (B, K, S) or None
  reorder(state, index, same_sentences) -> state                     beam bookkeeping / pruning
  search_floats(src_len, out_len)       -> int                       memory estimate per hypothesis
Attention maps are K = layers x heads per step (1 x 1 for the RNN attention backend).
A backend declares its own model keys (`Options`) and is named in mtcli/models/__init__.py's BACKENDS.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mtcli.config import BackendOptions, ModelConfig

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
    """Built from the model section, Backend(cfg, src_vocab, tgt_vocab), where cfg also reads the backend's own
    keys (cfg.heads): those declared by its `Options`."""

    Options: ClassVar[type[BackendOptions]] = BackendOptions  # the backend's own model keys and their checks
    has_attention: bool = True

    @classmethod
    def label(cls, cfg: ModelConfig) -> str:
        """The backend as tables name it: 'transformer', 'attention (additive)'."""
        return cfg.backend

    @classmethod
    def attention_label(cls, cfg: ModelConfig) -> str:
        """What the maps step() returns are, for titles: 'additive attention', 'transformer cross-attention'."""
        return f"{cfg.backend} attention"

    def attention_shape(self) -> tuple[int, int]:
        """(layers, heads) of the K maps that step() returns per target position."""
        return (1, 1)

    output: OutputLayer

    def features(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, features_only: bool = False
                ) -> torch.Tensor:
        hidden = self.features(src, src_mask, tgt_in)
        return hidden if features_only else self.output(hidden)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        raise NotImplementedError

    def init_state(self, memory: State) -> State:
        raise NotImplementedError

    def step(self, prev: torch.Tensor, state: State, need_attention: bool = False
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        raise NotImplementedError

    # state entries that depend only on the source sentence (encoder outputs and what is computed from them)
    sentence_keys: tuple[str, ...] = ()

    def reorder(self, state: State, index: torch.Tensor, same_sentences: bool = False) -> State:
        """Rows `index` of every state tensor. `same_sentences`: each row is replaced by a row of the same
        sentence (beam search moving hypotheses within a sentence's group), so the `sentence_keys` entries,
        equal on all rows of a sentence, are left as they are instead of being copied."""
        if not same_sentences:
            return reorder_tree(state, index)
        return {k: v if k in self.sentence_keys else reorder_tree(v, index) for k, v in state.items()}

    def state_floats(self, src_len: int, out_len: int) -> int:
        """Floats of decoder state per hypothesis for a source of `src_len` tokens after `out_len` steps."""
        return 0

    def search_floats(self, src_len: int, out_len: int) -> int:
        """About how many floats the search holds per hypothesis: a few copies of a step's log-probabilities
        (the logits, their log-softmax, the candidates, the processors' copy) and the decoder state. It sizes
        the decoding batches (decode.memory_mb)."""
        return 5 * self.output.weight.size(0) + self.state_floats(src_len, out_len)

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

    @property
    def weight(self) -> torch.Tensor:
        """(vocabulary, dim): logits = hidden @ weight.T."""
        return self.tied.weight if self.tied is not None else self.proj.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight)  # on the parameter itself: autocast casts it once, not every call


def make_embeddings(src_vocab: int, tgt_vocab: int, dim: int, tie: str
                    ) -> tuple[nn.Embedding, nn.Embedding, nn.Embedding | None]:
    """(source embedding, target embedding, embedding shared with the output layer or None)."""
    tgt = nn.Embedding(tgt_vocab, dim, padding_idx=0)
    if tie == "all":
        assert src_vocab == tgt_vocab, "tie_embeddings 'all' needs one joint vocabulary"
        return tgt, tgt, tgt
    src = nn.Embedding(src_vocab, dim, padding_idx=0)
    return src, tgt, (tgt if tie == "decoder" else None)
