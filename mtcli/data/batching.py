"""Token ids -> padded batches: bucketed by length and capped by token count so padding stays small.

Knows nothing of models; the order of batches is a pure function of (seed, epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mtcli.data.tokenizers import BOS, EOS, PAD


@dataclass
class Example:
    src: list[int]  # ends with EOS
    tgt: list[int]  # without BOS/EOS


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) token ids, PAD-padded
    src_mask: torch.Tensor  # (B, S) bool, True at real tokens
    tgt_in: torch.Tensor | None  # (B, T) BOS y1 .. yn
    tgt_out: torch.Tensor | None  # (B, T) y1 .. yn EOS
    index: list[int]  # position of each row in the example list
    n_tgt_tokens: int  # real target tokens incl. EOS

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.src), move(self.src_mask), move(self.tgt_in), move(self.tgt_out),
                     self.index, self.n_tgt_tokens)


def make_example(src_ids: list[int], tgt_ids: list[int]) -> Example:
    return Example(list(src_ids) + [EOS], list(tgt_ids))


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(examples: list[Example], index: list[int], with_target: bool = True) -> Batch:
    src = _pad([e.src for e in examples])
    if not with_target:
        return Batch(src, src != PAD, None, None, index, 0)
    tgt_in = _pad([[BOS] + e.tgt for e in examples])
    tgt_out = _pad([e.tgt + [EOS] for e in examples])
    return Batch(src, src != PAD, tgt_in, tgt_out, index, sum(len(e.tgt) + 1 for e in examples))


def token_batches(lengths: list[int], batch_tokens: int, seed: int | None = None,
                  secondary: list[int] | None = None) -> list[list[int]]:
    """Group indices into batches with (longest length x sentences) <= batch_tokens.

    Sorted by length (then by `secondary`, the source length) so neighbours pad little; with a seed,
    remaining ties are broken at random and the batch order is shuffled (training); without, the
    order is deterministic (evaluation).
    """
    rng = random.Random(seed) if seed is not None else None
    jitter = [rng.random() for _ in lengths] if rng else [0.0] * len(lengths)
    secondary = secondary or [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], secondary[i], jitter[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # lengths ascend, so the newest length is the batch's longest
        if current and lengths[i] * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    if rng:
        rng.shuffle(batches)
    return batches


def pair_length(example: Example) -> int:
    return max(len(example.src), len(example.tgt) + 1)


def iterate_batches(examples: list[Example], batch_tokens: int, seed: int | None = None,
                    with_target: bool = True) -> list[Batch]:
    lengths = [pair_length(e) if with_target else len(e.src) for e in examples]
    return [collate([examples[i] for i in idx], idx, with_target)
            for idx in token_batches(lengths, batch_tokens, seed, [len(e.src) for e in examples])]
