"""Text in, text out: tokenize, batch by length, search, detokenize, restore the input order.

Used by validation, evaluate, translate and visualize; knows nothing of the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtcli.config import DecodeConfig
from mtcli.data.batching import Example, collate, make_example
from mtcli.data.tokenizers import EOS, Tokenizer
from mtcli.models.base import Backend
from mtcli.runtime import Precision
from mtcli.search import Hypothesis, beam_search, greedy_search, output_limits


@dataclass
class Translation:
    text: str  # detokenized output
    src_pieces: list[str]  # source tokens as the model saw them, EOS included
    tgt_pieces: list[str]  # output tokens, EOS included
    score: float
    attention: torch.Tensor | None = None  # (T, K, S) with T = len(tgt_pieces), S = len(src_pieces)


def decode_examples(model: Backend, examples: list[Example], decode: DecodeConfig, beam_size: int,
                    need_attention: bool = False) -> list[Hypothesis]:
    """Search outputs for every example, in the examples' order; batches sorted by source length."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].src))
    results: list[Hypothesis | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    with Precision(decode.precision, device).autocast():  # bf16: the search runs under autocast
        for start in range(0, len(order), decode.batch_size):
            index = order[start: start + decode.batch_size]
            batch = collate([examples[i] for i in index], index, with_target=False).to(device)
            limits = output_limits(batch.src_mask, decode.max_len, decode.max_len_ratio)
            if beam_size == 1:
                hyps = greedy_search(model, batch.src, batch.src_mask, limits, need_attention, decode.min_len)
            else:
                hyps = [h[0] for h in beam_search(model, batch.src, batch.src_mask, limits, beam_size,
                                                  decode.length_penalty, need_attention, min_len=decode.min_len)]
            for i, hyp in zip(index, hyps):
                results[i] = hyp
    model.train(was_training)
    return results  # type: ignore[return-value]


class Translator:
    def __init__(self, model: Backend, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, decode: DecodeConfig):
        self.model, self.src_tokenizer, self.tgt_tokenizer, self.decode = model, src_tokenizer, tgt_tokenizer, decode

    def translate(self, texts: list[str], beam_size: int | None = None, need_attention: bool = False
                  ) -> list[Translation]:
        """One translation per text, in order; a blank line translates to a blank line."""
        beam = beam_size or self.decode.beam_size
        todo = [i for i, text in enumerate(texts) if text.strip()]
        examples = [make_example(self.src_tokenizer.encode(texts[i]), []) for i in todo]
        hyps = decode_examples(self.model, examples, self.decode, beam, need_attention)
        out = [Translation("", [], [], 0.0) for _ in texts]
        for i, example, hyp in zip(todo, examples, hyps):
            attention = None
            if hyp.attention is not None:
                attention = hyp.attention[:, :, : len(example.src)].float().cpu()  # drop padding columns
            out[i] = Translation(self.tgt_tokenizer.decode(hyp.tokens), self.src_tokenizer.pieces(example.src),
                                 self.tgt_tokenizer.pieces(hyp.tokens + [EOS]), hyp.score, attention)
        return out
