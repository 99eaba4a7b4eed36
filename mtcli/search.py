"""Greedy and beam search, written once for every backend over encode / init_state / step / reorder.

Search does not know which backend it drives. Finished sentences are pruned from the batch with the
same `reorder` that beam search uses for its bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtcli.data.tokenizers import BOS, EOS
from mtcli.models.base import Backend


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without EOS
    log_prob: float  # sum of token log-probabilities, EOS included
    score: float  # log_prob / length penalty: what the search ranks by
    attention: torch.Tensor | None = None  # (T, K, S) per output position incl. EOS, when asked for


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + |Y|) / 6) ** alpha; alpha 0 ranks by plain log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def output_limits(src_mask: torch.Tensor, max_len: int, ratio: float) -> torch.Tensor:
    """Most output tokens (EOS included) per sentence: ratio x source length + 5, at most max_len."""
    src_len = src_mask.sum(1).float()
    return (src_len * ratio + 5).ceil().long().clamp(1, max_len).cpu()


def _force_eos(log_probs: torch.Tensor, at_limit: torch.Tensor, too_short: bool = False) -> torch.Tensor:
    """Rows at their length limit may only end: every token but EOS gets -inf. While the outputs are
    `too_short` (under the minimum length) the other rows may not end: EOS gets -inf."""
    if too_short:  # in place, on the EOS column only: the search owns the step's output
        log_probs[:, EOS].masked_fill_(~at_limit.to(log_probs.device), float("-inf"))
    if not at_limit.any():
        return log_probs
    forced = torch.full_like(log_probs, float("-inf"))
    forced[:, EOS] = log_probs[:, EOS]
    return torch.where(at_limit.to(log_probs.device).unsqueeze(1), forced, log_probs)


@torch.no_grad()
def greedy_search(model: Backend, src: torch.Tensor, src_mask: torch.Tensor, limits: torch.Tensor,
                  need_attention: bool = False, min_len: int = 0) -> list[Hypothesis]:
    """The most probable token at every step; `min_len`: no output shorter (unless its limit is lower)."""
    batch = src.size(0)
    state = model.init_state(model.encode(src, src_mask))
    active = torch.arange(batch)  # original row of each row still decoding
    prev = torch.full((batch,), BOS, dtype=torch.long, device=src.device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    log_prob = [0.0] * batch
    maps: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(prev, state, need_attention)  # (n, V)
        log_probs = _force_eos(log_probs, t + 1 >= limits[active], t < min_len)
        best, token = log_probs.max(dim=-1)
        for i, (row, tok, lp) in enumerate(zip(active.tolist(), token.tolist(), best.tolist())):
            tokens[row].append(tok)
            log_prob[row] += lp
            if attention is not None:
                maps[row].append(attention[i])
        going = token != EOS
        if not going.all():
            keep = going.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            state, active, token = model.reorder(state, keep), active[keep.cpu()], token[keep]
        prev = token
    return [Hypothesis(toks[:-1] if toks and toks[-1] == EOS else toks, lp, lp,
                       torch.stack(m) if m else None) for toks, lp, m in zip(tokens, log_prob, maps)]


def _kth_best(hyps: list[Hypothesis], k: int) -> float:
    """Score of the k-th best finished hypothesis; -inf while there are fewer than k."""
    if len(hyps) < k:
        return float("-inf")
    return sorted((h.score for h in hyps), reverse=True)[k - 1]


@torch.no_grad()
def beam_search(model: Backend, src: torch.Tensor, src_mask: torch.Tensor, limits: torch.Tensor,
                beam_size: int, alpha: float = 0.0, need_attention: bool = False, n_best: int = 1,
                min_len: int = 0) -> list[list[Hypothesis]]:
    """Batched beam search. A sentence stops once its `n_best` finished hypotheses score at least as
    well as its best live one could by ending now, or at its length limit."""
    batch, k, device = src.size(0), beam_size, src.device
    state = model.init_state(model.encode(src, src_mask))
    state = model.reorder(state, torch.arange(batch, device=device).repeat_interleave(k))  # (B*k, ...)
    sent = torch.arange(batch)  # original sentence of each group of k rows
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    tokens = torch.empty((batch * k, 0), dtype=torch.long, device=device)
    history: torch.Tensor | None = None  # (rows, t, K, S) attention so far
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    prev = torch.full((batch * k,), BOS, dtype=torch.long, device=device)
    for t in range(int(limits.max())):
        log_probs, state, attention = model.step(prev, state, need_attention)  # (n*k, V)
        n, vocab = scores.size(0), log_probs.size(-1)
        at_limit = t + 1 >= limits[sent]  # (n,)
        log_probs = _force_eos(log_probs, at_limit.repeat_interleave(k), t < min_len)
        if attention is not None:
            attention = attention.unsqueeze(1)
            history = attention if history is None else torch.cat([history, attention], dim=1)
        cand = (scores.unsqueeze(2) + log_probs.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top_index = cand.topk(2 * k, dim=1)  # (n, 2k): at most k of them end in EOS
        origin, token = top_index // vocab, top_index % vocab
        rows = torch.arange(n, device=device).unsqueeze(1) * k + origin  # (n, 2k) row each candidate extends
        is_eos = token == EOS
        ends = is_eos[:, :k] & torch.isfinite(top_scores[:, :k])  # EOS among the k best: a finished hypothesis
        for g, r in ends.nonzero().tolist():
            row, lp = int(rows[g, r]), float(top_scores[g, r])
            finished[int(sent[g])].append(Hypothesis(tokens[row].tolist(), lp, lp / length_penalty(t + 1, alpha),
                                                     None if history is None else history[row]))
        alive_scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # k best going on
        # the best live hypothesis, scored as if it ended at the next step, against the n-best finished
        bound = (alive_scores[:, 0] / length_penalty(t + 2, alpha)).tolist()
        keep = torch.tensor([b > _kth_best(finished[int(s)], n_best) for s, b in zip(sent, bound)], device=device)
        keep &= ~at_limit.to(device)
        if not keep.any():
            break
        chosen = rows.gather(1, pick)[keep].view(-1)  # (n'*k,) rows to continue, in the new order
        tokens = torch.cat([tokens[chosen], token.gather(1, pick)[keep].view(-1, 1)], dim=1)
        history = None if history is None else history[chosen]
        state = model.reorder(state, chosen, same_sentences=bool(keep.all()))  # no sentence left: memory stays
        scores, sent, prev = alive_scores[keep], sent[keep.cpu()], tokens[:, -1]
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]
