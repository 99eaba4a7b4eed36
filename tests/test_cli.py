"""The four commands as a user runs them: tiny real runs on the toy pair, then user mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import yaml
from typer.testing import CliRunner

from mtcli.checkpoint import load_checkpoint
from mtcli.cli import app
from mtcli.data.toy import toy_split
from tests.conftest import BACKENDS, tiny_dict, train_tiny_runs

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with one tiny trained run per backend under runs/ (the newest is the transformer)."""
    root = tmp_path_factory.mktemp("cli")
    configs = {backend: {**tiny_dict(backend), "name": f"toy-{backend}"} for backend in BACKENDS}
    outputs = train_tiny_runs(root, configs, "--set", "train.max_steps=20", "--set", "train.validate_every=10")
    for output in outputs.values():
        assert "validation at step 20" in output and "finished" in output
    return root


def test_train_writes_run_folder(in_workdir):
    for backend in BACKENDS:
        run = Path("runs") / f"toy-{backend}"
        assert (run / "best.pt").is_file() and (run / "metrics.jsonl").is_file()
        stored = yaml.safe_load((run / "config.yaml").read_text())
        assert stored["train"]["max_steps"] == 20  # the --set override is in the resolved config


def test_evaluate_table_and_json(in_workdir):
    result = invoke("evaluate", "runs/toy-attention", "--beam", "2")
    assert result.exit_code == 0, result.output
    assert "BLEU" in result.output and "chrF2" in result.output and "TER" in result.output
    assert "nrefs:1|case:mixed|eff:no|tok:13a" in result.output
    assert "gold alignments (additive attention, 16 pairs, argmax links)" in result.output  # one map: no label
    result = invoke("evaluate", "runs/toy-transformer", "--json", "-o", "hyps.txt")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["sentences"] == 16 and data["beam_size"] == 2
    # the scores are sacrebleu's on the written translations against the test references, in order
    hyps = Path("hyps.txt").read_text().splitlines()
    refs = [p.tgt for p in toy_split(load_checkpoint("runs/toy-transformer/best.pt").config.data.toy, "test")]
    assert data["bleu"]["score"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert data["chrf"]["score"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert data["bleu"]["signature"].startswith("nrefs:1")


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_and_translate_under_bf16_autocast(in_workdir, backend):
    result = invoke("evaluate", f"runs/toy-{backend}", "--precision", "bf16", "--beam", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["precision"] == "bf16" and data["sentences"] == 16
    fp32 = json.loads(invoke("evaluate", f"runs/toy-{backend}", "--json", "--beam", "2").stdout)
    assert fp32["precision"] == "fp32"
    # the same model under bf16 autocast: another search, scored the same way (sacrebleu, same references)
    assert data["bleu"]["signature"] == fp32["bleu"]["signature"]
    result = invoke("translate", "the dog sleeps", "-c", f"runs/toy-{backend}", "--precision", "bf16")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    result = invoke("translate", "the dog sleeps", "-c", f"runs/toy-{backend}", "--precision", "fp16")
    assert result.exit_code == 1 and result.stderr.strip() == "error: --precision: expected fp32 or bf16, got 'fp16'"


def test_evaluate_on_given_files_and_writes_translations(in_workdir, tmp_path):
    src, ref, out = tmp_path / "t.src", tmp_path / "t.ref", tmp_path / "hyp.txt"
    src.write_text("the dog sleeps\na cat runs\n")
    ref.write_text("inu ka nemu\nneko na hasiru\n")
    result = invoke("evaluate", "runs/toy-seq2seq", "--src", src, "--ref", ref, "--json", "-o", out)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sentences"] == 2
    assert len(out.read_text().splitlines()) == 2


def test_translate_argument_stdin_and_file_keep_one_line_per_input(in_workdir, tmp_path):
    result = invoke("translate", "the dog sleeps", "-c", "runs/toy-attention")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    lines = ["the dog sleeps", "", "every small bird sees the big red house near the river", "a cat runs"]
    result = invoke("translate", "-c", "runs/toy-attention", "--beam", "1", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    by_stdin = result.stdout.splitlines()
    assert len(by_stdin) == 4 and by_stdin[1] == ""
    one_by_one = [invoke("translate", line, "-c", "runs/toy-attention", "--beam", "1").stdout.strip()
                  for line in lines]
    assert by_stdin == one_by_one  # sorting by length for batching restores the input order
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    assert invoke("translate", "-c", "runs/toy-attention", "--beam", "1", "-i", path).stdout.splitlines() == by_stdin


def test_translate_without_checkpoint_uses_newest_run_and_says_so(in_workdir):
    result = invoke("translate", "the dog sleeps")
    assert result.exit_code == 0, result.output
    assert "using runs/toy-transformer/best.pt" in result.stderr
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize("backend", ["attention", "transformer"])
def test_visualize_in_terminal_and_as_figures(in_workdir, tmp_path, backend):
    png, svg = tmp_path / "a.png", tmp_path / "a.svg"
    result = invoke("visualize", f"runs/toy-{backend}", "--sentence", "the dog sees a cat", "-o", png)
    assert result.exit_code == 0, result.output
    assert "</s>" in result.output and "translation:" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    result = invoke("visualize", f"runs/toy-{backend}", "--beam", "1", "-o", svg)
    assert result.exit_code == 0 and "<svg" in svg.read_text()[:1000]
    assert "greedy" in result.output


def test_visualize_transformer_layer_and_head(in_workdir):
    result = invoke("visualize", "runs/toy-transformer", "--layer", "1", "--head", "2")
    assert result.exit_code == 0 and "head 2/2" in result.output
    result = invoke("visualize", "runs/toy-transformer", "--head", "3")
    assert result.exit_code == 1 and "the model has 2 attention head(s)" in result.stderr


def test_visualize_seq2seq_says_it_has_no_attention(in_workdir):
    result = invoke("visualize", "runs/toy-seq2seq")
    assert result.exit_code == 0
    assert "has no attention" in result.output and len(result.output.strip().splitlines()) == 1


def one_line_error(result, fragment):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.mark.parametrize("content, fragment", [
    ("model:\n  backend: transfomer\n",
     "bad.yaml: model.backend: 'transfomer' is not one of seq2seq, attention, transformer"),
    ("train:\n  warmup: 3\n", "bad.yaml: train.warmup: unknown key (did you mean 'warmup_steps'?)"),
    ("train:\n  lr: fast\n", "bad.yaml: train.lr: expected a number, got 'fast'"),
    ("data:\n  dir: does-not-exist\n", "does-not-exist/train.src: no such file"),
])
def test_train_config_mistakes(tmp_path, monkeypatch, content, fragment):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(content)
    one_line_error(invoke("train", "bad.yaml"), fragment)


def test_command_line_mistakes(in_workdir, tmp_path):
    one_line_error(invoke("train", "missing.yaml"), "missing.yaml: no such config file")
    one_line_error(invoke("train", "attention.yaml", "--set", "model.nope=1"), "--set: model.nope: unknown key")
    one_line_error(invoke("evaluate", "runs/nothing"), "runs/nothing: no such checkpoint or run folder")
    one_line_error(invoke("evaluate", "runs/toy-seq2seq", "--src", "x.txt"), "--src and --ref go together")
    one_line_error(invoke("translate", "-c", "runs/toy-seq2seq", "-i", "nope.txt"), "nope.txt: no such file")
    one_line_error(invoke("translate", "hi", "-c", "runs"), "runs: no best.pt or latest.pt")
    one_line_error(invoke("evaluate", "--beam", "0"), "--beam")
    one_line_error(invoke("visualize", "runs/toy-attention", "-o", tmp_path / "x.gif"), "unsupported figure format")
    one_line_error(invoke("translate", "--bogus"), "No such option")


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "mtcli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "evaluate", "translate", "visualize"):
        assert command in out.stdout


def test_real_toy_config_end_to_end_through_the_console_script(tmp_path):
    """The shipped experiment file, shrunk by --set, through the installed `mtcli` script."""
    mtcli = Path(sys.executable).with_name("mtcli")
    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    shrink = ["--set", "data.toy.train_size=1500", "--set", "train.max_steps=40", "--set", "train.validate_every=20",
              "--set", f"run_dir={run}"]
    out = subprocess.run([mtcli, "train", root / "experiments/toy-transformer.yaml", *shrink],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "toy-transformer" in out.stdout and "validation at step 40" in out.stdout and "tok/s" in out.stdout
    out = subprocess.run([mtcli, "evaluate", run, "--json", "--beam", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sentences"] == 1000 and result["test_set"] == "toy test"
    out = subprocess.run([mtcli, "translate", "-c", run], input="the dog sleeps\na cat runs\n",
                         capture_output=True, text=True)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2
