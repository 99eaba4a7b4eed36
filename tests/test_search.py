"""Search on a hand-made model whose probabilities are known, so the right answer is known."""

import dataclasses
import math

import pytest
import torch

from mtcli.data.tokenizers import BOS, EOS
from mtcli.models.base import Backend
from mtcli.search import beam_search, greedy_search, length_penalty, output_limits

A, B, C = 4, 5, 6


class TableModel(Backend):
    """Next-token probabilities depend only on the previous token (a bigram table)."""

    has_attention = False

    def __init__(self, table: dict[int, dict[int, float]], vocab: int = 8):
        super().__init__()
        self.vocab = vocab
        self.table = table
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, src, src_mask):
        return {"rows": torch.zeros(src.size(0))}

    def init_state(self, memory):
        return dict(memory)

    def step(self, prev, state, need_attention=False):
        out = torch.full((prev.size(0), self.vocab), -1e9)
        for i, p in enumerate(prev.tolist()):
            for tok, prob in self.table.get(p, {EOS: 1.0}).items():
                out[i, tok] = math.log(prob)
        return out, state, None


# greedy takes A (0.6) and then must pick among poor continuations; B (0.4) leads to a sure end.
TRAP = {BOS: {A: 0.6, B: 0.4}, A: {C: 0.35, B: 0.33, EOS: 0.32}, B: {EOS: 1.0}, C: {EOS: 1.0}}


def run(model, search, batch=1, **kw):
    src = torch.full((batch, 3), 7)
    mask = torch.ones_like(src, dtype=torch.bool)
    return search(model, src, mask, output_limits(mask, 10, 3.0), **kw)


def test_greedy_falls_into_the_trap_and_beam_search_does_not():
    model = TableModel(TRAP)
    greedy = run(model, greedy_search)[0]
    assert greedy.tokens == [A, C] and math.isclose(greedy.log_prob, math.log(0.6 * 0.35), rel_tol=1e-5)
    best = run(model, beam_search, beam_size=2)[0][0]
    assert best.tokens == [B] and math.isclose(best.log_prob, math.log(0.4), rel_tol=1e-5)


def test_n_best_is_sorted_and_complete():
    hyps = run(TableModel(TRAP), beam_search, beam_size=3, n_best=3)[0]
    # finished in order: B (p 0.4) at step 2; A C (0.21) and A B (0.198) at step 3; A EOS (0.192) ranked
    # below the beam when it appeared, so it is never finished
    assert [h.tokens for h in hyps] == [[B], [A, C], [A, B]]
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)


def test_length_penalty_favours_longer_outputs():
    table = {BOS: {EOS: 0.55, A: 0.45}, A: {EOS: 1.0}}
    assert run(TableModel(table), beam_search, beam_size=2, alpha=0.0)[0][0].tokens == []
    # log 0.45 / ((5 + 2) / 6) ** 2 = -0.587 beats log 0.55 / 1 = -0.598
    assert run(TableModel(table), beam_search, beam_size=2, alpha=2.0)[0][0].tokens == [A]
    assert length_penalty(1, 0.0) == 1.0 and length_penalty(7, 1.0) == 2.0


def test_outputs_stop_at_the_length_limit_with_eos():
    loop = {BOS: {A: 1.0}, A: {A: 1.0}}
    src = torch.full((2, 4), 7)
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[1, 2:] = False
    limits = output_limits(mask, max_len=100, ratio=1.0)
    assert limits.tolist() == [9, 7]
    for hyps in (greedy_search(TableModel(loop), src, mask, limits),
                 [h[0] for h in beam_search(TableModel(loop), src, mask, limits, beam_size=2)]):
        assert [len(h.tokens) for h in hyps] == [8, 6]  # plus the forced EOS
    assert output_limits(mask, max_len=5, ratio=1.0).tolist() == [5, 5]


def test_every_sentence_of_a_batch_gets_the_best_answer():
    model = TableModel(TRAP)
    together = run(model, beam_search, batch=4, beam_size=2)
    assert all(h[0].tokens == [B] for h in together)


def test_min_len_bans_eos_until_the_output_is_long_enough_but_not_past_the_limit():
    eager = {BOS: {EOS: 0.9, A: 0.1}, A: {EOS: 0.9, A: 0.1}}
    assert run(TableModel(eager), greedy_search)[0].tokens == []
    assert run(TableModel(eager), greedy_search, min_len=4)[0].tokens == [A] * 4
    assert run(TableModel(eager), beam_search, beam_size=3, min_len=4)[0][0].tokens == [A] * 4
    src = torch.full((1, 2), 7)
    mask = torch.ones_like(src, dtype=torch.bool)
    limits = output_limits(mask, max_len=3, ratio=10.0)  # at most 2 tokens and EOS
    assert greedy_search(TableModel(eager), src, mask, limits, min_len=30)[0].tokens == [A] * 2
    assert beam_search(TableModel(eager), src, mask, limits, beam_size=2, min_len=30)[0][0].tokens == [A] * 2


# ---------------------------------------------------------------- strategies and score processors


def decode(**kw):
    from mtcli.config import DecodeConfig

    return DecodeConfig(**{"length_penalty": 0.0, **kw})


def run_strategy(model, request, batch=1, src_len=3):
    from mtcli.search import processors, search, strategy

    src = torch.full((batch, src_len), 7)
    mask = torch.ones_like(src, dtype=torch.bool)
    return search(model, src, mask, output_limits(mask, 10, 3.0), strategy(request), processors(request))


def test_pad_and_bos_are_never_chosen_whatever_their_probability():
    from mtcli.data.tokenizers import PAD

    table = {BOS: {PAD: 0.5, BOS: 0.3, A: 0.2}, A: {EOS: 1.0}}
    for request in (decode(strategy="greedy"), decode(beam_size=3), decode(strategy="sampling", n_best=5)):
        for hyp in run_strategy(TableModel(table), request)[0]:  # (every sample: the rest has probability 0)
            assert hyp.tokens == [A] and math.isclose(hyp.log_prob, math.log(0.2), rel_tol=1e-5)


def test_sampling_draws_only_from_the_top_k_or_the_nucleus():
    table = {BOS: {A: 0.5, B: 0.3, C: 0.2}, A: {EOS: 1.0}, B: {EOS: 1.0}, C: {EOS: 1.0}}
    counts = {}
    for name, kw in {"all": {}, "top-k 2": {"top_k": 2}, "top-p 0.6": {"top_p": 0.6}, "top-p 0.5": {"top_p": 0.5},
                     "cold": {"temperature": 0.05}}.items():
        hyps = run_strategy(TableModel(table), decode(strategy="sampling", n_best=200, **kw))[0]
        counts[name] = {h.tokens[0]: sum(g.tokens[0] == h.tokens[0] for g in hyps) for h in hyps}
    assert set(counts["all"]) == {A, B, C} and 75 < counts["all"][A] < 125  # 200 draws at p 0.5
    assert set(counts["top-k 2"]) == {A, B} and set(counts["top-p 0.6"]) == {A, B}
    assert set(counts["top-p 0.5"]) == {A} and set(counts["cold"]) == {A}  # (0.3/0.5) ** 20: never in 200


def test_samples_depend_on_the_seed_and_the_sentence_not_on_the_batch():
    table = {BOS: {A: 0.4, B: 0.3, C: 0.3}, A: {A: 0.5, EOS: 0.5}, B: {B: 0.5, EOS: 0.5}, C: {C: 0.5, EOS: 0.5}}
    first = run_strategy(TableModel(table), decode(strategy="sampling", n_best=6, seed=1))[0]
    again = run_strategy(TableModel(table), decode(strategy="sampling", n_best=6, seed=1), batch=3)
    other = run_strategy(TableModel(table), decode(strategy="sampling", n_best=6, seed=2))[0]
    assert all([h.tokens for h in hyps] == [h.tokens for h in first] for hyps in again)
    assert [h.tokens for h in other] != [h.tokens for h in first]
    scores = [h.score for h in first]
    assert scores == sorted(scores, reverse=True)


def test_no_repeat_ngram_blocks_every_repeat_and_nothing_else():
    step = {A: 0.5, B: 0.3, C: 0.2}
    loop = {BOS: step, A: step, B: step, C: step}  # never ends before the limit
    for request in (decode(strategy="greedy"), decode(beam_size=3), decode(strategy="sampling", n_best=3)):
        blocked = run_strategy(TableModel(loop), dataclasses.replace(request, no_repeat_ngram_size=3))[0][0].tokens
        assert len(blocked) == 9  # the limit: 10 tokens, EOS included
        trigrams = [tuple(blocked[i: i + 3]) for i in range(len(blocked) - 2)]
        assert len(set(trigrams)) == len(trigrams)
    assert run_strategy(TableModel(loop), decode(strategy="greedy"))[0][0].tokens == [A] * 9
    # greedy with blocking: A A A, then A is banned after A A (B), ... after A A both A and B are banned (C)
    blocked = run_strategy(TableModel(loop), decode(strategy="greedy", no_repeat_ngram_size=3))[0][0].tokens
    assert blocked == [A, A, A, B, A, A, C, A, A]
    unigrams = run_strategy(TableModel(loop), decode(strategy="greedy", no_repeat_ngram_size=1))[0][0].tokens
    assert unigrams[:3] == [A, B, C] and len(set(unigrams)) == len(unigrams)  # then what the table gives ~0


def test_non_finite_scores_are_one_clear_error_for_every_strategy():
    from mtcli.search import SearchError

    class NaNModel(TableModel):
        def step(self, prev, state, need_attention=False):
            out, state, _ = super().step(prev, state)
            out[0, A] = float("nan")  # one sentence, one token: enough to stop the search
            return out, state, None

    for request in (decode(strategy="greedy"), decode(beam_size=3), decode(strategy="sampling", n_best=2)):
        with pytest.raises(SearchError, match=r"not numbers \(NaN\) at output position 1"):
            run_strategy(NaNModel(TRAP), request, batch=2)


def test_forced_scores_are_the_table_probabilities():
    from mtcli.search import forced_log_probs

    src = torch.full((1, 3), 7)
    scores = forced_log_probs(TableModel(TRAP), src, torch.ones_like(src, dtype=torch.bool),
                              torch.tensor([[BOS, A, C]]), torch.tensor([[A, C, EOS]]))
    torch.testing.assert_close(scores, torch.tensor([[math.log(0.6), math.log(0.35), 0.0]]))
