"""Search on a hand-made model whose probabilities are known, so the right answer is known."""

import math

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
