"""The Python API: load a run (or several, as one ensemble), then translate or score text; plain dataclasses
come back. The same decode requests as the command line, checked the same way.

    import mtcli
    model = mtcli.load("runs/toy-attention")
    for result in model.translate(["the dog sleeps"], beam=5, n_best=2):
        print(result.text, [(h.text, h.score) for h in result.hypotheses])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mtcli.checkpoint import Bundle, load_checkpoint, resolve_checkpoint
from mtcli.config import DecodeConfig
from mtcli.inference import ReferenceScore, Translation, decode_request, ensemble, translator


class Model:
    """A loaded run: `decode` is its decode section, which every call starts from."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    @property
    def decode(self) -> DecodeConfig:
        return self.bundle.config.decode

    def translate(self, texts: str | Sequence[str], *, beam: int | None = None, sampling: bool = False,
                  attention: bool = False, alignment: bool = False, **decode: object) -> list[Translation]:
        """One Translation per text (a single string counts as one text), its outputs best first.

        `beam` asks for beam search of that width (1 = greedy), `sampling` for sampling; any other key of the
        decode section by name (n_best, length_penalty, max_len, min_len, no_repeat_ngram_size, temperature,
        top_k, top_p, seed, batch_size, memory_mb, precision). `attention` keeps each output's attention
        (T, K, S) tensor; `alignment` adds its Pharaoh word alignment."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        request = decode_request(self.decode, "translate()", beam=beam, sampling=sampling, **decode)
        return translator(self.bundle, request).translate(texts, need_attention=attention, alignment=alignment)

    def score(self, sources: Sequence[str], references: Sequence[str], **decode: object) -> list[ReferenceScore]:
        """The model's log-probability (and perplexity) of each reference given its source."""
        if len(sources) != len(references):
            raise ValueError(f"{len(sources)} sources but {len(references)} references")
        request = decode_request(self.decode, "score()", **decode)
        return translator(self.bundle, request).score(list(sources), list(references))


def load(path: str | Path | Sequence[str | Path], device: str = "cpu") -> Model:
    """A run folder or checkpoint file; several (a list) decode as one ensemble (same vocabularies)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return Model(ensemble([load_checkpoint(resolve_checkpoint(p), device) for p in paths]))
