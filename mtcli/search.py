"""Search, written once for every backend (over encode / init_state / step / reorder) and every way of
choosing tokens: one loop; score processors (banned tokens, length limits, n-gram blocking) applied in one
place before selection; a strategy object (greedy, beam, sampling), chosen by name, that selects.

Search does not know which backend it drives. Finished rows leave the batch through the same `reorder`
that beam search uses for its bookkeeping.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mtcli.config import DecodeConfig
from mtcli.data.tokenizers import BOS, EOS, PAD
from mtcli.errors import MtcliError
from mtcli.models.base import Backend, State


class SearchError(MtcliError):
    """The model's scores are not numbers (a diverged checkpoint): nothing sensible can be chosen."""


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without EOS
    log_prob: float  # sum of token log-probabilities, EOS included
    score: float  # log_prob / length penalty: what the search ranks by
    attention: torch.Tensor | None = None  # (T, K, S) per output position incl. EOS, when asked for
    token_log_probs: list[float] = field(default_factory=list)  # per output token, EOS included


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + |Y|) / 6) ** alpha; alpha 0 ranks by plain log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def output_limit(src_len: int, max_len: int, ratio: float) -> int:
    """Most output tokens (EOS included) for a source of `src_len` tokens: ratio x length + 5, at most max_len."""
    return max(1, min(max_len, math.ceil(src_len * ratio + 5)))


def output_limits(src_mask: torch.Tensor, max_len: int, ratio: float) -> torch.Tensor:
    """output_limit of every sentence of a batch, (B,) on the CPU."""
    src_len = src_mask.sum(1).float()
    return (src_len * ratio + 5).ceil().long().clamp(1, max_len).cpu()


# ---------------------------------------------------------------- score processors


class Rows:
    """What the score processors see of the rows being decoded at output position `t`: `limits` holds the
    most output tokens of each group of `width` rows. The tensors are made only when a processor asks for
    them: between a model's large operations, every small one costs far more than its arithmetic."""

    def __init__(self, t: int, limits: list[int], width: int, tokens: Callable[[], torch.Tensor]):
        self.t, self._limits, self._width, self._tokens = t, limits, width, tokens
        self.any_at_limit = t + 1 >= min(limits)  # some row must end now

    @functools.cached_property
    def at_limit(self) -> torch.Tensor:
        """(rows,) bool, on the CPU: the row has reached its length limit and must end."""
        return torch.tensor([self.t + 1 >= limit for limit in self._limits]).repeat_interleave(self._width)

    @functools.cached_property
    def tokens(self) -> torch.Tensor:
        """(rows, t) the tokens chosen so far."""
        return self._tokens()


Processor = Callable[[torch.Tensor, Rows], torch.Tensor]  # (log_probs (rows, V), rows) -> log_probs


_SPECIALS: dict[torch.device, torch.Tensor] = {}


def ban_specials(log_probs: torch.Tensor, rows: Rows) -> torch.Tensor:
    """PAD and BOS are never an output."""
    device = log_probs.device
    if device not in _SPECIALS:
        _SPECIALS[device] = torch.tensor([PAD, BOS], device=device)
    return log_probs.index_fill_(1, _SPECIALS[device], float("-inf"))


def min_length(n: int) -> Processor:
    def ban_eos(log_probs: torch.Tensor, rows: Rows) -> torch.Tensor:
        """No EOS before `n` tokens, except on rows at their length limit."""
        if rows.t < n and rows.any_at_limit:
            log_probs[:, EOS].masked_fill_(~rows.at_limit.to(log_probs.device), float("-inf"))
        elif rows.t < n:
            log_probs[:, EOS] = float("-inf")
        return log_probs
    return ban_eos


def no_repeat_ngram(n: int) -> Processor:
    def block(log_probs: torch.Tensor, rows: Rows) -> torch.Tensor:
        """A token that would complete an n-gram the row already holds gets -inf."""
        tokens = rows.tokens
        if tokens.size(1) < n:
            return log_probs
        grams = tokens.unfold(1, n, 1)  # (rows, t - n + 1, n)
        prefix = tokens[:, tokens.size(1) - n + 1:].unsqueeze(1)  # (rows, 1, n - 1): the last n - 1 tokens
        row, position = (grams[:, :, :-1] == prefix).all(dim=-1).nonzero(as_tuple=True)
        log_probs[row, grams[row, position, -1]] = float("-inf")
        return log_probs
    return block


def end_at_limit(log_probs: torch.Tensor, rows: Rows) -> torch.Tensor:
    """Rows at their length limit may only end: every token but EOS gets -inf."""
    if not rows.any_at_limit:
        return log_probs
    forced = torch.full_like(log_probs, float("-inf"))
    forced[:, EOS] = log_probs[:, EOS]
    return torch.where(rows.at_limit.to(log_probs.device).unsqueeze(1), forced, log_probs)


def processors(decode: DecodeConfig) -> list[Processor]:
    """The processors a decode request asks for, in the order they apply (the length limit last)."""
    chosen = [ban_specials]
    if decode.no_repeat_ngram_size:
        chosen.append(no_repeat_ngram(decode.no_repeat_ngram_size))
    if decode.min_len:
        chosen.append(min_length(decode.min_len))
    return chosen + [end_at_limit]


def _not_a_number(t: int) -> SearchError:
    return SearchError(f"the model's scores are not numbers (NaN) at output position {t + 1}: the checkpoint "
                       "has diverged (a training run whose loss became NaN or exploded); use an earlier checkpoint")


# ---------------------------------------------------------------- strategies


class Strategy:
    """Chooses the next token of every row. A sentence has `width` rows (hypotheses or samples); rows that
    finish become Hypotheses and leave the batch."""

    width = 1

    def __init__(self, alpha: float, n_best: int):
        self.alpha, self.n_best = alpha, n_best

    def describe(self) -> str:
        """How it chooses, for titles and tables: 'greedy', 'beam 5'."""
        return type(self).__name__.lower()

    def start(self, model: Backend, state: State, src: torch.Tensor, limits: torch.Tensor) -> State:
        batch, self.device = src.size(0), src.device
        self.limits, self.done = limits.tolist(), False  # most output tokens of each sentence, EOS included
        self.prev = torch.full((batch * self.width,), BOS, dtype=torch.long, device=self.device)
        self.maps: torch.Tensor | None = None  # (rows, t, K, S) attention so far
        self.finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
        if self.width > 1:
            state = model.reorder(state, torch.arange(batch, device=self.device).repeat_interleave(self.width))
        return state

    def rows(self, t: int) -> Rows:
        raise NotImplementedError

    def advance(self, log_probs: torch.Tensor, attention: torch.Tensor | None, t: int
                ) -> tuple[torch.Tensor, bool] | None:
        """Choose from the processed `log_probs` (rows, V). Returns the rows of the state to keep, in their
        new order, and whether each stays within its sentence (None: the rows stay as they are)."""
        raise NotImplementedError

    def _attend(self, attention: torch.Tensor | None) -> None:
        """Add this step's attention (rows, K, S) of every row to the history."""
        if attention is not None:
            step = attention.unsqueeze(1)
            self.maps = step if self.maps is None else torch.cat([self.maps, step], dim=1)

    def _hypothesis(self, tokens: list[int], lps: list[float], row: int, log_prob: float | None = None
                    ) -> Hypothesis:
        """A finished row; `tokens` and `lps` (each token's log-probability) end with its last token."""
        log_prob = math.fsum(lps) if log_prob is None else log_prob
        return Hypothesis(tokens[:-1], log_prob, log_prob / length_penalty(len(tokens), self.alpha),
                          None if self.maps is None else self.maps[row], lps)

    def results(self) -> list[list[Hypothesis]]:
        """The n-best of every sentence, best first (one empty hypothesis scored -inf where nothing could end)."""
        return [sorted(hyps, key=lambda h: -h.score)[: self.n_best] or [Hypothesis([], -math.inf, -math.inf)]
                for hyps in self.finished]


class Paths(Strategy):
    """Every row its own path until it ends: greedy search takes the most probable token. The paths are kept
    as Python lists, which cost a step less than tensors (no sentence is reordered until a row ends)."""

    def start(self, model: Backend, state: State, src: torch.Tensor, limits: torch.Tensor) -> State:
        state = super().start(model, state, src, limits)
        self.sent = [s for s in range(src.size(0)) for _ in range(self.width)]  # original sentence of each row
        self.row_limits = [self.limits[s] for s in self.sent]
        self.tokens: list[list[int]] = [[] for _ in self.sent]
        self.lps: list[list[float]] = [[] for _ in self.sent]  # each chosen token's log-probability
        return state

    def describe(self) -> str:
        return "greedy"

    def rows(self, t: int) -> Rows:
        return Rows(t, self.row_limits, 1, lambda: torch.tensor(self.tokens, dtype=torch.long,
                                                                 device=self.device).view(len(self.tokens), t))

    def choose(self, log_probs: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability, token) per row."""
        return log_probs.max(dim=-1)

    def advance(self, log_probs: torch.Tensor, attention: torch.Tensor | None, t: int
                ) -> tuple[torch.Tensor, bool] | None:
        lp, token = self.choose(log_probs, t)
        self._attend(attention)
        ended = []
        for row, (tok, score) in enumerate(zip(token.tolist(), lp.tolist())):
            self.tokens[row].append(tok)
            self.lps[row].append(score)
            if tok == EOS or not score > -math.inf:  # ended, or nothing allowed (-inf), or not a number
                ended.append(row)
        if not ended:
            self.prev = token
            return None
        if any(math.isnan(self.lps[row][-1]) for row in ended):
            raise _not_a_number(t)
        for row in ended:
            self.finished[self.sent[row]].append(self._hypothesis(self.tokens[row], self.lps[row], row))
        gone = set(ended)
        keep = [row for row in range(len(self.sent)) if row not in gone]
        if not keep:
            self.done = True
            return None
        index = torch.tensor(keep, device=self.device)
        self._keep(keep, index)
        self.prev = token[index]
        return index, False

    def _keep(self, keep: list[int], index: torch.Tensor) -> None:
        self.sent, self.row_limits = [self.sent[r] for r in keep], [self.row_limits[r] for r in keep]
        self.tokens, self.lps = [self.tokens[r] for r in keep], [self.lps[r] for r in keep]
        self.maps = None if self.maps is None else self.maps[index]


class Sampling(Paths):
    """Each of `width` rows per sentence draws its tokens from the model's distribution, sharpened or
    flattened by `temperature` and cut to the `top_k` most probable tokens or the `top_p` nucleus.

    The draws of a row come from its own generator, seeded by (seed, source tokens, sample number): the
    same seed gives the same samples of a sentence whatever the batch it is decoded in."""

    def __init__(self, alpha: float, n: int, temperature: float, top_k: int, top_p: float, seed: int):
        super().__init__(alpha, n)
        self.width, self.temperature, self.top_k, self.top_p, self.seed = n, temperature, top_k, top_p, seed

    def start(self, model: Backend, state: State, src: torch.Tensor, limits: torch.Tensor) -> State:
        state = super().start(model, state, src, limits)
        steps = int(limits.max())
        sources = [row[row != PAD].tolist() for row in src.cpu()]
        draws = [torch.rand(steps, generator=torch.Generator().manual_seed(self._row_seed(sources[s], i)))
                 for s in range(src.size(0)) for i in range(self.width)]
        self.draws = (1.0 - torch.stack(draws)).to(src.device)  # (rows, steps) uniform in (0, 1]
        return state

    def describe(self) -> str:
        parts = [f"temperature {self.temperature:g}"] + [f"top-k {self.top_k}"] * bool(self.top_k) + \
                [f"top-p {self.top_p:g}"] * (self.top_p < 1)
        return f"sampling ({', '.join(parts)}, seed {self.seed})"

    def _row_seed(self, source: list[int], sample: int) -> int:
        key = f"{self.seed} {sample} {source}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1

    def choose(self, log_probs: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = log_probs / self.temperature if self.temperature != 1 else log_probs.clone()
        top = logits.amax(dim=-1)
        if top.isnan().any():
            raise _not_a_number(t)
        logits[:, EOS] = logits[:, EOS].masked_fill(top == float("-inf"), 0.0)  # nothing allowed: end
        if self.top_k and self.top_k < logits.size(-1):
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            ordered, order = logits.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs >= self.top_p  # the nucleus was complete before this token
            logits = logits.scatter(1, order, ordered.masked_fill(outside, float("-inf")))
        cumulative = logits.softmax(dim=-1, dtype=torch.float32).cumsum(dim=-1)  # (rows, V)
        draw = self.draws[:, t: t + 1] * cumulative[:, -1:]
        token = torch.searchsorted(cumulative, draw).squeeze(1).clamp_(max=logits.size(-1) - 1)
        return log_probs.gather(1, token.unsqueeze(1)).squeeze(1), token

    def _keep(self, keep: list[int], index: torch.Tensor) -> None:
        super()._keep(keep, index)
        self.draws = self.draws[index]


class Beam(Strategy):
    """Batched beam search: `width` hypotheses per sentence. A sentence stops once its `n_best` finished
    hypotheses score at least as well as its best live one could by ending now, or at its length limit."""

    def __init__(self, alpha: float, n_best: int, k: int):
        super().__init__(alpha, n_best)
        self.width = k

    def describe(self) -> str:
        return f"beam {self.width}"

    def start(self, model: Backend, state: State, src: torch.Tensor, limits: torch.Tensor) -> State:
        state = super().start(model, state, src, limits)
        self.sent = list(range(src.size(0)))  # the original sentence of each group of k rows
        self.sent_limits = list(self.limits)
        rows = src.size(0) * self.width
        self.tokens = torch.empty((rows, 0), dtype=torch.long, device=self.device)
        self.lps = torch.empty((rows, 0), device=self.device)  # each chosen token's log-probability
        self.scores = torch.full((src.size(0), self.width), float("-inf"), device=self.device)
        self.scores[:, 0] = 0.0  # all beams start identical: keep one
        return state

    def rows(self, t: int) -> Rows:
        return Rows(t, self.sent_limits, self.width, lambda: self.tokens)

    def _kth_best(self, sentence: int) -> float:
        """Score of the n_best-th best finished hypothesis; -inf while there are fewer."""
        hyps = self.finished[sentence]
        return -math.inf if len(hyps) < self.n_best else sorted((h.score for h in hyps), reverse=True)[self.n_best - 1]

    def advance(self, log_probs: torch.Tensor, attention: torch.Tensor | None, t: int
                ) -> tuple[torch.Tensor, bool] | None:
        n, k, vocab = self.scores.size(0), self.width, log_probs.size(-1)
        cand = (self.scores.unsqueeze(2) + log_probs.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top_index = cand.topk(2 * k, dim=1)  # (n, 2k): at most k of them end in EOS; NaN first
        token_lp = log_probs.view(n, k * vocab).gather(1, top_index)
        origin, token = top_index // vocab, top_index % vocab
        rows = torch.arange(n, device=self.device).unsqueeze(1) * k + origin  # (n, 2k) row each candidate extends
        is_eos = token == EOS
        alive_scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # k best going on
        best, alive = torch.stack([top_scores[:, 0], alive_scores[:, 0]]).tolist()
        if any(math.isnan(x) for x in best):
            raise _not_a_number(t)
        self._attend(attention)
        self._finish(is_eos[:, :k] & torch.isfinite(top_scores[:, :k]), rows, top_scores, token_lp)
        # the best live hypothesis, scored as if it ended at the next step, against the n-best finished
        keep = [a / length_penalty(t + 2, self.alpha) > self._kth_best(s) and t + 1 < limit
                for s, a, limit in zip(self.sent, alive, self.sent_limits)]
        if not any(keep):
            self.done = True
            return None
        kept = torch.tensor(keep, device=self.device)
        chosen = rows.gather(1, pick)[kept].view(-1)  # (n'*k,) rows to continue, in the new order
        self._extend(chosen, token.gather(1, pick)[kept].view(-1), token_lp.gather(1, pick)[kept].view(-1))
        self.maps = None if self.maps is None else self.maps[chosen]
        self.scores, self.prev = alive_scores[kept], self.tokens[:, -1]
        self.sent = [s for s, go in zip(self.sent, keep) if go]
        self.sent_limits = [limit for limit, go in zip(self.sent_limits, keep) if go]
        return chosen, all(keep)  # no sentence left: the sentence-level state stays

    def _extend(self, index: torch.Tensor, token: torch.Tensor, lp: torch.Tensor) -> None:
        """Row r of the new history is row index[r] of the old, extended by token[r]."""
        self.tokens = torch.cat([self.tokens[index], token.unsqueeze(1)], dim=1)
        self.lps = torch.cat([self.lps[index], lp.unsqueeze(1).float()], dim=1)

    def _finish(self, ends: torch.Tensor, rows: torch.Tensor, top_scores: torch.Tensor, token_lp: torch.Tensor
                ) -> None:
        """Candidates ending in EOS among the k best become finished hypotheses."""
        if not ends.any():
            return
        where = ends.nonzero(as_tuple=True)
        ended = rows[where]
        for g, row, tokens, lps, lp, last in zip(where[0].tolist(), ended.tolist(), self.tokens[ended].tolist(),
                                                 self.lps[ended].tolist(), top_scores[where].tolist(),
                                                 token_lp[where].tolist()):
            self.finished[self.sent[g]].append(self._hypothesis(tokens + [EOS], lps + [last], row, lp))


# decode.strategy names one of these (mtcli.config reads the names from here)
STRATEGIES: dict[str, Callable[[DecodeConfig], Strategy]] = {
    "greedy": lambda d: Paths(d.length_penalty, 1),
    "beam": lambda d: Beam(d.length_penalty, d.n_best, d.beam_size) if d.beam_size > 1 else Paths(d.length_penalty, 1),
    "sampling": lambda d: Sampling(d.length_penalty, d.n_best, d.temperature, d.top_k, d.top_p, d.seed),
}


def strategy(decode: DecodeConfig) -> Strategy:
    """The strategy a decode request names (beam search of width 1 is greedy search: the same choices)."""
    return STRATEGIES[decode.strategy](decode)


# ---------------------------------------------------------------- the loop


@torch.no_grad()
def search(model: Backend, src: torch.Tensor, src_mask: torch.Tensor, limits: torch.Tensor, chooser: Strategy,
           score_processors: Sequence[Processor] = (ban_specials, end_at_limit), need_attention: bool = False
           ) -> list[list[Hypothesis]]:
    """The finished hypotheses of every sentence, best first; `limits` (B,): most output tokens, EOS included."""
    state = chooser.start(model, model.init_state(model.encode(src, src_mask)), src, limits)
    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(chooser.prev, state, need_attention)  # (rows, V)
        rows = chooser.rows(t)
        for process in score_processors:  # the search owns the step's output: processors may write into it
            log_probs = process(log_probs, rows)
        kept = chooser.advance(log_probs, attention, t)
        if chooser.done:
            break
        if kept is not None:
            state = model.reorder(state, kept[0], same_sentences=kept[1])
    return chooser.results()


def greedy_search(model: Backend, src: torch.Tensor, src_mask: torch.Tensor, limits: torch.Tensor,
                  need_attention: bool = False, min_len: int = 0) -> list[Hypothesis]:
    """The most probable token at every step; `min_len`: no output shorter (unless its limit is lower)."""
    chosen = [ban_specials] + ([min_length(min_len)] if min_len else []) + [end_at_limit]
    return [h[0] for h in search(model, src, src_mask, limits, Paths(0.0, 1), chosen, need_attention)]


def beam_search(model: Backend, src: torch.Tensor, src_mask: torch.Tensor, limits: torch.Tensor,
                beam_size: int, alpha: float = 0.0, need_attention: bool = False, n_best: int = 1,
                min_len: int = 0) -> list[list[Hypothesis]]:
    """Beam search of `beam_size` hypotheses (no shortcut to greedy search for 1)."""
    chosen = [ban_specials] + ([min_length(min_len)] if min_len else []) + [end_at_limit]
    return search(model, src, src_mask, limits, Beam(alpha, n_best, beam_size), chosen, need_attention)


# ---------------------------------------------------------------- forced decoding


@torch.no_grad()
def forced_log_probs(model: Backend, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                     tgt_out: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probability of each token of `tgt_out` (y1 .. yn EOS, PAD-padded; 0 at PAD) when the
    model reads `tgt_in` (BOS y1 .. yn): the model's score of given translations, step by step."""
    state = model.init_state(model.encode(src, src_mask))
    out = []
    for t in range(tgt_in.size(1)):
        log_probs, state, _ = model.step(tgt_in[:, t], state)
        out.append(log_probs.float().gather(1, tgt_out[:, t: t + 1]))
    return torch.cat(out, dim=1).masked_fill(tgt_out == PAD, 0.0)
