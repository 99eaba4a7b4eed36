"""Properties every backend must have, parametrized over the three backends and their variants."""

import pytest
import torch

from mtcli.config import ModelConfig
from mtcli.data.tokenizers import BOS, EOS, PAD
from mtcli.models import build_model
from mtcli.search import beam_search, greedy_search, output_limits

VARIANTS = [
    dict(backend="seq2seq"),
    dict(backend="seq2seq", rnn_type="lstm", bidirectional=False, encoder_layers=2, decoder_layers=2),
    dict(backend="attention", attention="additive"),
    dict(backend="attention", attention="dot", rnn_type="lstm"),
    dict(backend="attention", attention="general", encoder_layers=2, decoder_layers=2, bidirectional=False),
    dict(backend="transformer"),
    dict(backend="transformer", tie_embeddings="all", encoder_layers=2, decoder_layers=2),
]
IDS = ["-".join(str(v) for v in variant.values()) for variant in VARIANTS]
SRC_V, TGT_V = 13, 13


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(embed_dim=16, hidden_dim=16, ff_dim=32, heads=2, encoder_layers=1,
                                decoder_layers=1, dropout=0.0), **kw})
    return build_model(cfg, SRC_V, TGT_V).eval()


def padded_batch():
    src = torch.tensor([[5, 6, 7, 8, 9, EOS], [6, 7, EOS, PAD, PAD, PAD], [9, 8, 7, 6, EOS, PAD]])
    tgt_in = torch.tensor([[BOS, 4, 5, 6, 7], [BOS, 7, 7, 8, 9], [BOS, 10, 11, 12, 4]])
    return src, src != PAD, tgt_in


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_forward_shapes(variant):
    model = tiny_model(**variant)
    src, mask, tgt_in = padded_batch()
    assert model(src, mask, tgt_in).shape == (3, 5, TGT_V)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_teacher_forced_forward_equals_stepping(variant):
    model = tiny_model(**variant)
    src, mask, tgt_in = padded_batch()
    full = torch.log_softmax(model(src, mask, tgt_in), dim=-1)
    state = model.init_state(model.encode(src, mask))
    for t in range(tgt_in.size(1)):
        log_probs, state, _ = model.step(tgt_in[:, t], state)
        torch.testing.assert_close(log_probs, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_beam_of_one_equals_greedy(variant):
    model = tiny_model(seed=1, **variant)
    src, mask, _ = padded_batch()
    limits = output_limits(mask, 30, 3.0)
    greedy = greedy_search(model, src, mask, limits)
    beam = beam_search(model, src, mask, limits, beam_size=1)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [round(h.log_prob, 4) for h in greedy] == [round(b[0].log_prob, 4) for b in beam]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_padding_does_not_change_a_translation(variant):
    model = tiny_model(seed=2, **variant)
    src, mask, _ = padded_batch()
    limits = output_limits(mask, 30, 3.0)
    together = beam_search(model, src, mask, limits, beam_size=3)
    for i in range(3):
        n = int(mask[i].sum())
        alone = beam_search(model, src[i: i + 1, :n], mask[i: i + 1, :n], limits[i: i + 1], beam_size=3)
        assert alone[0][0].tokens == together[i][0].tokens


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_attention_weights_are_distributions_over_real_source_tokens(variant):
    model = tiny_model(**variant)
    src, mask, _ = padded_batch()
    state = model.init_state(model.encode(src, mask))
    _, _, attention = model.step(torch.full((3,), BOS), state, need_attention=True)
    if not model.has_attention:
        assert attention is None
        return
    layers, heads = model.attention_shape()
    assert attention.shape == (3, layers * heads, src.size(1))
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, layers * heads))
    assert (attention[~mask.unsqueeze(1).expand_as(attention)] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_search_returns_attention_per_output_token(variant):
    model = tiny_model(**variant)
    src, mask, _ = padded_batch()
    limits = output_limits(mask, 30, 3.0)
    for hyp in [h[0] for h in beam_search(model, src, mask, limits, 3, need_attention=True)] + \
            greedy_search(model, src, mask, limits, need_attention=True):
        if model.has_attention:
            assert hyp.attention.shape[0] == len(hyp.tokens) + 1  # every output token and EOS
        else:
            assert hyp.attention is None


def reverse_task(n, generator):
    lengths = torch.randint(2, 7, (n,), generator=generator)
    src = torch.full((n, 7), PAD)
    tgt_in = torch.full((n, 7), PAD)
    tgt_out = torch.full((n, 7), PAD)
    for i, length in enumerate(lengths.tolist()):
        seq = torch.randint(4, SRC_V, (length,), generator=generator)
        src[i, :length], src[i, length] = seq, EOS
        tgt_in[i, 0], tgt_in[i, 1: length + 1] = BOS, seq.flip(0)
        tgt_out[i, :length], tgt_out[i, length] = seq.flip(0), EOS
    return src, src != PAD, tgt_in, tgt_out


# the fixed-vector seq2seq must squeeze the whole sequence into one state: it gets more steps and a lower bar
@pytest.mark.parametrize("backend, steps, least", [("seq2seq", 400, 0.8), ("attention", 250, 0.9),
                                                   ("transformer", 250, 0.9)])
def test_each_backend_learns_to_reverse_sequences(backend, steps, least):
    torch.manual_seed(0)
    model = tiny_model(backend=backend, embed_dim=32, hidden_dim=64, ff_dim=64, heads=2).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        src, mask, tgt_in, tgt_out = reverse_task(64, generator)
        loss = torch.nn.functional.cross_entropy(model(src, mask, tgt_in).flatten(0, 1), tgt_out.flatten(),
                                                 ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    src, mask, _, tgt_out = reverse_task(100, torch.Generator().manual_seed(99))
    hyps = greedy_search(model, src, mask, output_limits(mask, 20, 2.0))
    wanted = [[t for t in row if t not in (PAD, EOS)] for row in tgt_out.tolist()]
    accuracy = sum(h.tokens == w for h, w in zip(hyps, wanted)) / len(wanted)
    assert accuracy >= least, accuracy  # whole sequences right; chance is about 0


def test_the_transformer_feed_forward_keeps_the_checkpoint_names_ff_0_and_ff_3():
    model = tiny_model(backend="transformer")
    keys = [k for k in model.state_dict() if ".ff." in k]
    assert keys == [f"{side}_layers.0.ff.{i}.{p}" for side in ("encoder", "decoder") for i in (0, 3)
                    for p in ("weight", "bias")]
    ff = model.encoder_layers[0].ff
    assert ff.inner.weight is model.state_dict(keep_vars=True)["encoder_layers.0.ff.0.weight"]
    assert ff.outer.weight is model.state_dict(keep_vars=True)["encoder_layers.0.ff.3.weight"]
