"""From the data config to training-ready examples: read, filter, train tokenizers, encode.

Knows nothing of models; returns the filtering counts for the caller to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtcli.config import DataConfig
from mtcli.data.batching import Example, make_example
from mtcli.data.corpus import ParallelText, load_split
from mtcli.data.tokenizers import SentencePieceTokenizer, Tokenizer, WhitespaceTokenizer
from mtcli.errors import DataError


@dataclass
class PreparedData:
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    train: list[Example]
    dev: list[Example]
    dev_text: ParallelText  # the dev pairs kept, as raw text (references for BLEU)
    notes: list[str] = field(default_factory=list)  # what was filtered, for the caller to report


def drop_empty(text: ParallelText) -> tuple[ParallelText, int]:
    keep = [i for i, (s, t) in enumerate(zip(text.src, text.tgt)) if s and t]
    aligned = [text.alignments[i] for i in keep] if text.alignments else None
    kept = ParallelText(text.name, [text.src[i] for i in keep], [text.tgt[i] for i in keep], aligned)
    return kept, len(text) - len(keep)


def build_tokenizers(cfg: DataConfig, train: ParallelText, seed: int) -> tuple[Tokenizer, Tokenizer]:
    def make(texts: list[str]) -> Tokenizer:
        if cfg.tokenizer == "whitespace":
            return WhitespaceTokenizer.train(texts, cfg.vocab_size)
        return SentencePieceTokenizer.train(texts, cfg.vocab_size, cfg.spm_type, seed)

    if cfg.joint_vocab:
        joint = make(train.src + train.tgt)
        return joint, joint
    return make(train.src), make(train.tgt)


def encode(text: ParallelText, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer) -> list[Example]:
    return [make_example(src_tokenizer.encode(s), tgt_tokenizer.encode(t)) for s, t in zip(text.src, text.tgt)]


def prepare_data(cfg: DataConfig, seed: int, tokenizers: tuple[Tokenizer, Tokenizer] | None = None
                 ) -> PreparedData:
    """Read train and dev, train the tokenizers (or use the given ones, when resuming), encode, filter."""
    train, empty_train = drop_empty(load_split(cfg, "train"))
    dev, empty_dev = drop_empty(load_split(cfg, "dev"))
    notes = [f"train: {train.name}, dev: {dev.name}"]
    if not len(train) or not len(dev):
        raise DataError(f"{(train if not len(train) else dev).name}: no sentence pairs left after dropping empty lines")
    src_tok, tgt_tok = tokenizers or build_tokenizers(cfg, train, seed)
    examples = encode(train, src_tok, tgt_tok)
    kept = [e for e in examples if len(e.src) - 1 <= cfg.max_len and len(e.tgt) <= cfg.max_len]
    notes.append(f"train: {len(kept)} pairs kept; dropped {empty_train} with an empty side and "
                 f"{len(examples) - len(kept)} longer than data.max_len={cfg.max_len} tokens")
    if empty_dev:
        notes.append(f"dev: dropped {empty_dev} pairs with an empty side")
    notes.append(f"vocabulary: {src_tok.vocab_size} source, {tgt_tok.vocab_size} target"
                 f" ({'joint' if cfg.joint_vocab else 'separate'} {cfg.tokenizer})")
    return PreparedData(src_tok, tgt_tok, kept, encode(dev, src_tok, tgt_tok), dev, notes)
