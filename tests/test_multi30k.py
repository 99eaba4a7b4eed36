"""The three Multi30k configs as shipped, on a slice of the real corpus: they load, train and evaluate.

Only the data size, vocabulary size and step count are overridden; model sizes, precision, schedule and
search are the configs' own. Skipped where the corpus is not beside the project (../shared/data/multi30k).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtcli.cli import app

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "multi30k"
SIZES = {"train": 400, "val": 12, "test2016": 12}

pytestmark = pytest.mark.skipif(not (CORPUS / "train.de").exists(), reason="no Multi30k beside the project")


@pytest.fixture(scope="module")
def corpus_slice(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("multi30k")
    for split, lines in SIZES.items():
        for lang in ("de", "en"):
            with open(CORPUS / f"{split}.{lang}", encoding="utf-8") as f:
                head = [next(f) for _ in range(lines)]
            (folder / f"{split}.{lang}").write_text("".join(head), encoding="utf-8")
    return folder


@pytest.mark.parametrize("name", ["multi30k-seq2seq", "multi30k-attention", "multi30k-transformer"])
def test_multi30k_config_trains_and_evaluates(name, corpus_slice, tmp_path):
    run = tmp_path / name
    result = CliRunner().invoke(app, [
        "train", str(ROOT / "experiments" / f"{name}.yaml"), "--set", f"data.dir={corpus_slice}",
        "--set", "data.vocab_size=400", "--set", "train.max_steps=4", "--set", "train.validate_every=4",
        "--set", f"run_dir={run}"])
    assert result.exit_code == 0, result.output
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert start["train_pairs"] == SIZES["train"] and start["parameters"] > 1_000_000
    assert "validation at step 4" in result.output

    result = CliRunner().invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["sentences"] == SIZES["test2016"] and scores["beam_size"] == 5
    assert scores["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
