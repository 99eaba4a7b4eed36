"""From the data config to training-ready data: prepared corpora (memory-mapped), tokenizers, the dev set.

Knows nothing of models; returns the filtering counts for the caller to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mtcli.config import DataConfig
from mtcli.data.batching import Batch, EpochPlan, Example, LengthRuns, make_example, padded, plan_epoch
from mtcli.data.corpus import ParallelText, load_split, train_sources
from mtcli.data.prepared import PreparedCorpus, Progress, _no_progress, prepare_corpus, prepare_tokenizers
from mtcli.data.tokenizers import BOS, EOS, PAD, Tokenizer
from mtcli.errors import DataError


class TrainSet:
    """The training pairs of every corpus under one id space (corpus after corpus), mixed by weight."""

    def __init__(self, corpora: list[PreparedCorpus], weights: list[float]):
        self.corpora, self.weights = corpora, weights
        self.bases = np.cumsum([0] + [len(c) for c in corpora])

    def __len__(self) -> int:
        return int(self.bases[-1])

    def plan(self, batch_tokens: int, seed: int, epoch: int) -> EpochPlan:
        """This epoch's batches: a pure function of (seed, epoch), so a resumed run continues exactly."""
        runs = [LengthRuns(corpus.order, corpus.groups, int(base), weight)
                for corpus, base, weight in zip(self.corpora, self.bases, self.weights)]
        return plan_epoch(runs, batch_tokens, seed, epoch)

    def _parts(self, ids: np.ndarray) -> list[tuple[PreparedCorpus, np.ndarray, np.ndarray]]:
        """(corpus, rows of `ids` in it, their local ids) for each corpus that `ids` touches."""
        which = np.searchsorted(self.bases, ids, side="right") - 1
        out = []
        for c in np.unique(which):
            rows = np.flatnonzero(which == c)
            out.append((self.corpora[c], rows, ids[rows].astype(np.int64) - self.bases[c]))
        return out

    def target_tokens(self, ids: np.ndarray) -> int:
        """Real target tokens of the pairs, EOS included."""
        return sum(int(corpus.tgt_len[local].sum()) + len(local) for corpus, _, local in self._parts(ids))

    def collate(self, ids: np.ndarray) -> Batch:
        src_len, tgt_len = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
        parts = self._parts(ids)
        for corpus, rows, local in parts:
            src_len[rows], tgt_len[rows] = corpus.src_len[local], corpus.tgt_len[local]
        src = np.full((len(ids), int(src_len.max()) + 1), PAD, np.int64)
        tgt_in = np.full((len(ids), int(tgt_len.max()) + 1), PAD, np.int64)
        tgt_out = np.full_like(tgt_in, PAD)
        for corpus, rows, local in parts:
            s_off, t_off = corpus.src_offsets[local], corpus.tgt_offsets[local]
            block = padded(corpus.src, s_off, src_len[rows], after=EOS)
            src[rows, : block.shape[1]] = block
            block = padded(corpus.tgt, t_off, tgt_len[rows], before=BOS)
            tgt_in[rows, : block.shape[1]] = block
            block = padded(corpus.tgt, t_off, tgt_len[rows], after=EOS)
            tgt_out[rows, : block.shape[1]] = block
        src_t, tokens = torch.from_numpy(src), int(tgt_len.sum()) + len(ids)
        return Batch(src_t, src_t != PAD, torch.from_numpy(tgt_in), torch.from_numpy(tgt_out), tokens)

    def mean_lengths(self) -> tuple[float, float]:
        """Mean source and target length over the pairs (EOS included)."""
        n = max(len(self), 1)
        return (sum(float(c.src_len.sum(dtype=np.int64)) for c in self.corpora) / n + 1,
                sum(float(c.tgt_len.sum(dtype=np.int64)) for c in self.corpora) / n + 1)


@dataclass
class PreparedData:
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    train: TrainSet
    dev: list[Example]
    dev_text: ParallelText  # the dev pairs kept, as raw text (references for BLEU)
    notes: list[str] = field(default_factory=list)  # what was filtered and reused, for the caller to report


def drop_empty(text: ParallelText) -> tuple[ParallelText, int]:
    keep = [i for i, (s, t) in enumerate(zip(text.src, text.tgt)) if s and t]
    aligned = [text.alignments[i] for i in keep] if text.alignments else None
    kept = ParallelText(text.name, [text.src[i] for i in keep], [text.tgt[i] for i in keep], aligned)
    return kept, len(text) - len(keep)


def encode(text: ParallelText, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer) -> list[Example]:
    return [make_example(s, t) for s, t in zip(src_tokenizer.encode_batch(text.src),
                                                tgt_tokenizer.encode_batch(text.tgt))]


def _check_kept(cfg: DataConfig, corpus: PreparedCorpus, label: str) -> None:
    meta = corpus.meta
    if meta["pairs"]:
        return
    if meta["dropped_long"]:
        raise DataError(f"{label}: all {meta['dropped_long']} pairs are longer than data.max_len="
                        f"{cfg.max_len} tokens on one side; raise data.max_len")
    raise DataError(f"{label}: no sentence pairs left after dropping empty lines")


def prepare_train(cfg: DataConfig, tokenizers: tuple[Tokenizer, Tokenizer] | None = None,
                  progress: Progress = _no_progress) -> tuple[Tokenizer, Tokenizer, TrainSet, list[str]]:
    """The tokenizers (trained, or the given ones) and the prepared training corpora, from the cache
    where they were made before; and notes on what was kept, dropped and reused."""
    sources = train_sources(cfg)
    notes = []
    if tokenizers is None:
        src_tok, tgt_tok, hit = prepare_tokenizers(cfg, sources, progress)
        notes.append(f"vocabulary: {src_tok.vocab_size} source, {tgt_tok.vocab_size} target "
                     f"({'joint' if cfg.joint_vocab else 'separate'} {cfg.tokenizer}, "
                     f"{'prepared before' if hit else 'trained now'})")
    else:
        src_tok, tgt_tok = tokenizers
        notes.append(f"vocabulary: {src_tok.vocab_size} source, {tgt_tok.vocab_size} target (the model's)")
    corpora = []
    for source in sources:
        corpus, hit = prepare_corpus(cfg, source, src_tok, tgt_tok, progress)
        _check_kept(cfg, corpus, source.label)
        m = corpus.meta
        weight = f", weight {source.corpus.weight:g}" if len(sources) > 1 else ""
        notes.append(f"train: {source.label}: {m['pairs']} pairs kept{weight}; dropped {m['dropped_empty']} with an "
                     f"empty side and {m['dropped_long']} longer than data.max_len={cfg.max_len} tokens "
                     f"({'prepared before' if hit else 'prepared now'}: {corpus.folder})")
        corpora.append(corpus)
    return src_tok, tgt_tok, TrainSet(corpora, [s.corpus.weight for s in sources]), notes


def prepare_data(cfg: DataConfig, tokenizers: tuple[Tokenizer, Tokenizer] | None = None,
                 progress: Progress = _no_progress) -> PreparedData:
    """Prepare (or reuse) the training corpora; read and encode the dev set (read first: its mistakes are
    found before a long preparation, after the training files were checked to be there)."""
    for source in train_sources(cfg):
        source.identity()
    dev, empty_dev = drop_empty(load_split(cfg, "dev"))
    if not len(dev):
        raise DataError(f"{dev.name}: no sentence pairs left after dropping empty lines")
    src_tok, tgt_tok, train, notes = prepare_train(cfg, tokenizers, progress)
    notes.insert(0, f"dev: {dev.name}" + (f" (dropped {empty_dev} pairs with an empty side)" if empty_dev else ""))
    return PreparedData(src_tok, tgt_tok, train, encode(dev, src_tok, tgt_tok), dev, notes)
