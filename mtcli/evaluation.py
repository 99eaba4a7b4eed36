"""Scoring a trained model on a test set: translate, detokenize, sacrebleu BLEU / chrF / TER.

Knows nothing of the terminal; the CLI renders the result as a table or JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mtcli.analysis import AlignmentReport, alignment_report
from mtcli.checkpoint import Bundle
from mtcli.data.corpus import ParallelText, load_split, read_pair
from mtcli.errors import MtcliError
from mtcli.inference import Translator
from mtcli.metrics import Score, corpus_scores


@dataclass
class EvaluationResult:
    checkpoint: Path
    test_set: str
    sentences: int
    beam_size: int
    scores: dict[str, Score]
    hypotheses: list[str]
    seconds: float
    alignment: AlignmentReport | None = None  # attention vs. gold links (toy data, attention models)
    precision: str = "fp32"  # of the search (decode.precision)

    def as_dict(self) -> dict:
        return {"checkpoint": str(self.checkpoint), "test_set": self.test_set, "sentences": self.sentences,
                "beam_size": self.beam_size, "precision": self.precision, "seconds": round(self.seconds, 2),
                **{name: score.as_dict() for name, score in self.scores.items()},
                "alignment": self.alignment.as_dict() if self.alignment else None}


def test_set(bundle: Bundle, src: Path | None, ref: Path | None) -> ParallelText:
    """--src/--ref files when given, else the test split named by the checkpoint's config."""
    if (src is None) != (ref is None):
        raise MtcliError("--src and --ref go together: give both files, or neither for the config's test set")
    if src is not None:
        return read_pair(src, ref)
    return load_split(bundle.config.data, "test")


def translator(bundle: Bundle) -> Translator:
    return Translator(bundle.model, bundle.src_tokenizer, bundle.tgt_tokenizer, bundle.config.decode)


def evaluate(bundle: Bundle, data: ParallelText, beam_size: int | None = None) -> EvaluationResult:
    beam = beam_size or bundle.config.decode.beam_size
    start = time.perf_counter()
    hypotheses = [t.text for t in translator(bundle).translate(data.src, beam)]
    seconds = time.perf_counter() - start
    return EvaluationResult(bundle.path, data.name, len(data), beam, corpus_scores(hypotheses, data.tgt),
                            hypotheses, seconds, alignment_report(bundle, data), bundle.config.decode.precision)
