"""Decoding as a user asks for it, through the CLI and the Python API, on tiny trained runs: n-best lists and
scores, sampling, n-gram blocking, ensembles, reference scoring, JSON Lines, streaming, and bad requests."""

import json
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mtcli
from mtcli.checkpoint import FORMAT, atomic_save, load_checkpoint, read_checkpoint
from mtcli.config import DecodeConfig
from mtcli.data.batching import collate, make_example
from mtcli.data.tokenizers import PAD
from mtcli.inference import plan_batches
from mtcli.kernels.loss import output_loss
from mtcli.models.ensemble import Ensemble
from tests.conftest import tiny_dict, train_tiny_runs
from tests.test_cli import invoke, one_line_error

SENTENCES = ["the dog sees a cat", "every small bird sleeps", "two kings", "a red house near the river"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny runs: attention and transformer on the toy pair, and one on other toy data (another vocabulary)."""
    root = tmp_path_factory.mktemp("decoding")
    configs = {backend: {**tiny_dict(backend), "name": f"toy-{backend}"} for backend in ("attention", "transformer")}
    other = tiny_dict("attention")
    other["data"]["toy"] = {**other["data"]["toy"], "seed": 7, "train_size": 60}
    configs["other"] = {**other, "name": "toy-other"}
    train_tiny_runs(root, configs, "--set", "train.max_steps=10", "--set", "train.validate_every=10")
    return root


def texts(results):
    return [[h.text for h in r.hypotheses] for r in results]


# ---------------------------------------------------------------- the Python API


@pytest.mark.parametrize("backend", ["attention", "transformer"])
def test_n_best_is_sorted_distinct_and_led_by_the_one_best(in_workdir, backend):
    model = mtcli.load(f"runs/toy-{backend}")
    n_best = model.translate(SENTENCES, beam=4, n_best=4, min_len=2)
    one_best = model.translate(SENTENCES, beam=4, min_len=2)
    for many, one in zip(n_best, one_best):
        scores = [h.score for h in many.hypotheses]
        assert len(many.hypotheses) == 4 and scores == sorted(scores, reverse=True)
        assert len({tuple(h.pieces) for h in many.hypotheses}) == 4
        assert many.hypotheses[0] == one.hypotheses[0] and len(one.hypotheses) == 1
        for h in many.hypotheses:  # the token scores add up to the output's log-probability
            assert len(h.token_log_probs) == len(h.pieces) and h.pieces[-1] == "</s>"
            assert math.isclose(sum(h.token_log_probs), h.log_prob, rel_tol=1e-4)


def test_beam_of_one_is_greedy_and_top_k_one_sampling_too(in_workdir):
    model = mtcli.load("runs/toy-transformer")
    greedy = model.translate(SENTENCES, min_len=3, strategy="greedy")
    assert texts(model.translate(SENTENCES, beam=1, min_len=3)) == texts(greedy)
    top1 = model.translate(SENTENCES, sampling=True, top_k=1, n_best=3, min_len=3)
    assert all(h.text == g.text and h.log_prob == pytest.approx(g.best.log_prob, rel=1e-5)
               for t, g in zip(top1, greedy) for h in t.hypotheses)


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(in_workdir):
    model = mtcli.load("runs/toy-attention")
    first = model.translate(SENTENCES, sampling=True, n_best=3, seed=5)
    assert texts(model.translate(SENTENCES, sampling=True, n_best=3, seed=5)) == texts(first)
    assert texts(model.translate(SENTENCES[::-1], sampling=True, n_best=3, seed=5, batch_size=1)) == texts(first)[::-1]
    assert texts(model.translate(SENTENCES, sampling=True, n_best=3, seed=6)) != texts(first)
    assert any(len(set(t)) > 1 for t in texts(first))  # the samples of one sentence differ


def test_no_ngram_repeats_with_blocking_for_every_strategy(in_workdir):
    model = mtcli.load("runs/toy-transformer")
    plain = model.translate(SENTENCES, beam=1, min_len=12, max_len_ratio=10.0)
    assert any(len(set(bigrams(h.pieces))) < len(bigrams(h.pieces)) for t in plain for h in t.hypotheses)
    for request in ({"beam": 1}, {"beam": 3, "n_best": 3}, {"sampling": True, "n_best": 3}):
        for result in model.translate(SENTENCES, min_len=12, max_len_ratio=10.0, no_repeat_ngram_size=2, **request):
            for h in result.hypotheses:
                assert len(h.pieces) > 12 and len(set(bigrams(h.pieces))) == len(bigrams(h.pieces))


def bigrams(pieces):
    return [tuple(pieces[i: i + 2]) for i in range(len(pieces) - 2)]  # EOS left out


def test_an_ensemble_of_one_is_the_model_and_of_two_copies_the_same(in_workdir):
    bundle = load_checkpoint("runs/toy-attention/best.pt")
    single = mtcli.load("runs/toy-attention")
    alone = single.translate(SENTENCES, beam=3, n_best=2, min_len=2)
    single.bundle.model = Ensemble([bundle.model])
    assert single.translate(SENTENCES, beam=3, n_best=2, min_len=2) == alone  # every score equal, exactly
    two = mtcli.load(["runs/toy-attention", "runs/toy-attention/best.pt"]).translate(SENTENCES, beam=3, min_len=2)
    assert [t.text for t in two] == [t.text for t in alone]
    assert [t.score for t in two] == pytest.approx([t.score for t in alone], rel=1e-5)


def test_reference_scores_are_the_sum_of_token_scores_and_the_training_loss(in_workdir):
    model = mtcli.load("runs/toy-transformer")
    references = ["inu ka nemu", "neko na hasiru", "", "inu inu inu"]
    scored = model.score(SENTENCES, references)
    bundle = model.bundle
    for source, reference, result in zip(SENTENCES, references, scored):
        batch = collate([make_example(bundle.src_tokenizer.encode(source), bundle.tgt_tokenizer.encode(reference))])
        with torch.no_grad():
            hidden = bundle.model(batch.src, batch.src_mask, batch.tgt_in, features_only=True)
            loss = output_loss(hidden.flatten(0, 1), bundle.model.output.weight, batch.tgt_out.flatten(), PAD, 0.0)
        assert result.log_prob == pytest.approx(-loss.item(), rel=1e-5)
        assert result.log_prob == pytest.approx(sum(result.token_log_probs), rel=1e-6)
        assert result.perplexity == pytest.approx(math.exp(loss.item() / len(result.pieces)), rel=1e-5)
        assert len(result.pieces) == len(reference.split()) + 1


def test_batches_shrink_to_the_memory_estimate_and_a_sentence_too_big_is_refused():
    class Stub(torch.nn.Module):
        has_attention = False

        def search_floats(self, src_len, out_len):
            return 100_000  # floats per hypothesis; decode.memory_mb 1 holds 262,144

    examples = [make_example([4] * n, []) for n in (3, 5, 4, 6, 2)]
    order = sorted(range(5), key=lambda i: len(examples[i].src))
    assert plan_batches(Stub(), examples, order, DecodeConfig(memory_mb=1, strategy="greedy")) == \
        [[4, 0], [2, 1], [3]]
    assert plan_batches(Stub(), examples, order, DecodeConfig(memory_mb=1, strategy="greedy", batch_size=1)) == \
        [[4], [0], [2], [1], [3]]
    with pytest.raises(mtcli.inference.MtcliError, match="3 hypotheses of a 3-token sentence .* decode.memory_mb"):
        plan_batches(Stub(), examples, order, DecodeConfig(memory_mb=1, beam_size=3))


# ---------------------------------------------------------------- the command line


def test_translate_n_best_scores_and_json_lines(in_workdir):
    model = mtcli.load("runs/toy-attention")
    expected = model.translate(SENTENCES, beam=3, n_best=2, min_len=1, alignment=True)
    args = ["translate", "-c", "runs/toy-attention", "--beam", "3", "--n-best", "2", "--set", "decode.min_len=1"]
    result = invoke(*args, "--scores", "--alignment", input="\n".join(SENTENCES) + "\n")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == ["1", "1", "2", "2", "3", "3", "4", "4"]
    assert [r[1] for r in rows] == [h.text for t in expected for h in t.hypotheses]
    assert [float(r[2]) for r in rows] == pytest.approx([h.score for t in expected for h in t.hypotheses], abs=1e-4)
    assert [r[4] for r in rows] == [h.alignment for t in expected for h in t.hypotheses]
    result = invoke(*args, "--json", "--alignment", input="\n".join(SENTENCES[:2] + [""] + SENTENCES[2:]) + "\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [json.dumps(r, ensure_ascii=False) for r in records] == lines  # JSON Lines that round-trip
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5] and records[2]["hypotheses"] == []
    del records[2]
    assert [r["source"] for r in records] == SENTENCES
    assert [[h["text"] for h in r["hypotheses"]] for r in records] == texts(expected)
    assert [r["hypotheses"][1]["token_log_probs"] for r in records] == \
        [t.hypotheses[1].token_log_probs for t in expected]
    for record in records:  # Pharaoh links: source word - output word, in range
        for h in record["hypotheses"]:
            links = [tuple(map(int, link.split("-"))) for link in h["alignment"].split()]
            assert all(s < len(record["source"].split()) and t < len(h["tokens"]) - 1 for s, t in links)


def test_translate_score_ref_and_ensembles(in_workdir, tmp_path):
    refs = tmp_path / "refs.txt"
    refs.write_text("inu ka nemu\nneko\n\ntori\n")
    result = invoke("translate", "-c", "runs/toy-attention", "--score-ref", refs, input="\n".join(SENTENCES) + "\n")
    assert result.exit_code == 0, result.output
    expected = mtcli.load("runs/toy-attention").score(SENTENCES, ["inu ka nemu", "neko", "", "tori"])
    assert [line.split("\t") for line in result.stdout.splitlines()] == \
        [[f"{r.log_prob:.4f}", f"{r.perplexity:.4f}"] for r in expected]
    one = invoke("translate", "-c", "runs/toy-attention", "--beam", "2", input="\n".join(SENTENCES) + "\n")
    two = invoke("translate", "-c", "runs/toy-attention", "-c", "runs/toy-attention", "--beam", "2",
                 input="\n".join(SENTENCES) + "\n")
    assert one.exit_code == two.exit_code == 0 and one.stdout == two.stdout
    result = invoke("evaluate", "runs/toy-attention", "runs/toy-transformer", "--json", "--beam", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["checkpoint"] == "runs/toy-attention/best.pt + runs/toy-transformer/best.pt"
    assert data["search"] == "beam 2" and data["decode"]["beam_size"] == 2


def test_decoding_mistakes_are_one_line(in_workdir, tmp_path):
    run = ["-c", "runs/toy-attention"]
    one_line_error(invoke("translate", "hi", *run, "--beam", "2", "--n-best", "3"),
                   "decode.n_best: 3 is more than decode.beam_size (2)")
    one_line_error(invoke("translate", "hi", *run, "--sampling", "--top-p", "0"), "decode.top_p: must be in (0, 1]")
    one_line_error(invoke("translate", "hi", *run, "--sampling", "--top-p", "1.5"), "decode.top_p: must be in (0, 1]")
    one_line_error(invoke("translate", "hi", *run, "--sampling", "--temperature", "0"),
                   "decode.temperature: must be positive")
    one_line_error(invoke("translate", "hi", *run, "--beam", "2", "--sampling"), "exclude each other")
    one_line_error(invoke("translate", "hi", *run, "--set", "train.lr=1"), "only decode.KEY=VALUE applies")
    one_line_error(invoke("translate", "hi", *run, "--set", "decode.beam=2"), "did you mean 'beam_size'?")
    one_line_error(invoke("translate", "hi", *run, "-c", "runs/toy-other"),
                   "runs/toy-other/best.pt: another source vocabulary than runs/toy-attention/best.pt")
    refs = tmp_path / "refs.txt"
    refs.write_text("one\ntwo\n")
    one_line_error(invoke("translate", *run, "--score-ref", refs, input="a\nb\nc\n"),
                   "refs.txt: 2 lines, but the input has 3")
    one_line_error(invoke("evaluate", "runs/toy-attention", "--beam", "10000"),
                   "decode.beam_size: 10000 is outside 1..256")
    one_line_error(invoke("evaluate", "runs/toy-attention", "--beam", "200", "--set", "decode.memory_mb=1"),
                   "200 hypotheses of a")


def test_invalid_utf8_is_refused_alike_from_stdin_argument_and_file(in_workdir, tmp_path):
    run = ["-c", "runs/toy-attention"]
    one_line_error(invoke("translate", *run, input=b"the dog\nthe \xffcat\n"),
                   "stdin:2: not valid UTF-8 at byte 5 (0xff)")
    one_line_error(invoke("translate", "caf\udcc3", *run), "argument: not valid UTF-8 at byte 4 (0xc3)")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the dog\nthe \xffcat\n")
    one_line_error(invoke("translate", *run, "-i", bad), "bad.txt:2: not valid UTF-8 at byte 5 (0xff)")
    one_line_error(invoke("translate", "the dog", *run, "-i", bad), "give a sentence or --input FILE, not both")


def test_a_model_that_outputs_nan_is_one_clear_error_for_every_strategy(in_workdir, tmp_path):
    data = read_checkpoint(Path("runs/toy-transformer/best.pt"))
    data["model"]["output.proj.weight"] = torch.full_like(data["model"]["output.proj.weight"], float("nan"))
    assert data["format"] == FORMAT
    atomic_save(data, tmp_path / "nan.pt")
    for search in (["--beam", "1"], ["--beam", "3"], ["--sampling"]):
        one_line_error(invoke("translate", "the dog", "-c", tmp_path / "nan.pt", *search),
                       "the model's scores are not numbers (NaN) at output position 1")


def test_streaming_writes_each_translation_before_the_input_ends(in_workdir):
    process = subprocess.Popen([sys.executable, "-m", "mtcli", "translate", "-c", "runs/toy-attention", "--beam",
                                "1", "--set", "decode.min_len=1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        for sentence in SENTENCES[:2]:
            process.stdin.write(sentence.encode() + b"\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 60)
            assert ready, "no translation while the input is open"
            assert process.stdout.readline().decode().strip() == mtcli.load("runs/toy-attention").translate(
                [sentence], beam=1, min_len=1)[0].text
        assert process.poll() is None  # still reading
    finally:
        process.stdin.close()
    assert process.wait(60) == 0 and process.stdout.read() == b""


def test_interactive_translate_prompts_until_ctrl_d(in_workdir):
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "mtcli", "translate", "-c", "runs/toy-attention"],
                               stdin=follower, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    assert read_until(leader, b"> ")
    os.write(leader, b"the dog sleeps\n")
    assert read_until(leader, b"> ")  # the next prompt: the line was translated
    os.write(leader, b"\x04")  # Ctrl-D
    assert process.wait(60) == 0 and len(process.stdout.read().splitlines()) == 1
    os.close(leader)


def read_until(fd, end, seconds=60):
    seen, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            seen += os.read(fd, 1024)
            if seen.endswith(end):
                return seen
    return None


def test_import_mtcli_stays_light_until_load():
    code = "import sys, mtcli; print(sorted(m for m in ('torch', 'mtcli.api', 'mtcli.inference') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
