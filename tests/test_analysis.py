"""Analysis: compare with confidence intervals and significance, BLEU by length, attention vs. gold alignments."""

import json

import pytest

from mtcli.analysis import length_buckets, parse_links, score_alignments
from tests.conftest import BACKENDS, tiny_dict, train_tiny_runs
from tests.test_cli import invoke, one_line_error


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny toy runs of the three backends, with a test set of 40 sentences of 3 to 12 words."""
    root = tmp_path_factory.mktemp("analysis")
    toy = {"train_size": 300, "dev_size": 16, "test_size": 40, "min_len": 3, "max_len": 12}
    train_tiny_runs(root, {backend: tiny_dict(backend, root / backend, data={"toy": toy},
                                              train={"max_steps": 40, "validate_every": 20})
                           for backend in BACKENDS})
    return root


def test_length_buckets_count_and_score_each_bucket():
    sources = ["a b", "a b c d", "a b c d e f g h i j k l", "x"]
    hyps = ["the cat sat on the mat", "one two three four five", "wrong words only here", "hello there friend"]
    refs = ["the cat sat on the mat", "one two three four five", "completely other sentence now", "hello there friend"]
    buckets = length_buckets(sources, hyps, refs, width=5)
    assert [(b.label, b.sentences) for b in buckets] == [("1-5", 3), ("6-10", 0), ("11-15", 1)]
    assert buckets[0].bleu == pytest.approx(100.0) and buckets[1].bleu is None and buckets[2].bleu < 10


def test_alignment_error_rate_against_gold_links():
    gold = ["0-0 1-2 2-1", "0-1 1-0"]
    assert parse_links(gold[0]) == {(0, 0), (1, 2), (2, 1)}
    perfect = score_alignments([{(0, 0), (1, 2), (2, 1)}, {(0, 1), (1, 0)}], gold)
    assert perfect.aer == 0.0 and perfect.accuracy == 100.0
    # 3 of 5 predicted links right: AER = 1 - 2*3 / (5 + 5)
    half = score_alignments([{(0, 0), (2, 2), (2, 1)}, {(0, 1), (0, 0)}], gold)
    assert half.aer == pytest.approx(40.0) and half.accuracy == pytest.approx(60.0)


def test_compare_three_backends_as_json_with_significance_lengths_and_alignment(runs, tmp_path):
    figure = tmp_path / "length.png"
    result = invoke("compare", *(runs / b for b in BACKENDS), "--bucket-width", "3", "--samples", "200",
                    "--json", "-o", figure)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["name"] for r in data["runs"]] == BACKENDS and data["sentences"] == 40
    assert data["significance_test"] == "bs" and data["samples"] == 200
    assert "nrefs:1" in data["signatures"]["bleu"]
    first, *others = data["runs"]
    assert first["bleu"]["p_value"] is None
    for run in data["runs"]:
        for metric in ("bleu", "chrf", "ter"):  # (TER has no upper bound: more edits than reference words)
            assert 0 <= run[metric]["score"] <= (100 if metric != "ter" else 1000) and run[metric]["ci95"] >= 0
        assert run["parameters"] > 1000 and run["train_seconds"] > 0 and run["tokens_per_s"] > 0
        buckets = run["bleu_by_length"]
        assert [b["source_words"] for b in buckets][:4] == ["1-3", "4-6", "7-9", "10-12"]
        assert sum(b["sentences"] for b in buckets) == 40
    for run in others:
        assert 0 <= run["bleu"]["p_value"] <= 1
    assert first["alignment"] is None  # the plain seq2seq has no attention
    attention, transformer = data["runs"][1]["alignment"], data["runs"][2]["alignment"]
    assert attention["kind"] == "additive attention" and 0 <= attention["aer"] <= 100
    assert transformer["kind"] == "transformer cross-attention" and transformer["map"] == "mean of 2 heads, layer 1"
    assert transformer["best_head"]["map"] in ("layer 1 head 1", "layer 1 head 2") and attention["pairs"] == 40
    assert 0 <= transformer["best_head"]["aer"] <= 100 and list(transformer["per_layer"]) == ["layer 1"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10000
    for backend, run in zip(BACKENDS, data["runs"]):  # the corpus scores are evaluate's, run by run
        alone = json.loads(invoke("evaluate", runs / backend, "--json").stdout)
        metrics = ("bleu", "chrf", "ter")
        assert [run[m]["score"] for m in metrics] == [alone[m]["score"] for m in metrics]
        if run["alignment"] is not None:
            assert run["alignment"]["aer"] == alone["alignment"]["aer"]


def test_compare_tables_in_the_terminal(runs, tmp_path):
    svg = tmp_path / "length.svg"
    result = invoke("compare", runs / "seq2seq", runs / "attention", "--test", "ar", "--samples", "100",
                    "--beam", "1", "-o", svg)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "approximate" in out and "randomization" in out and "±" in out
    assert "BLEU by source length" in out and "attention vs. gold alignments" in out
    text = svg.read_text()
    assert "BLEU by source length" in text and "seq2seq" in text and "AER" in text


def test_evaluate_reports_attention_alignment_on_the_toy_pair(runs):
    result = invoke("evaluate", runs / "attention", "--beam", "1", "--json")
    assert result.exit_code == 0, result.output
    alignment = json.loads(result.stdout)["alignment"]
    assert alignment["kind"] == "additive attention" and 0 <= alignment["accuracy"] <= 100
    result = invoke("evaluate", runs / "transformer", "--beam", "1")
    assert "attention vs. gold alignments" in result.output and "best single head" in result.output
    assert json.loads(invoke("evaluate", runs / "seq2seq", "--json").stdout)["alignment"] is None


def test_compare_mistakes(runs, tmp_path, write_yaml):
    one_line_error(invoke("compare", runs / "seq2seq", "--test", "t"), "--test t: use bs")
    one_line_error(invoke("compare", runs / "seq2seq", tmp_path / "nothing"), "no such checkpoint or run folder")
    other = write_yaml(tiny_dict("seq2seq", tmp_path / "other", data={"toy": {"test_size": 8}},
                                 train={"max_steps": 5, "validate_every": 5}))
    assert invoke("train", other).exit_code == 0
    one_line_error(invoke("compare", runs / "seq2seq", tmp_path / "other"), "give --src and --ref")
