"""Token ids -> padded batches: bucketed by length and capped by token count so padding stays small.

The rule: pairs sorted by (pair length, source length), ties in a seeded random order; cut greedily into
batches whose (longest length x sentences) stays within the token budget; the batches shuffled. Plans
are numpy arrays built from the length arrays alone, a pure function of (seed, epoch). Knows nothing of
models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
    n_tgt_tokens: int  # real target tokens incl. EOS

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.src), move(self.src_mask), move(self.tgt_in), move(self.tgt_out), self.n_tgt_tokens)


def make_example(src_ids: list[int], tgt_ids: list[int]) -> Example:
    return Example(list(src_ids) + [EOS], list(tgt_ids))


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(examples: list[Example], with_target: bool = True) -> Batch:
    src = _pad([e.src for e in examples])
    if not with_target:
        return Batch(src, src != PAD, None, None, 0)
    tgt_in = _pad([[BOS] + e.tgt for e in examples])
    tgt_out = _pad([e.tgt + [EOS] for e in examples])
    return Batch(src, src != PAD, tgt_in, tgt_out, sum(len(e.tgt) + 1 for e in examples))


def padded(tokens: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, before: int | None = None,
           after: int | None = None) -> np.ndarray:
    """Rows tokens[offsets[i]: offsets[i] + lengths[i]], optionally between `before` and `after`, PAD-padded:
    (B, longest + specials) int64, gathered in one vectorized step."""
    first = int(before is not None)
    width = int(lengths.max(initial=0)) + first + int(after is not None)
    column = np.arange(width) - first  # position in the stored ids
    inside = (column >= 0) & (column < lengths[:, None].astype(np.int64))
    where = np.where(inside, offsets[:, None] + column, 0)
    out = np.where(inside, tokens[where] if len(tokens) else 0, PAD).astype(np.int64)
    if before is not None:
        out[:, 0] = before
    if after is not None:
        out[np.arange(len(lengths)), lengths.astype(np.int64) + first] = after
    return out


# ---------------------------------------------------------------- plans


@dataclass
class LengthRuns:
    """One corpus seen by the planner: its pairs sorted by (pair length, source length) and the runs of
    equal keys in that order (as `mtcli.data.prepared.sorted_runs` makes them), ids offset by `base`."""

    order: np.ndarray  # (n,) pair indices
    groups: np.ndarray  # (G, 3): pair length, source length, start in `order`
    base: int = 0
    weight: float = 1.0

    def __len__(self) -> int:
        return len(self.order)

    def run(self, g: int) -> np.ndarray:
        end = self.groups[g + 1, 2] if g + 1 < len(self.groups) else len(self.order)
        return self.order[self.groups[g, 2]: end]


@dataclass
class EpochPlan:
    """The batches of one epoch: batch k holds the ids order[starts[b]: starts[b + 1]], b = batch_order[k]."""

    order: np.ndarray  # (N,) uint32 pair ids, sorted by length
    starts: np.ndarray  # (nb + 1,) int64
    batch_order: np.ndarray  # (nb,) int64

    def __len__(self) -> int:
        return len(self.batch_order)

    def batch(self, k: int) -> np.ndarray:
        b = self.batch_order[k]
        return self.order[self.starts[b]: self.starts[b + 1]]


def cut(pair_lengths: Sequence[int], counts: Sequence[int], batch_tokens: int) -> np.ndarray:
    """Batch boundaries for runs of counts[r] pairs of length pair_lengths[r] (ascending): the greedy rule
    'a pair closes the batch when (its length x (sentences + 1)) > batch_tokens', one run at a time."""
    starts, position, current = [0], 0, 0
    for length, count in zip(pair_lengths, counts):
        room = max(batch_tokens // length, 1)
        while count:
            if current >= room:
                starts.append(position)
                current = 0
            take = min(room - current, count)
            current, position, count = current + take, position + take, count - take
    if current:
        starts.append(position)
    return np.asarray(starts, dtype=np.int64)


def _picks(corpus: LengthRuns, rng: np.random.Generator | None) -> np.ndarray | None:
    """For the fraction of a weight: a seeded sample of positions in the corpus's sorted order."""
    extra = round((corpus.weight % 1) * len(corpus))
    if not extra:
        return None
    if rng is None:
        raise ValueError("a fractional corpus weight needs a seed")
    return np.sort(rng.choice(len(corpus), extra, replace=False))


def _fill(out: np.ndarray, corpus: LengthRuns, g: int, picked: np.ndarray | None) -> int:
    """Write run g of `corpus` for this epoch into `out` (its ids weight times over); returns the count."""
    run, n = corpus.run(g), 0
    for _ in range(int(corpus.weight)):
        out[n: n + len(run)] = run
        n += len(run)
    if picked is not None:
        lo, hi = np.searchsorted(picked, [corpus.groups[g, 2], corpus.groups[g, 2] + len(run)])
        out[n: n + hi - lo] = corpus.order[picked[lo:hi]]
        n += hi - lo
    out[:n] += np.uint32(corpus.base)
    return n


def plan_epoch(corpora: list[LengthRuns], batch_tokens: int, seed: int | None, epoch: int = 1) -> EpochPlan:
    """Every pair of every corpus weight times over, sorted by length with ties in random order, cut into
    batches, the batches shuffled; with seed None nothing is random (evaluation order)."""
    rng = np.random.default_rng([seed, epoch]) if seed is not None else None
    picked = [_picks(corpus, rng) for corpus in corpora]
    total = sum(int(c.weight) * len(c) + (0 if p is None else len(p)) for c, p in zip(corpora, picked))
    order = np.empty(total, np.uint32)
    keys = sorted((int(k[0]), int(k[1]), c, g) for c, corpus in enumerate(corpora) for g, k in enumerate(corpus.groups))
    lengths, counts, position, previous = [], [], 0, None
    for length, src, c, g in keys:
        n = _fill(order[position:], corpora[c], g, picked[c])
        if (length, src) == previous:  # the same key in another corpus: one stretch of ties
            counts[-1] += n
        else:
            lengths.append(length)
            counts.append(n)
            previous = (length, src)
        position += n
    if rng is not None:  # ties (equal pair and source length) in random order
        for end, count in zip(np.cumsum(counts), counts):
            rng.shuffle(order[end - count: end])
    starts = cut(lengths, counts, batch_tokens)
    batch_order = rng.permutation(len(starts) - 1) if rng is not None else np.arange(len(starts) - 1)
    return EpochPlan(order, starts, batch_order)


def runs_of(pair_lengths: np.ndarray, src_lengths: np.ndarray) -> LengthRuns:
    from mtcli.data.prepared import sorted_runs

    return LengthRuns(*sorted_runs(np.asarray(pair_lengths), np.asarray(src_lengths)))


def token_batches(lengths: Sequence[int], batch_tokens: int, seed: int | None = None,
                  secondary: Sequence[int] | None = None) -> list[np.ndarray]:
    """Group indices into batches with (longest length x sentences) <= batch_tokens (see plan_epoch):
    sorted by length (then by `secondary`, the source length); with a seed, ties in random order and the
    batches shuffled (training), without one a fixed order (evaluation)."""
    secondary = np.zeros(len(lengths), np.int64) if secondary is None else secondary
    plan = plan_epoch([runs_of(np.asarray(lengths), np.asarray(secondary))], batch_tokens, seed)
    return [plan.batch(k).astype(np.int64) for k in range(len(plan))]


def pair_length(example: Example) -> int:
    return max(len(example.src), len(example.tgt) + 1)


def iterate_batches(examples: list[Example], batch_tokens: int, seed: int | None = None) -> list[Batch]:
    lengths = [pair_length(e) for e in examples]
    return [collate([examples[i] for i in idx])
            for idx in token_batches(lengths, batch_tokens, seed, [len(e.src) for e in examples])]
