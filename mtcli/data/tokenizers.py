"""Text <-> token ids: a whitespace tokenizer (toy data) and sentencepiece (real data).

Both put the same four specials at ids 0-3 and serialize to plain data (str, list, bytes), so a
tokenizer travels inside a checkpoint that loads without executing code.
"""

from __future__ import annotations

import collections
import functools
import heapq
import io
import itertools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import sentencepiece as spm

from mtcli.errors import CheckpointError, DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def pieces(self, ids: Iterable[int]) -> list[str]: ...

    def state(self) -> dict: ...


class WhitespaceTokenizer:
    """Words split on whitespace; a fixed vocabulary built from the training text."""

    def __init__(self, vocab: list[str]):
        assert vocab[: len(SPECIALS)] == SPECIALS
        self.vocab = list(vocab)
        self.index = {word: i for i, word in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)

    @classmethod
    def train(cls, texts: Iterable[str], max_size: int) -> WhitespaceTokenizer:
        counts = collections.Counter(word for text in texts for word in text.split())
        words = sorted(counts, key=lambda w: (-counts[w], w))[: max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + words)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(word, UNK) for word in text.split()]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i >= len(SPECIALS) or i == UNK)

    def state(self) -> dict:
        return {"kind": "whitespace", "vocab": self.vocab}


class SentencePieceTokenizer:
    """A sentencepiece model (unigram or BPE) trained on the training text; detokenizes exactly."""

    def __init__(self, model: bytes):
        self.model = bytes(model)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model)
        self.vocab_size = self.sp.get_piece_size()
        assert [self.sp.id_to_piece(i) for i in range(len(SPECIALS))] == SPECIALS

    @classmethod
    def train(cls, texts: Iterable[str] | None, vocab_size: int, model_type: str, seed: int = 1,
              files: list[Path] = (), sample: int = 0) -> SentencePieceTokenizer:
        """Train on `files` (sentencepiece reads them itself) or on the `texts` stream; at most `sample`
        sentences (0: all), drawn by sentencepiece's seeded reservoir sampling, on every core."""
        buffer = io.BytesIO()
        spm.set_random_generator_seed(seed)  # input sampling is seeded: the same data gives the same model
        source = {"input": [str(f) for f in files]} if files else {"sentence_iterator": iter(texts)}
        try:
            spm.SentencePieceTrainer.train(
                **source, model_writer=buffer, vocab_size=vocab_size, model_type=model_type,
                hard_vocab_limit=False, character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
                pad_piece=SPECIALS[PAD], unk_piece=SPECIALS[UNK], bos_piece=SPECIALS[BOS], eos_piece=SPECIALS[EOS],
                num_threads=len(os.sched_getaffinity(0)), input_sentence_size=sample,
                shuffle_input_sentence=True, minloglevel=2,
            )
        except RuntimeError as exc:
            raise DataError(_training_error(str(exc), vocab_size)) from None
        return cls(buffer.getvalue())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=len(os.sched_getaffinity(0)))

    def sample(self, rows: list[list[int]], alpha: float, nbest: int, rng: np.random.Generator) -> list[list[int]]:
        """The texts of `rows` segmented anew, drawing from `rng` alone (sentencepiece's own sampler is
        salted per process, so a resumed run could not draw the same again). Unigram: one of the `nbest`
        best segmentations, with probability proportional to exp(alpha * score), as sentencepiece samples
        for nbest > 1 (Kudo 2018); BPE: the merges, each skipped with probability alpha (BPE-dropout)."""
        texts = [self.decode(row) for row in rows]
        if self.is_bpe:
            return [self._bpe_dropout(text, alpha, rng) for text in texts]
        out = []
        for candidates in self.sp.nbest_encode_as_ids(texts, nbest_size=nbest):
            starts = np.cumsum([0] + [len(ids) for ids in candidates[:-1]])
            scores = alpha * np.add.reduceat(self.scores[list(itertools.chain.from_iterable(candidates))], starts)
            weights = np.exp(scores - scores.max())
            out.append(candidates[rng.choice(len(candidates), p=weights / weights.sum())])
        return out

    @functools.cached_property
    def is_bpe(self) -> bool:
        try:  # sentencepiece offers n-best segmentations for unigram models only
            self.sp.nbest_encode_as_ids("a", nbest_size=2)
        except RuntimeError:
            return True
        return False

    @functools.cached_property
    def scores(self) -> np.ndarray:
        """Each piece's score: its log-probability (unigram) or minus its merge rank (BPE)."""
        return np.array([self.sp.get_score(i) for i in range(self.vocab_size)])

    @functools.cached_property
    def merged(self) -> dict[str, int]:
        """Piece -> id of the ordinary pieces (not the specials): what a BPE merge may produce."""
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)
                if not (self.sp.is_unknown(i) or self.sp.is_control(i) or self.sp.is_unused(i))}

    def _bpe_dropout(self, text: str, alpha: float, rng: np.random.Generator) -> list[int]:
        """sentencepiece's BPE encoding (best-scored adjacent pair merged first, leftmost among equals),
        each merge skipped with probability alpha. With alpha 0 it is sentencepiece's own segmentation for
        the models mtcli trains (no user-defined or unused pieces, no byte fallback)."""
        symbols = list(self.sp.normalize(text))
        after = list(range(1, len(symbols))) + [-1]
        before = list(range(-1, len(symbols) - 1))
        agenda: list[tuple[float, int, int, int]] = []

        def consider(left: int, right: int) -> None:
            piece = symbols[left] + symbols[right] if left >= 0 and right >= 0 else ""
            if piece in self.merged:
                heapq.heappush(agenda, (-self.scores[self.merged[piece]], left, right, len(piece)))

        for left in range(len(symbols) - 1):
            consider(left, left + 1)
        while agenda:
            _, left, right, size = heapq.heappop(agenda)
            if not (symbols[left] and symbols[right]) or len(symbols[left] + symbols[right]) != size \
                    or rng.random() < alpha:
                continue  # stale (a side was merged since), or dropped
            symbols[left], symbols[right] = symbols[left] + symbols[right], ""
            after[left] = after[right]
            if after[right] >= 0:
                before[after[right]] = left
            consider(before[left], left)
            consider(left, after[left])
        return [self.merged.get(piece, UNK) for piece in symbols if piece]

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i >= len(SPECIALS) or i == UNK])

    def state(self) -> dict:
        return {"kind": "sentencepiece", "model": self.model}


def _training_error(message: str, vocab_size: int) -> str:
    """sentencepiece's refusal as one line with the remedy (its messages start with a source location)."""
    need = re.search(r"(\d+) vs (\d+)", message)
    if "smaller than required_chars" in message and need:
        return (f"data.vocab_size: {vocab_size} is too small for sentencepiece on this corpus: it needs at least "
                f"{need.group(2)} (every character of the text and the special tokens); raise data.vocab_size")
    return "sentencepiece could not be trained: " + message.strip().splitlines()[-1].split(") ", 1)[-1]


def tokenizer_from_state(state: dict) -> Tokenizer:
    kind = state.get("kind") if isinstance(state, dict) else None
    try:
        if kind == "whitespace":
            return WhitespaceTokenizer(state["vocab"])
        if kind == "sentencepiece":
            return SentencePieceTokenizer(state["model"])
    except (KeyError, AssertionError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"the stored {kind} tokenizer is damaged ({exc})") from None
    raise CheckpointError(f"unknown tokenizer kind {kind!r} in checkpoint")
