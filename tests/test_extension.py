"""An extension is one class and one dict entry: a fourth backend, a new metric, a new attention score and a new
decoding strategy, defined in this file only (the package is not changed), train, decode, visualize, show in
compare and evaluate, and are checked."""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar

import pytest
import torch
import yaml
from torch import nn

from mtcli.config import BackendOptions, Choice, ModelConfig, load_config
from mtcli.errors import ConfigError
from mtcli.metrics import METRICS, Metric, Score
from mtcli.models import BACKENDS
from mtcli.models.attention import SCORES, attend
from mtcli.models.base import Backend, OutputLayer, State, make_embeddings
from mtcli.models.rnn import CellStack
from mtcli.models.transformer import sinusoidal_positions
from mtcli.search import STRATEGIES, Paths
from tests.conftest import tiny_dict, train_tiny_runs
from tests.test_cli import invoke, one_line_error

# ---------------------------------------------------------------- the fourth backend: one class, one entry


@dataclass(frozen=True)
class BagOptions(BackendOptions):
    hidden_dim: int = 32  # the decoder's GRU state
    attention: Annotated[str, Choice(SCORES)] = "general"
    positive: ClassVar = ("hidden_dim",)

    def check(self, model: ModelConfig, fail: Callable[[str, str], typing.NoReturn]) -> None:
        super().check(model, fail)
        if model.tie_embeddings != "none" and model.embed_dim != self.hidden_dim:
            fail("model.tie_embeddings", "the bag backend ties only with model.embed_dim == model.hidden_dim")


class BagOfEmbeddings(Backend):
    """Encoder: the source embeddings plus sinusoidal positions, nothing more. Decoder: a GRU that attends
    over them, fed its previous context."""

    Options = BagOptions
    sentence_keys = ("memory", "keys", "src_mask")

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.src_embed, self.tgt_embed, tied = make_embeddings(src_vocab, tgt_vocab, cfg.embed_dim, cfg.tie_embeddings)
        self.rnn = CellStack("gru", 2 * cfg.embed_dim, cfg.hidden_dim, cfg.decoder_layers, cfg.dropout)
        self.score = SCORES[cfg.attention](cfg.hidden_dim, cfg.embed_dim)
        self.combine = nn.Linear(cfg.hidden_dim + cfg.embed_dim, cfg.hidden_dim)
        self.output = OutputLayer(cfg.hidden_dim, tgt_vocab, tied)
        self.layers, self.hidden_dim = cfg.decoder_layers, cfg.hidden_dim

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        x = self.src_embed(src)  # (B, S, E)
        memory = x + sinusoidal_positions(src.size(1), x.size(-1)).to(x.device, x.dtype)
        return {"memory": memory, "keys": self.score.project_keys(memory), "src_mask": src_mask}

    def init_state(self, memory: State) -> State:
        batch = memory["memory"].size(0)
        return {**memory, "hidden": memory["memory"].new_zeros(batch, self.layers, self.hidden_dim),
                "context": memory["memory"].new_zeros(batch, memory["memory"].size(-1))}

    def _step(self, prev: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        query, rnn_state = self.rnn(torch.cat([self.tgt_embed(prev), state["context"]], dim=-1), state)
        context, weights = attend(self.score(query, state["keys"]), state["src_mask"], state["memory"])
        out = torch.tanh(self.combine(torch.cat([query, context], dim=-1)))  # (B, H)
        return out, weights, {**state, **rnn_state, "context": context}

    def features(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        state, outs = self.init_state(self.encode(src, src_mask)), []
        for t in range(tgt_in.size(1)):
            out, _, state = self._step(tgt_in[:, t], state)
            outs.append(out)
        return torch.stack(outs, dim=1)  # (B, T, H)

    def step(self, prev: torch.Tensor, state: State, need_attention: bool = False
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        out, weights, state = self._step(prev, state)
        log_probs = torch.log_softmax(self.output(out), dim=-1, dtype=torch.float32)
        return log_probs, state, weights.unsqueeze(1) if need_attention else None


# ---------------------------------------------------------------- a new metric: one function, one entry


def copied_words(sources: list[str], hypotheses: list[str], references: list[str]) -> Score:
    """% of output words that are also words of their source sentence (a metric that needs the sources)."""
    pairs = [(word, set(src.split())) for src, hyp in zip(sources, hypotheses) for word in hyp.split()]
    value = 100.0 * sum(word in src for word, src in pairs) / max(len(pairs), 1)
    return Score("copied", round(value, 2), "copied|words", f"copied = {value:.2f}")


@pytest.fixture(scope="module", autouse=True)
def extensions():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKENDS, "bag", BagOfEmbeddings)
        mp.setitem(METRICS, "copied", Metric("Copied", copied_words, higher_is_better=False))
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, extensions):
    """A tiny toy run of the bag backend (best.pt chosen by the new metric) and one of the built-in attention
    backend, side by side."""
    root = tmp_path_factory.mktemp("extension")
    bag = tiny_dict("bag", root / "bag", model={"attention": "general"},
                    train={"max_steps": 40, "best_metric": "copied"})
    train_tiny_runs(root, {"attention": tiny_dict("attention", root / "attention"), "bag": bag})
    return root


def test_the_new_backend_has_its_own_keys_and_checks_and_no_rnn_checks(write_yaml):
    path = write_yaml({"model": {"backend": "bag", "embed_dim": 16, "hidden_dim": 33, "heads": 4}})
    cfg = load_config(path)  # an odd hidden_dim is fine: the bag backend has no bidirectional RNN
    assert cfg.model.options == BagOptions(hidden_dim=33) and cfg.model.hidden_dim == 33
    assert not hasattr(cfg.model, "heads")  # a key of another backend is accepted and left out
    with pytest.raises(ConfigError, match="model.hidden_dim: must be even with a bidirectional encoder"):
        load_config(path, ["model.backend=attention"])
    for override, message in [
        ("model.hiden_dim=8", "--set: model.hiden_dim: unknown key (did you mean 'hidden_dim'?)"),
        ("model.attention=cosine", "--set: model.attention: 'cosine' is not one of dot, general, additive"),
        ("model.hidden_dim=0", "--set: model.hidden_dim: must be positive, got 0"),
        ("model.backend=bog", "--set: model.backend: 'bog' is not one of seq2seq, attention, transformer, bag"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_config(path, [override])
        assert str(error.value) == message
    with pytest.raises(ConfigError, match="model.tie_embeddings: the bag backend ties only with"):
        load_config(path, ["model.tie_embeddings=decoder"])


def test_it_trains_and_its_run_keeps_only_its_own_keys(runs):
    records = [json.loads(line) for line in (runs / "bag" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "step"]
    assert len(losses) == 4 and losses[-1] < losses[0]  # steps 10, 20, 30, 40
    validations = [r for r in records if r["event"] == "validation"]  # chose best.pt by the new metric, lowest best
    assert len(validations) >= 2 and all(r["metric"] == "copied" for r in validations)
    assert [r["is_best"] for r in validations] == [i == 0 or r["value"] < min(v["value"] for v in validations[:i])
                                                   for i, r in enumerate(validations)]
    stored = yaml.safe_load((runs / "bag" / "config.yaml").read_text())["model"]
    assert stored == {"backend": "bag", "embed_dim": 32, "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0,
                      "tie_embeddings": "none", "hidden_dim": 32, "attention": "general"}


def test_it_decodes_and_evaluate_scores_it_with_the_new_metric(runs, tmp_path):
    sources = ["the dog sees a cat", "two small birds sleep near the river"]
    (tmp_path / "src.txt").write_text("\n".join(sources) + "\n")
    (tmp_path / "ref.txt").write_text("a b c\nd e f\n")
    out = invoke("translate", "-c", runs / "bag", "-i", tmp_path / "src.txt", "--beam", "1")
    assert out.exit_code == 0, out.output
    hypotheses = out.stdout.splitlines()
    result = invoke("evaluate", runs / "bag", "--src", tmp_path / "src.txt", "--ref", tmp_path / "ref.txt",
                    "--beam", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(hypotheses) == 2 and data["search"] == "greedy"
    assert data["copied"] == copied_words(sources, hypotheses, []).as_dict()
    assert set(data) >= {"bleu", "chrf", "chrf++", "ter", "copied"}
    assert "|nw:2|" in data["chrf++"]["signature"]


def test_a_new_metric_chooses_checkpoints(write_yaml):
    cfg = load_config(write_yaml(tiny_dict("bag")), ["train.best_metric=copied"])
    assert cfg.train.best_metric == "copied"
    with pytest.raises(ConfigError) as error:
        load_config(write_yaml(tiny_dict("bag")), ["train.best_metric=blue"])
    assert str(error.value) == "--set: train.best_metric: 'blue' is not one of bleu, chrf, chrf++, ter, copied, loss"


def test_it_visualizes_its_attention(runs, tmp_path):
    from mtcli.checkpoint import load_checkpoint
    from mtcli.visualize import attention_views

    sentence = "the dog sees a cat"
    result = invoke("visualize", runs / "bag", "-s", sentence, "--beam", "1", "-o", tmp_path / "bag.png")
    assert result.exit_code == 0, result.output
    assert "tiny-bag: bag attention, greedy" in result.output and (tmp_path / "bag.png").stat().st_size > 5000
    view = attention_views(load_checkpoint(runs / "bag" / "best.pt"), [sentence])[0]
    assert view.weights.shape == (len(view.tgt_tokens), len(view.src_tokens)) == (len(view.tgt_tokens), 6)
    assert torch.allclose(view.weights.sum(dim=1), torch.ones(len(view.tgt_tokens)))  # a softmax over the source


def test_it_appears_in_compare_beside_a_built_in_backend(runs):
    result = invoke("compare", runs / "attention", runs / "bag", "--samples", "50", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    attention, bag = data["runs"]
    assert (attention["backend"], bag["backend"]) == ("attention (additive)", "bag")
    assert bag["alignment"]["kind"] == "bag attention" and bag["alignment"]["map"] == "attention"
    evaluated = json.loads(invoke("evaluate", runs / "bag", "--json").stdout)
    for metric in ("bleu", "chrf++", "copied"):  # one test set, one decode section: the same scores
        assert bag[metric]["score"] == evaluated[metric]["score"], metric
    assert bag["copied"]["ci95"] is None and bag["chrf++"]["ci95"] is not None  # sacrebleu resamples its own
    table = invoke("compare", runs / "attention", runs / "bag", "--samples", "50")
    assert table.exit_code == 0 and "chrF2++" in table.output and "Copied" in table.output


def test_a_new_backend_keeps_its_one_line_errors(runs, tmp_path):
    one_line_error(invoke("visualize", runs / "bag", "--grid", "cross", "-o", tmp_path / "g.png"),
                   "the bag backend has one attention map")


# ---------------------------------------------------------------- a new attention score: one class, one entry


class ScaledDotScore(nn.Module):
    """q . k / sqrt(d) (Vaswani et al.'s scaling, for one head)."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.scale = query_dim ** -0.5

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return keys * self.scale

    def forward(self, query: torch.Tensor, proj_keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(proj_keys, query.unsqueeze(2)).squeeze(2)  # (B, S)


def test_a_new_attention_score_is_a_choice_of_the_attention_backends(write_yaml, monkeypatch):
    monkeypatch.setitem(SCORES, "scaled", ScaledDotScore)
    path = write_yaml(tiny_dict("attention"))
    cfg = load_config(path, ["model.attention=scaled"]).model
    assert BACKENDS["attention"].label(cfg) == "attention (scaled)"
    with pytest.raises(ConfigError) as error:
        load_config(path, ["model.attention=scaeld"])
    assert str(error.value) == "--set: model.attention: 'scaeld' is not one of dot, general, additive, scaled"
    torch.manual_seed(0)
    model = BACKENDS["attention"](cfg, 13, 13)
    assert isinstance(model.score, ScaledDotScore)
    queries = []
    model.score.register_forward_hook(lambda module, args, out: queries.append(args[0]))
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    state = model.init_state(model.encode(src, src != 0))
    log_probs, _, weights = model.step(torch.tensor([1, 1]), state, need_attention=True)
    by_hand = (state["encoder_out"] @ queries[0].unsqueeze(2)).squeeze(2) / math.sqrt(cfg.hidden_dim)
    expected = torch.softmax(by_hand.masked_fill(src == 0, float("-inf")), dim=-1)
    assert torch.allclose(weights[:, 0], expected, atol=1e-6)
    log_probs.sum().backward()  # it trains: the loss reaches the encoder through the new score
    assert model.encoder.rnn.weight_hh_l0.grad.abs().sum() > 0


# ---------------------------------------------------------------- a new decoding strategy: one class, one entry


class SecondStart(Paths):
    """Greedy search that starts every output with the model's second choice (a toy, for diversity)."""

    def describe(self) -> str:
        return "greedy from the second choice"

    def choose(self, log_probs: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if t:
            return super().choose(log_probs, t)
        top = log_probs.topk(2, dim=-1)
        return top.values[:, 1], top.indices[:, 1]


def test_a_new_strategy_decodes_through_the_api_and_the_cli(runs, tmp_path, monkeypatch):
    from mtcli.api import load

    monkeypatch.setitem(STRATEGIES, "second-start", lambda decode: SecondStart(decode.length_penalty, 1))
    sentences = ["the dog sees a cat", "two small birds sleep near the river"]
    model = load(runs / "attention")
    greedy = model.translate(sentences, beam=1)
    second = model.translate(sentences, strategy="second-start")
    for g, s in zip(greedy, second):
        assert s.tgt_pieces[0] != g.tgt_pieces[0] and s.hypotheses[0].token_log_probs[0] <= \
            g.hypotheses[0].token_log_probs[0]
        assert s.hypotheses[0].log_prob == pytest.approx(math.fsum(s.hypotheses[0].token_log_probs))
    (tmp_path / "src.txt").write_text("\n".join(sentences) + "\n")
    out = invoke("translate", "-c", runs / "attention", "-i", tmp_path / "src.txt",
                 "--set", "decode.strategy=second-start")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [s.text for s in second]
    result = invoke("evaluate", runs / "attention", "--set", "decode.strategy=second-start", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["search"] == "greedy from the second choice"
