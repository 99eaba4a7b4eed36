"""Corpus scores: each metric a function of sources, hypotheses and references, named in METRICS. evaluate,
compare, report and validation (train.best_metric) use every entry; sacrebleu's carry their signatures.

Knows nothing of models, files or the terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric as SacrebleuMetric


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    signature: str
    detail: str  # the metric's own one-line rendering (sacrebleu's: n-gram precisions, brevity penalty, ...)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Metric:
    """score(sources, hypotheses, references) -> Score, one reference per sentence, detokenized text.
    `paired` makes the sacrebleu object that compare's paired significance tests resample; without it,
    compare shows the score alone."""

    label: str  # in tables: 'BLEU', 'chrF2'
    score: Callable[[list[str], list[str], list[str]], Score]
    higher_is_better: bool = True
    paired: Callable[[], SacrebleuMetric] | None = None


def sacrebleu_metric(label: str, make: Callable[[], SacrebleuMetric], higher_is_better: bool = True) -> Metric:
    """A sacrebleu metric: its corpus score with its signature, and its paired tests in compare."""
    def score(sources: list[str], hypotheses: list[str], references: list[str]) -> Score:
        metric = make()
        result = metric.corpus_score(hypotheses, [references])
        return Score(result.name, round(float(result.score), 2), str(metric.get_signature()), str(result))
    return Metric(label, score, higher_is_better, make)


METRICS: dict[str, Metric] = {
    "bleu": sacrebleu_metric("BLEU", BLEU),
    "chrf": sacrebleu_metric("chrF2", CHRF),
    "chrf++": sacrebleu_metric("chrF2++", lambda: CHRF(word_order=2)),
    "ter": sacrebleu_metric("TER", TER, higher_is_better=False),
}


def score(name: str, sources: list[str], hypotheses: list[str], references: list[str]) -> Score:
    return METRICS[name].score(sources, hypotheses, references)


def corpus_scores(sources: list[str], hypotheses: list[str], references: list[str]) -> dict[str, Score]:
    """Every metric of METRICS on detokenized hypotheses against one reference each."""
    assert len(hypotheses) == len(references) == len(sources)
    return {name: metric.score(sources, hypotheses, references) for name, metric in METRICS.items()}


def lower_is_better(name: str) -> bool:
    """For train.best_metric: the dev loss, or a metric named in METRICS."""
    return name == "loss" or not METRICS[name].higher_is_better
