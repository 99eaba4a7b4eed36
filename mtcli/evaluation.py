"""Scoring a trained model on a test set: translate, detokenize, score with every metric of mtcli.metrics.

Knows nothing of the terminal; the CLI renders the result as a table or JSON.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mtcli.analysis import AlignmentReport, alignment_report
from mtcli.checkpoint import Bundle
from mtcli.config import DecodeConfig
from mtcli.data.corpus import ParallelText, load_split, read_pair
from mtcli.errors import MtcliError
from mtcli.inference import bundle_name, describe, translator
from mtcli.metrics import Score, corpus_scores


@dataclass
class EvaluationResult:
    checkpoint: str  # the checkpoint's path, or an ensemble's paths joined by ' + '
    test_set: str
    sentences: int
    beam_size: int
    scores: dict[str, Score]
    hypotheses: list[str]
    seconds: float
    alignment: AlignmentReport | None = None  # attention vs. gold links (toy data, attention models)
    precision: str = "fp32"  # of the search (decode.precision)
    search: str = ""  # 'greedy', 'beam 5', 'sampling (...)'
    decode: dict = field(default_factory=dict)  # the decode request, every key

    def as_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "test_set": self.test_set, "sentences": self.sentences,
                "beam_size": self.beam_size, "search": self.search, "precision": self.precision,
                "decode": self.decode, "seconds": round(self.seconds, 2),
                **{name: score.as_dict() for name, score in self.scores.items()},
                "alignment": self.alignment.as_dict() if self.alignment else None}


def test_set(bundle: Bundle, src: Path | None, ref: Path | None) -> ParallelText:
    """--src/--ref files when given, else the test split named by the checkpoint's config."""
    if (src is None) != (ref is None):
        raise MtcliError("--src and --ref go together: give both files, or neither for the config's test set")
    if src is not None:
        return read_pair(src, ref)
    return load_split(bundle.config.data, "test")


def evaluate(bundle: Bundle, data: ParallelText, decode: DecodeConfig | None = None) -> EvaluationResult:
    """Translate `data` with the run's decode section (or `decode`) and score the first outputs."""
    decode = decode or bundle.config.decode
    start = time.perf_counter()
    hypotheses = [t.text for t in translator(bundle, decode).translate(data.src)]
    seconds = time.perf_counter() - start
    beam = decode.beam_size if decode.strategy == "beam" else 1
    scores = corpus_scores(data.src, hypotheses, data.tgt)
    return EvaluationResult(bundle_name(bundle), data.name, len(data), beam, scores, hypotheses, seconds,
                            alignment_report(bundle, data), decode.precision, describe(decode), asdict(decode))
