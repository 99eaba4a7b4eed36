"""Model backends, chosen by name from a plain dict (no registry): a backend is one module here with its
`Options` (its own model keys and their checks) and one entry below; configs, checks and labels follow."""

from __future__ import annotations

from mtcli.config import ModelConfig
from mtcli.models.base import Backend
from mtcli.models.rnn import AttentionSeq2Seq, Seq2Seq
from mtcli.models.transformer import Transformer

BACKENDS: dict[str, type[Backend]] = {
    "seq2seq": Seq2Seq,
    "attention": AttentionSeq2Seq,
    "transformer": Transformer,
}


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int) -> Backend:
    return BACKENDS[cfg.backend](cfg, src_vocab, tgt_vocab)
