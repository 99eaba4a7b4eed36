"""Text in, text out: the decode request (a run's decode section with overrides), tokenize, batch by source
length within a memory estimate, search, detokenize, restore the input order; the model's score of given
translations; several checkpoints as one ensemble.

Used by validation, evaluate, translate, compare, report, visualize and the Python API; knows nothing of
the terminal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mtcli.checkpoint import Bundle
from mtcli.config import DecodeConfig, decode_overrides, decode_with
from mtcli.data.batching import Example, collate, make_example
from mtcli.data.tokenizers import EOS, Tokenizer
from mtcli.errors import CheckpointError, ConfigError, MtcliError
from mtcli.models.base import Backend
from mtcli.models.ensemble import Ensemble
from mtcli.runtime import Precision
from mtcli.search import Hypothesis, forced_log_probs, output_limit, output_limits, processors, search, strategy

# ---------------------------------------------------------------- the decode request


def decode_request(decode: DecodeConfig, source: str = "options", *, beam: int | None = None,
                   sampling: bool = False, overrides: Sequence[str] = (), **values: Any) -> DecodeConfig:
    """A run's decode section with the overrides of a command line or an API call: `--set decode.KEY=VALUE`
    strings, then `beam` (beam search of that width; 1 is greedy), `sampling`, and decode keys by name
    (None leaves a key as it is). Typed and checked as a config file is."""
    chosen = decode_overrides(list(overrides))
    if beam is not None and sampling:
        raise ConfigError(f"{source}: beam search and sampling exclude each other: choose one")
    if beam is not None:
        chosen.update(strategy="beam", beam_size=beam)
    if sampling:
        chosen["strategy"] = "sampling"
    chosen.update({key: value for key, value in values.items() if value is not None})
    return decode_with(decode, chosen, source)


def describe(decode: DecodeConfig) -> str:
    """'greedy', 'beam 5' or 'sampling (temperature 1, top-k 10, seed 1)': as the strategy says it."""
    return strategy(decode).describe()


def width(decode: DecodeConfig) -> int:
    """Rows the search keeps per sentence: the beam, the samples, or one."""
    return strategy(decode).width


# ---------------------------------------------------------------- batches of search


def plan_batches(model: Backend, examples: list[Example], order: list[int], decode: DecodeConfig,
                 need_attention: bool = False) -> list[list[int]]:
    """Runs of `order` (ascending source length) of at most decode.batch_size sentences whose estimated search
    memory (hypotheses x model.search_floats) fits decode.memory_mb; a sentence that alone does not fit is
    refused before anything is allocated."""
    budget, rows = decode.memory_mb * 2 ** 20 // 4, width(decode)
    maps = math.prod(model.attention_shape()) if need_attention and model.has_attention else 0
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # lengths ascend: the newest sentence is the batch's longest
        src_len = len(examples[i].src)
        out_len = output_limit(src_len, decode.max_len, decode.max_len_ratio)
        per_sentence = rows * (model.search_floats(src_len, out_len) + out_len * maps * src_len)
        if per_sentence > budget:
            raise MtcliError(f"decode.memory_mb: {rows} hypotheses of a {src_len}-token sentence with up to "
                             f"{out_len} output tokens need about {per_sentence * 4 / 2 ** 20:,.1f} MB, more than "
                             f"decode.memory_mb ({decode.memory_mb}); lower --beam / --n-best or --max-len, or "
                             "raise decode.memory_mb (--set decode.memory_mb=N)")
        if current and (len(current) >= decode.batch_size or (len(current) + 1) * per_sentence > budget):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] * bool(current)


def decode_examples(model: Backend, examples: list[Example], decode: DecodeConfig, need_attention: bool = False
                    ) -> list[list[Hypothesis]]:
    """The n-best of every example, best first, in the examples' order; batches sorted by source length."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].src))
    results: list[list[Hypothesis]] = [[] for _ in examples]
    chosen = processors(decode)
    was_training = model.training
    model.eval()
    try:
        with Precision(decode.precision, device).autocast():  # bf16: the search runs under autocast
            for index in plan_batches(model, examples, order, decode, need_attention):
                batch = collate([examples[i] for i in index], with_target=False).to(device)
                limits = output_limits(batch.src_mask, decode.max_len, decode.max_len_ratio)
                found = search(model, batch.src, batch.src_mask, limits, strategy(decode), chosen, need_attention)
                for i, hyps in zip(index, found):
                    results[i] = hyps
    finally:
        model.train(was_training)
    return results


# ---------------------------------------------------------------- translations as text


@dataclass
class Candidate:
    """One output for one input: the best of a beam, one of its n-best, or one sample."""

    text: str  # detokenized
    pieces: list[str]  # output tokens, EOS included
    score: float  # log_prob / length penalty (decode.length_penalty): what the search ranks by
    log_prob: float  # the model's log-probability of the output, EOS included
    token_log_probs: list[float]  # one per piece
    attention: torch.Tensor | None = None  # (T, K, S): T = len(pieces), K maps (layers x heads), S source pieces
    alignment: str | None = None  # Pharaoh 'i-j' source-target word links from the attention, when asked for

    def as_dict(self) -> dict[str, Any]:
        out = {"text": self.text, "score": _number(self.score), "log_prob": _number(self.log_prob),
               "tokens": self.pieces, "token_log_probs": [_number(x) for x in self.token_log_probs]}
        return out if self.alignment is None else {**out, "alignment": self.alignment}


@dataclass
class Translation:
    """The outputs for one input line, best first (none for a blank line)."""

    source: str
    src_pieces: list[str]  # source tokens as the model saw them, EOS included
    hypotheses: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.hypotheses[0] if self.hypotheses else Candidate("", [], 0.0, 0.0, [])

    @property
    def text(self) -> str:
        return self.best.text

    @property
    def tgt_pieces(self) -> list[str]:
        return self.best.pieces

    @property
    def score(self) -> float:
        return self.best.score

    @property
    def attention(self) -> torch.Tensor | None:
        return self.best.attention

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "hypotheses": [h.as_dict() for h in self.hypotheses]}


@dataclass
class ReferenceScore:
    """The model's score of a given translation (forced decoding)."""

    reference: str
    pieces: list[str]  # reference tokens, EOS included
    log_prob: float
    token_log_probs: list[float]

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_prob / len(self.pieces))

    def as_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "log_prob": _number(self.log_prob),
                "perplexity": _number(self.perplexity), "tokens": self.pieces,
                "token_log_probs": [_number(x) for x in self.token_log_probs]}


def _number(value: float) -> float | None:
    """JSON has no infinities: None where nothing could be scored."""
    return value if math.isfinite(value) else None


def word_ids(pieces: list[str]) -> list[int]:
    """The word of each piece: sentencepiece marks a word's first piece with '▁'; else each piece is a word."""
    if not any(p.startswith("\u2581") for p in pieces):
        return list(range(len(pieces)))
    ids, word = [], -1
    for piece in pieces:
        word += piece.startswith("\u2581") or word < 0
        ids.append(word)
    return ids


def word_alignment(src_pieces: list[str], tgt_pieces: list[str], attention: torch.Tensor,
                   shape: tuple[int, int]) -> str:
    """Pharaoh 'i-j' links: each output word to the source word its pieces attend to most (the last layer's
    mean over heads); EOS left out on both sides."""
    layers, heads = shape
    weights = attention.view(attention.size(0), layers, heads, -1)[:, -1].mean(dim=1)  # (T, S)
    best = weights[: len(tgt_pieces) - 1, : len(src_pieces) - 1].argmax(dim=-1).tolist()
    src_words, tgt_words = word_ids(src_pieces[:-1]), word_ids(tgt_pieces[:-1])
    links = sorted({(src_words[s], tgt_words[t]) for t, s in enumerate(best)})
    return " ".join(f"{s}-{t}" for s, t in links)


class Translator:
    """A model, its tokenizers and one decode request."""

    def __init__(self, model: Backend, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, decode: DecodeConfig):
        self.model, self.src_tokenizer, self.tgt_tokenizer, self.decode = model, src_tokenizer, tgt_tokenizer, decode

    def translate(self, texts: list[str], need_attention: bool = False, alignment: bool = False
                  ) -> list[Translation]:
        """The outputs for every text, in order; a blank line has none (it translates to a blank line).
        `alignment` adds each output's word alignment (and needs a model with attention)."""
        if alignment and not self.model.has_attention:
            raise MtcliError("word alignments come from the attention, and this model has none (seq2seq backend)")
        todo = [i for i, text in enumerate(texts) if text.strip()]
        examples = [make_example(self.src_tokenizer.encode(texts[i]), []) for i in todo]
        found = decode_examples(self.model, examples, self.decode, need_attention or alignment)
        out = [Translation(text, []) for text in texts]
        for i, example, hyps in zip(todo, examples, found):
            out[i] = Translation(texts[i], self.src_tokenizer.pieces(example.src),
                                 [self._candidate(h, len(example.src)) for h in hyps])
            if alignment:
                for candidate in out[i].hypotheses:
                    candidate.alignment = word_alignment(out[i].src_pieces, candidate.pieces, candidate.attention,
                                                         self.model.attention_shape())
                    candidate.attention = candidate.attention if need_attention else None
        return out

    def _candidate(self, hyp: Hypothesis, src_len: int) -> Candidate:
        attention = None
        if hyp.attention is not None:
            attention = hyp.attention[:, :, :src_len].float().cpu()  # drop padding columns
        return Candidate(self.tgt_tokenizer.decode(hyp.tokens), self.tgt_tokenizer.pieces(hyp.tokens + [EOS]),
                         hyp.score, hyp.log_prob, hyp.token_log_probs, attention)

    def score(self, sources: list[str], references: list[str]) -> list[ReferenceScore]:
        """The model's log-probability of each reference given its source (forced decoding), in order."""
        assert len(sources) == len(references)
        examples = [make_example(self.src_tokenizer.encode(s), self.tgt_tokenizer.encode(r))
                    for s, r in zip(sources, references)]
        order = sorted(range(len(examples)), key=lambda i: (len(examples[i].src), len(examples[i].tgt)))
        longest = max((len(e.tgt) + 1 for e in examples), default=1)  # the memory estimate's output length
        single = dataclasses.replace(self.decode, strategy="greedy", n_best=1, max_len=longest, max_len_ratio=1e9)
        scores: list[list[float]] = [[] for _ in examples]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with Precision(self.decode.precision, device).autocast():
                for index in plan_batches(self.model, examples, order, single):
                    batch = collate([examples[i] for i in index]).to(device)
                    found = forced_log_probs(self.model, batch.src, batch.src_mask, batch.tgt_in, batch.tgt_out)
                    for row, i in enumerate(index):
                        scores[i] = found[row, : len(examples[i].tgt) + 1].tolist()
        finally:
            self.model.train(was_training)
        return [ReferenceScore(ref, self.tgt_tokenizer.pieces(e.tgt + [EOS]), math.fsum(s), s)
                for ref, e, s in zip(references, examples, scores)]


def translator(bundle: Bundle, decode: DecodeConfig | None = None) -> Translator:
    """A run's translator, with its own decode section unless another request is given."""
    return Translator(bundle.model, bundle.src_tokenizer, bundle.tgt_tokenizer, decode or bundle.config.decode)


def ensemble(bundles: list[Bundle]) -> Bundle:
    """Several checkpoints as one Bundle whose model is their Ensemble (one checkpoint: itself); the decode
    section and tokenizers are the first one's. Checkpoints with other vocabularies are refused."""
    first = bundles[0]
    if len(bundles) == 1:
        return first
    for other in bundles[1:]:
        for side, a, b in (("source", first.src_tokenizer, other.src_tokenizer),
                           ("target", first.tgt_tokenizer, other.tgt_tokenizer)):
            if a.state() != b.state():
                raise CheckpointError(f"{other.path}: another {side} vocabulary than {first.path}: an ensemble "
                                      "needs checkpoints with the same vocabularies")
    model = Ensemble([b.model for b in bundles])
    return dataclasses.replace(first, model=model, meta={**first.meta, "ensemble": [str(b.path) for b in bundles]})


def bundle_name(bundle: Bundle) -> str:
    """The checkpoint's path, or the members' paths of an ensemble."""
    members = bundle.meta.get("ensemble")
    return " + ".join(members) if members else str(bundle.path)


# ---------------------------------------------------------------- output lines (translate)


def _fields(number: int | None, text: str, cand: Candidate | None, scores: bool, token_scores: bool,
            alignment: bool) -> str:
    cols = ([] if number is None else [str(number)]) + [text]
    if scores or token_scores:
        cols += [f"{cand.score:.4f}", f"{cand.log_prob:.4f}"] if cand else ["", ""]
    if token_scores:
        cols.append(" ".join(f"{x:.4f}" for x in cand.token_log_probs) if cand else "")
    if alignment:
        cols.append(cand.alignment or "" if cand else "")
    return "\t".join(cols)


def text_lines(result: Translation, number: int, n_best: int = 1, scores: bool = False, token_scores: bool = False,
               alignment: bool = False) -> list[str]:
    """The output text of one input line: its translation; with n_best > 1 one line per output, each
    starting with the input's line number; tab-separated columns added by `scores` (score, log-probability),
    `token_scores` (also the tokens' log-probabilities) and `alignment` (Pharaoh i-j)."""
    if n_best == 1 and not (scores or token_scores or alignment):
        return [result.text]
    number_column = number if n_best > 1 else None
    return [_fields(number_column, c.text, c, scores, token_scores, alignment) for c in result.hypotheses] or \
        [_fields(number_column, "", None, scores, token_scores, alignment)]


def json_line(result: Translation | ReferenceScore, number: int, source: str | None = None) -> str:
    """One JSON Lines record: the input's line number, its source and its outputs (or reference score)."""
    record = {"line": number} if source is None else {"line": number, "source": source}
    return json.dumps({**record, **result.as_dict()}, ensure_ascii=False)


def reference_line(result: ReferenceScore, token_scores: bool = False) -> str:
    """log-probability and perplexity of a reference (and its tokens' log-probabilities), tab-separated."""
    cols = [f"{result.log_prob:.4f}", f"{result.perplexity:.4f}"]
    return "\t".join(cols + [" ".join(f"{x:.4f}" for x in result.token_log_probs)] * token_scores)
