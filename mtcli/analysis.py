"""Analysis of translations: significance between systems, BLEU by source length, attention vs. gold alignments.

Pure functions over texts, tensors and checkpoints; knows nothing of the terminal (ui.py renders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from mtcli.checkpoint import Bundle
from mtcli.config import DecodeConfig
from mtcli.data.batching import collate, make_example
from mtcli.data.corpus import ParallelText
from mtcli.errors import MtcliError
from mtcli.inference import describe, translator
from mtcli.metrics import METRICS
from mtcli.models import BACKENDS
from mtcli.runlog import read_records
from mtcli.visualize import pick_map

DEFAULT_SAMPLES = {"bs": 1000, "ar": 10000}  # sacrebleu's own defaults, stated here so reports can say them

# ---------------------------------------------------------------- significance


@dataclass
class SystemScores:
    """One system's corpus scores with bootstrap mean and 95% confidence half-width, and its p-value
    against the baseline (the first system; None for the baseline itself)."""

    name: str
    score: dict[str, float]
    mean: dict[str, float]
    ci: dict[str, float]
    p_value: dict[str, float | None]


def _number(value: float | None, digits: int) -> float | None:
    """sacrebleu hands back numpy floats; plain rounded floats for tables and JSON."""
    return None if value is None else round(float(value), digits)


def paired_significance(systems: list[tuple[str, list[str]]], references: list[str], test: str = "bs",
                        samples: int = 0, sources: list[str] | None = None
                        ) -> tuple[list[SystemScores], dict[str, str]]:
    """sacrebleu's paired bootstrap resampling (`bs`) or approximate randomization (`ar`) of every system
    against the first, for every metric of METRICS that sacrebleu can resample (the others: their score
    alone); returns the scores and the metric signatures.

    Confidence intervals come from bootstrap resampling in both cases (sacrebleu's own estimate).
    sacrebleu's fixed seed (SACREBLEU_SEED, default 12345) makes the figures reproducible.
    """
    named = list(systems)
    if len(named) == 1:  # sacrebleu estimates the baseline's interval while comparing: compare it to itself
        named.append((named[0][0] + " (copy)", named[0][1]))
    metrics = {key: metric.paired() for key, metric in METRICS.items() if metric.paired}
    paired = PairedTest(named, metrics, [references], test_type=test, n_samples=samples or DEFAULT_SAMPLES[test],
                        n_ar_confidence=0 if test == "ar" else -1)
    by_name, table = paired()  # keyed by sacrebleu's names of the scores ('chrF2'), in the order given
    names = dict(zip(metrics, by_name))
    signatures = {key: str(by_name[name]) for key, name in names.items()}
    out = []
    for i, (name, outputs) in enumerate(systems):
        results = {key: table[names[key]][i] for key in metrics}
        scores = SystemScores(
            name, {k: _number(r.score, 2) for k, r in results.items()},
            {k: _number(r.mean, 2) for k, r in results.items()}, {k: _number(r.ci, 2) for k, r in results.items()},
            {k: None if i == 0 else _number(r.p_value, 4) for k, r in results.items()})
        for key in METRICS.keys() - metrics.keys():
            score = METRICS[key].score(sources or [""] * len(outputs), outputs, references)
            scores.score[key], scores.mean[key], scores.ci[key], scores.p_value[key] = score.score, None, None, None
            signatures[key] = score.signature
        out.append(scores)
    return out, {key: signatures[key] for key in METRICS}


# ---------------------------------------------------------------- BLEU by source length


@dataclass
class LengthBucket:
    low: int  # source words, inclusive
    high: int  # inclusive
    sentences: int
    bleu: float | None  # None for an empty bucket

    @property
    def label(self) -> str:
        return f"{self.low}-{self.high}"


def length_buckets(sources: list[str], hypotheses: list[str], references: list[str], width: int = 10
                   ) -> list[LengthBucket]:
    """Corpus BLEU of the sentences whose source has 1..width, width+1..2*width, ... words."""
    if width < 1:
        raise MtcliError(f"--bucket-width {width}: must be at least 1")
    lengths = [len(s.split()) for s in sources]
    top = max(lengths, default=0)
    buckets = []
    for low in range(1, top + 1, width):
        high = low + width - 1
        index = [i for i, n in enumerate(lengths) if low <= n <= high]
        score = BLEU().corpus_score([hypotheses[i] for i in index], [[references[i] for i in index]]).score \
            if index else None
        buckets.append(LengthBucket(low, high, len(index), None if score is None else round(float(score), 2)))
    return buckets


# ---------------------------------------------------------------- attention as alignment


@torch.no_grad()
def forced_attention(bundle: Bundle, data: ParallelText, batch_size: int = 64) -> list[torch.Tensor]:
    """The model's attention while it reads each reference (teacher forcing through `step`, from BOS): one tensor
    (T + 1, K, S) per pair, T reference tokens plus EOS, K maps (layers x heads), S source tokens + EOS."""
    model = bundle.model
    examples = [make_example(bundle.src_tokenizer.encode(s), bundle.tgt_tokenizer.encode(t))
                for s, t in zip(data.src, data.tgt)]
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        batch = collate(chunk).to(device)
        if hasattr(model, "attention_maps"):  # the Transformer: one teacher-forced pass, all positions at once
            cross = model.attention_maps(batch.src, batch.src_mask, batch.tgt_in)["cross"]  # (B, L, H, T, S)
            maps = cross.permute(0, 3, 1, 2, 4).flatten(2, 3).float().cpu()  # (B, T + 1, L * H, S)
        else:
            state = model.init_state(model.encode(batch.src, batch.src_mask))
            steps = []
            for t in range(batch.tgt_in.size(1)):
                _, state, attention = model.step(batch.tgt_in[:, t], state, need_attention=True)
                steps.append(attention.float().cpu())  # (B, K, S)
            maps = torch.stack(steps, dim=1)  # (B, T + 1, K, S)
        for row, example in enumerate(chunk):
            out.append(maps[row, : len(example.tgt) + 1, :, : len(example.src)])
    return out


def argmax_links(weights: torch.Tensor, tgt_words: int, src_words: int) -> set[tuple[int, int]]:
    """One link per target word: its most attended source word (EOS columns and rows left out)."""
    best = weights[:tgt_words, :src_words].argmax(dim=-1).tolist()
    return {(s, t) for t, s in enumerate(best)}


@dataclass
class AlignmentScore:
    aer: float  # alignment error rate, %, with every gold link sure: 1 - 2|A & G| / (|A| + |G|)
    accuracy: float  # %, target words with a gold link whose argmax is one of their gold source words
    pairs: int

    def as_dict(self) -> dict:
        return {"aer": self.aer, "accuracy": self.accuracy, "pairs": self.pairs}


def parse_links(pharaoh: str) -> set[tuple[int, int]]:
    """'0-0 1-2 ...' (source-target word indices) -> {(0, 0), (1, 2), ...}."""
    return {(int(s), int(t)) for s, _, t in (link.partition("-") for link in pharaoh.split())}


def score_alignments(predicted: list[set[tuple[int, int]]], gold: list[str]) -> AlignmentScore:
    """AER and accuracy of predicted (source, target) links against gold Pharaoh-format links."""
    hits = sizes = 0
    correct = linked = 0
    for links, text in zip(predicted, gold):
        reference = parse_links(text)
        hits += len(links & reference)
        sizes += len(links) + len(reference)
        sources_of: dict[int, set[int]] = {}
        for s, t in reference:
            sources_of.setdefault(t, set()).add(s)
        for s, t in links:
            if t in sources_of:
                linked += 1
                correct += s in sources_of[t]
    aer = 100.0 * (1.0 - 2.0 * hits / sizes) if sizes else math.nan
    return AlignmentScore(round(aer, 2), round(100.0 * correct / max(linked, 1), 2), len(predicted))


@dataclass
class AlignmentReport:
    """Argmax alignments of a model's attention against the gold links of the toy pair."""

    kind: str  # e.g. "additive attention" or "transformer cross-attention"
    main: AlignmentScore  # the single map (RNN) or the mean of the last layer's heads (Transformer)
    main_label: str
    best_head: tuple[str, AlignmentScore] | None = None  # Transformer: the best single (layer, head)
    per_layer: dict[str, AlignmentScore] = field(default_factory=dict)  # Transformer: mean of heads per layer

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "map": self.main_label, **self.main.as_dict()}
        if self.best_head:
            out["best_head"] = {"map": self.best_head[0], **self.best_head[1].as_dict()}
            out["per_layer"] = {k: v.as_dict() for k, v in self.per_layer.items()}
        return out


def alignment_report(bundle: Bundle, data: ParallelText) -> AlignmentReport | None:
    """None when the model has no attention or the data carries no gold alignments (files)."""
    if not bundle.model.has_attention or not data.alignments:
        return None
    layers, heads = bundle.model.attention_shape()
    maps = forced_attention(bundle, data)
    sizes = [(len(t.split()), len(s.split())) for s, t in zip(data.src, data.tgt)]
    for (tgt_words, src_words), m in zip(sizes, maps):  # whitespace tokens: one piece per word
        if m.size(0) != tgt_words + 1 or m.size(2) != src_words + 1:
            raise MtcliError("attention vs. gold alignments needs a word-level (whitespace) tokenizer")

    def score(select) -> AlignmentScore:  # select: (T + 1, K, S) maps -> one (T + 1, S) map
        return score_alignments([argmax_links(select(m), t, s) for m, (t, s) in zip(maps, sizes)], data.alignments)

    kind = BACKENDS[bundle.config.model.backend].attention_label(bundle.config.model)
    if layers * heads == 1:
        return AlignmentReport(kind, score(lambda m: m[:, 0]), "attention")
    per_layer = {f"layer {layer}": score(lambda m, layer=layer: pick_map(m, (layers, heads), layer))
                 for layer in range(1, layers + 1)}
    heads_scores = {f"layer {layer} head {head}": score(lambda m, layer=layer, head=head: pick_map(
        m, (layers, heads), layer, head)) for layer in range(1, layers + 1) for head in range(1, heads + 1)}
    best = min(heads_scores.items(), key=lambda item: item[1].aer)
    last = f"layer {layers}"
    return AlignmentReport(kind, per_layer[last], f"mean of {heads} heads, {last}", best, per_layer)


# ---------------------------------------------------------------- run facts


def run_facts(bundle: Bundle) -> dict:
    """Parameters, training time and speed of the run a checkpoint comes from."""
    meta = bundle.meta
    facts = {"parameters": meta.get("parameters") or bundle.model.parameter_count(),
             "train_seconds": meta.get("train_seconds"), "tokens_per_s": None, "step": meta.get("step")}
    if meta.get("tokens") and meta.get("train_seconds"):
        facts["tokens_per_s"] = round(meta["tokens"] / meta["train_seconds"], 1)
    metrics = bundle.path.parent / "metrics.jsonl"
    if facts["tokens_per_s"] is None and metrics.is_file():  # runs written before checkpoints kept the count
        for record in read_records(metrics):
            if record.get("event") == "end":
                facts["tokens_per_s"] = record.get("tokens_per_s")
    return facts


def run_name(bundle: Bundle) -> str:
    path = Path(bundle.path)
    return path.parent.name if path.name in ("best.pt", "latest.pt") else path.stem


# ---------------------------------------------------------------- several runs on one test set


@dataclass
class RunComparison:
    name: str
    backend: str  # e.g. "seq2seq", "attention (additive)", "transformer"
    facts: dict  # parameters, train_seconds, tokens_per_s, step
    scores: SystemScores
    buckets: list[LengthBucket]
    alignment: AlignmentReport | None


@dataclass
class Comparison:
    test_set: str
    sentences: int
    beam_size: int | None  # the beam every run searched with; None: not one beam for all
    test: str  # bs | ar
    samples: int
    signatures: dict[str, str]
    runs: list[RunComparison]
    search: str = ""  # 'beam 5', 'greedy', ... or "each run's decode settings"

    def as_dict(self) -> dict:
        return {"test_set": self.test_set, "sentences": self.sentences, "beam_size": self.beam_size,
                "search": self.search,
                "significance_test": self.test, "samples": self.samples, "signatures": self.signatures,
                "runs": [{"name": r.name, "backend": r.backend, **r.facts,
                          **{m: {"score": r.scores.score[m], "mean": r.scores.mean[m], "ci95": r.scores.ci[m],
                                 "p_value": r.scores.p_value[m]} for m in r.scores.score},
                          "bleu_by_length": [{"source_words": b.label, "sentences": b.sentences, "bleu": b.bleu}
                                             for b in r.buckets],
                          "alignment": r.alignment.as_dict() if r.alignment else None} for r in self.runs]}


def backend_label(bundle: Bundle) -> str:
    model = bundle.config.model
    return BACKENDS[model.backend].label(model)


def compare_runs(bundles: list[Bundle], data: ParallelText, decodes: list[DecodeConfig] | None = None,
                 test: str = "bs", samples: int = 0, bucket_width: int = 10) -> Comparison:
    """Translate `data` with every run (each with its decode request; default: its own decode section); scores
    with confidence intervals and paired significance against the first run, BLEU by source length, and
    attention-vs-gold alignment where the data has gold links."""
    decodes = decodes or [b.config.decode for b in bundles]
    names = [run_name(b) for b in bundles]
    if len(set(names)) < len(names):
        names = [str(b.path) for b in bundles]
    outputs = [[t.text for t in translator(b, d).translate(data.src)] for b, d in zip(bundles, decodes)]
    scores, signatures = paired_significance(list(zip(names, outputs)), data.tgt, test, samples, data.src)
    runs = [RunComparison(name, backend_label(b), run_facts(b), score, length_buckets(data.src, out, data.tgt,
                                                                                      bucket_width),
                          alignment_report(b, data))
            for name, b, out, score in zip(names, bundles, outputs, scores)]
    used = samples or DEFAULT_SAMPLES[test]
    searches = {describe(d) for d in decodes}
    search = searches.pop() if len(searches) == 1 else "each run's decode settings"
    beams = {d.beam_size if d.strategy == "beam" else 1 for d in decodes}
    beam = beams.pop() if len(beams) == 1 and len(searches) <= 1 else None
    return Comparison(data.name, len(data), beam, test, used, signatures, runs, search)
