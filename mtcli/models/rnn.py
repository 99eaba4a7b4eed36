"""RNN backends: the plain encoder-decoder (one fixed context vector) and the attention encoder-decoder.

  seq2seq    decoder input [y_{t-1}; c] with c the encoder's final state, at init and every step (Cho et al.)
  attention  decoder input [y_{t-1}; a_{t-1}] (input feeding), a_t = tanh(W [h_t; context_t]) (Luong et al.)
Hidden states are kept batch-first in the decoder state, so the generic reorder works on them.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mtcli.config import BackendOptions, Choice, ModelConfig
from mtcli.kernels.dropout import Dropout
from mtcli.models.attention import SCORES, attend
from mtcli.models.base import Backend, OutputLayer, State, make_embeddings

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class RNNOptions(BackendOptions):
    """The model keys of both RNN backends."""

    hidden_dim: int = 256  # encoder output and decoder state size (a bidirectional encoder splits it in two)
    rnn_type: Annotated[str, Choice(RNNS)] = "gru"
    bidirectional: bool = True
    positive: typing.ClassVar = ("hidden_dim",)

    def check(self, model: ModelConfig, fail: Callable[[str, str], typing.NoReturn]) -> None:
        super().check(model, fail)
        if self.bidirectional and self.hidden_dim % 2:
            fail("model.hidden_dim", "must be even with a bidirectional encoder (half per direction)")
        if model.tie_embeddings != "none" and model.embed_dim != self.hidden_dim:
            fail("model.tie_embeddings", "tying needs model.embed_dim == model.hidden_dim for RNN backends "
                 f"(got {model.embed_dim} and {self.hidden_dim})")


@dataclass(frozen=True)
class AttentionOptions(RNNOptions):
    attention: Annotated[str, Choice(SCORES)] = "additive"  # the score function (mtcli/models/attention.py)


class RNNEncoder(nn.Module):
    """Embeds and encodes the source; outputs are `hidden_dim` wide (split over directions)."""

    def __init__(self, embed: nn.Embedding, cfg: ModelConfig):
        super().__init__()
        self.embed = embed
        self.layers, self.directions = cfg.encoder_layers, 2 if cfg.bidirectional else 1
        self.rnn = RNNS[cfg.rnn_type](
            embed.embedding_dim, cfg.hidden_dim // self.directions, cfg.encoder_layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.encoder_layers > 1 else 0.0)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> outputs (B, S, H), final state of the top layer, both directions (B, H)."""
        x = self.dropout(self.embed(src))  # (B, S, E)
        lengths = src_mask.sum(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, H)
        if isinstance(final, tuple):  # LSTM: (h, c)
            final = final[0]
        final = final.view(self.layers, self.directions, src.size(0), -1)[-1]  # (dirs, B, H/dirs)
        return self.dropout(out), torch.cat(list(final), dim=-1)


class CellStack(nn.Module):
    """A multi-layer GRU/LSTM advanced one position at a time (lighter per step than nn.GRU on length 1)."""

    def __init__(self, rnn_type: str, input_dim: int, hidden_dim: int, layers: int, dropout: float):
        super().__init__()
        cell = nn.GRUCell if rnn_type == "gru" else nn.LSTMCell
        self.cells = nn.ModuleList(cell(input_dim if i == 0 else hidden_dim, hidden_dim) for i in range(layers))
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, I) -> top layer output (B, H) and the new {"hidden": (B, layers, H)[, "cell"]}."""
        hidden, cell = state["hidden"], state.get("cell")
        new_hidden, new_cell = [], []
        for i, layer in enumerate(self.cells):
            if i:
                x = self.dropout(x)
            if cell is None:
                x = layer(x, hidden[:, i])
            else:
                x, c = layer(x, (hidden[:, i], cell[:, i]))
                new_cell.append(c)
            new_hidden.append(x)
        new_state = {"hidden": torch.stack(new_hidden, dim=1)}
        if cell is not None:
            new_state["cell"] = torch.stack(new_cell, dim=1)
        return x, new_state


class RNNDecoderBase(Backend):
    """What both RNN backends share: embeddings, encoder, bridge to the decoder's first state, output."""

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        src_embed, self.tgt_embed, tied = make_embeddings(src_vocab, tgt_vocab, cfg.embed_dim, cfg.tie_embeddings)
        self.encoder = RNNEncoder(src_embed, cfg)
        self.layers, self.hidden_dim, self.is_lstm = cfg.decoder_layers, cfg.hidden_dim, cfg.rnn_type == "lstm"
        self.bridge = nn.Linear(cfg.hidden_dim, cfg.decoder_layers * cfg.hidden_dim)
        self.dropout = Dropout(cfg.dropout)
        self.output = OutputLayer(cfg.hidden_dim, tgt_vocab, tied)

    def initial_hidden(self, final: torch.Tensor) -> State:
        """Decoder start state from the encoder's final state, batch-first: (B, layers, H)."""
        hidden = torch.tanh(self.bridge(final)).view(final.size(0), self.layers, self.hidden_dim)
        return {"hidden": hidden, "cell": hidden} if self.is_lstm else {"hidden": hidden}

    def state_floats(self, src_len: int, out_len: int) -> int:
        """The recurrent state (hidden, and cell for an LSTM) and the fed-back vector."""
        return self.hidden_dim * (self.layers * (2 if self.is_lstm else 1) + 1)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.output(self.dropout(features)), dim=-1, dtype=torch.float32)


class Seq2Seq(RNNDecoderBase):
    """Encoder-decoder without attention: the decoder sees only one fixed context vector."""

    Options = RNNOptions
    has_attention = False
    sentence_keys = ("context",)

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__(cfg, src_vocab, tgt_vocab)
        # the input [y_{t-1}; c] is known in advance, so training runs the RNN over the whole target at once
        self.rnn = RNNS[cfg.rnn_type](cfg.embed_dim + cfg.hidden_dim, cfg.hidden_dim, cfg.decoder_layers,
                                      batch_first=True, dropout=cfg.dropout if cfg.decoder_layers > 1 else 0.0)
        self.pre_output = nn.Linear(2 * cfg.hidden_dim + cfg.embed_dim, cfg.hidden_dim)

    def run_rnn(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (B, T, I) from `state` -> outputs of the top layer (B, T, H) and the new recurrent state."""
        hidden = state["hidden"].transpose(0, 1).contiguous()  # (layers, B, H)
        if self.is_lstm:
            out, (h, c) = self.rnn(x, (hidden, state["cell"].transpose(0, 1).contiguous()))
            return out, {"hidden": h.transpose(0, 1), "cell": c.transpose(0, 1)}
        out, h = self.rnn(x, hidden)
        return out, {"hidden": h.transpose(0, 1)}

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        _, final = self.encoder(src, src_mask)
        return {"context": final}  # (B, H): all the decoder will ever see of the source

    def init_state(self, memory: State) -> State:
        return {**self.initial_hidden(memory["context"]), "context": memory["context"]}

    def _features(self, emb: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """emb (B, T, E) -> pre-output features (B, T, H), for T steps at once (the input is known)."""
        context = state["context"].unsqueeze(1).expand(-1, emb.size(1), -1)  # (B, T, H)
        out, rnn_state = self.run_rnn(torch.cat([emb, context], dim=-1), state)
        features = torch.tanh(self.pre_output(torch.cat([out, context, emb], dim=-1)))
        return features, {**rnn_state, "context": state["context"]}

    def features(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        state = self.init_state(self.encode(src, src_mask))
        features, _ = self._features(self.dropout(self.tgt_embed(tgt_in)), state)
        return self.dropout(features)  # (B, T, H)

    def step(self, prev: torch.Tensor, state: State, need_attention: bool = False
             ) -> tuple[torch.Tensor, State, None]:
        features, state = self._features(self.dropout(self.tgt_embed(prev)).unsqueeze(1), state)
        return self.log_probs(features.squeeze(1)), state, None


class AttentionSeq2Seq(RNNDecoderBase):
    """Encoder-decoder with attention over all encoder states and input feeding."""

    Options = AttentionOptions
    sentence_keys = ("encoder_out", "keys", "src_mask")

    @classmethod
    def label(cls, cfg: ModelConfig) -> str:
        return f"{cfg.backend} ({cfg.attention})"

    @classmethod
    def attention_label(cls, cfg: ModelConfig) -> str:
        return f"{cfg.attention} attention"

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__(cfg, src_vocab, tgt_vocab)
        self.rnn = CellStack(cfg.rnn_type, cfg.embed_dim + cfg.hidden_dim, cfg.hidden_dim, cfg.decoder_layers,
                             cfg.dropout)
        self.score = SCORES[cfg.attention](cfg.hidden_dim, cfg.hidden_dim)
        self.combine = nn.Linear(2 * cfg.hidden_dim, cfg.hidden_dim)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        encoder_out, final = self.encoder(src, src_mask)
        return {"encoder_out": encoder_out, "keys": self.score.project_keys(encoder_out),
                "src_mask": src_mask, "final": final}

    def state_floats(self, src_len: int, out_len: int) -> int:
        """The recurrent state plus the encoder outputs and their projected keys, per hypothesis."""
        return super().state_floats(src_len, out_len) + 2 * self.hidden_dim * src_len + src_len

    def init_state(self, memory: State) -> State:
        feed = memory["final"].new_zeros(memory["final"].shape)  # (B, H) attentional vector a_0
        return {**self.initial_hidden(memory["final"]), "feed": feed,
                **{k: memory[k] for k in ("encoder_out", "keys", "src_mask")}}

    def _step(self, emb: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """emb (B, E) -> attentional vector a_t (B, H), attention weights (B, S), next state."""
        query, rnn_state = self.rnn(torch.cat([emb, state["feed"]], dim=-1), state)  # (B, H)
        context, weights = attend(self.score(query, state["keys"]), state["src_mask"], state["encoder_out"])
        feed = torch.tanh(self.combine(torch.cat([query, context], dim=-1)))  # (B, H)
        return feed, weights, {**state, **rnn_state, "feed": feed}

    def features(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        state = self.init_state(self.encode(src, src_mask))
        emb = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        features = []
        for t in range(tgt_in.size(1)):
            feed, _, state = self._step(emb[:, t], state)
            features.append(feed)
        return self.dropout(torch.stack(features, dim=1))  # (B, T, H)

    def step(self, prev: torch.Tensor, state: State, need_attention: bool = False
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        feed, weights, state = self._step(self.dropout(self.tgt_embed(prev)), state)
        return self.log_probs(feed), state, weights.unsqueeze(1) if need_attention else None
