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

import numpy as np
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


def random_words(count: int) -> torch.Tensor:
    """`count` uniformly random int64 words from a fresh SFC64 generator whose seed is drawn from torch's
    global generator."""
    seed = int(torch.randint(1 << 62, ()).item())
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper random mask on the CPU, where drawing one random number per element
    dominates dropout's cost: each 64-bit random word gives four 16-bit uniforms, so an element is kept
    with probability 1 - round(p * 65536) / 65536 (p to within 1e-5). The words come from numpy's SFC64
    generator, about twice as fast as torch's Mersenne Twister, seeded by one draw of torch's global
    generator: same reproducibility under torch.manual_seed and on resume (that generator's state is what
    checkpoints keep). Same results as nn.Dropout in distribution; on other devices and in eval mode it
    is nn.Dropout."""

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """dropout(x), or with relu=True dropout(relu(x)) as one step that keeps only its output for the
        backward pass (the next layer keeps that tensor anyway), not also the ReLU output and the mask."""
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(torch.relu(x) if relu else x)
        n = x.numel()
        words = random_words((n + 3) // 4)
        threshold = round(self.p * 65536) - 32768  # int16 values below it are dropped
        # the 0/1 mask is written in x's dtype straight from the comparison: multiplying by it is several
        # times faster than torch.where or masked_fill with a boolean mask, and than converting one
        keep = torch.ge(words.view(torch.int16)[:n].view(x.shape), threshold, out=x.new_empty(x.shape))
        return (_ReluKeepScale if relu else _KeepScale).apply(x, keep, 1.0 / (1.0 - self.p))


class _KeepScale(torch.autograd.Function):
    """x * keep * scale with a 0/1 mask `keep` in x's dtype, which the backward pass reuses."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.mul(x, keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None, None


class _ReluKeepScale(torch.autograd.Function):
    """relu(x) * keep * scale. Its gradient is scale where the output is positive and 0 elsewhere (an
    element is positive exactly when it was kept and x > 0), so the output is all the backward needs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        out = torch.mul(x, keep).clamp_min_(0).mul_(scale)
        ctx.save_for_backward(out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        positive = torch.gt(out, 0, out=out.new_empty(out.shape))
        return torch.mul(grad, positive).mul_(ctx.scale), None, None


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
