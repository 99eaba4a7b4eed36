"""Corpus scores through sacrebleu (BLEU, chrF, TER), each with its reproducibility signature."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF, TER


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    signature: str
    detail: str  # sacrebleu's own one-line rendering (n-gram precisions, brevity penalty, ...)

    def as_dict(self) -> dict:
        return asdict(self)


def _score(metric: BLEU | CHRF | TER, hypotheses: list[str], references: list[str]) -> Score:
    result = metric.corpus_score(hypotheses, [references])
    return Score(result.name, round(float(result.score), 2), str(metric.get_signature()), str(result))


def bleu(hypotheses: list[str], references: list[str]) -> Score:
    return _score(BLEU(), hypotheses, references)


def chrf(hypotheses: list[str], references: list[str]) -> Score:
    return _score(CHRF(), hypotheses, references)


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict[str, Score]:
    """BLEU, chrF and TER of detokenized hypotheses against one reference each."""
    assert len(hypotheses) == len(references)
    return {"bleu": bleu(hypotheses, references),
            "chrf": _score(CHRF(), hypotheses, references),
            "ter": _score(TER(), hypotheses, references)}
