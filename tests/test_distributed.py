"""Distributed data parallel through torchrun: 2 CPU processes on the gloo backend, as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtcli.checkpoint import CHECKPOINTS, LATEST, read_checkpoint
from mtcli.runlog import RunLog
from mtcli.training import train
from tests.conftest import tiny_config, tiny_dict

# dropout off: then 2 processes x 1 batch per update and 1 process x 2 batches per update see the same
# batches and the same normalised gradient, so they must end with the same weights
# (and one thread each: a different thread count sums floats in another order)
SETTINGS = {"train": {"max_steps": 30, "validate_every": 15, "device": "cpu", "threads": 1},
            "model": {"dropout": 0.0}}


def torchrun(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "mtcli", "train", str(config), *args]


def validations(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "validation"]


def one_process_reference(tmp_path: Path, steps: int) -> Path:
    cfg = tiny_config("transformer", tmp_path / "reference",
                      train={**SETTINGS["train"], "max_steps": steps, "accumulate": 2}, model=SETTINGS["model"])
    threads = torch.get_num_threads()
    try:
        train(cfg, [RunLog(cfg.run_path)])
    finally:
        torch.set_num_threads(threads)
    return cfg.run_path


def assert_same_weights(a: dict, b: dict) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_two_processes_train_the_same_model_as_one_process_accumulating_two_batches(tmp_path, write_yaml):
    config = write_yaml(tiny_dict("transformer", tmp_path / "ddp", data={"cache_dir": str(tmp_path / "cache")},
                                  **SETTINGS))
    out = subprocess.run(torchrun(config), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "ddp"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in records if r["event"] == "start"]
    assert len(starts) == 1 and "2 processes" in starts[0]["device"]  # only rank 0 logs
    # the data was prepared once, by rank 0, and both processes mapped that one copy
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == [
        "corpus", "vocabulary"]
    assert sum("trained now" in n or "prepared now" in n for n in starts[0]["notes"]) == 2
    assert [r["step"] for r in records if r["event"] == "validation"] == [15, 30]
    assert out.stdout.count("finished (max steps) at step 30") == 1  # and only rank 0 talks
    ddp, one = read_checkpoint(run / LATEST), one_process_reference(tmp_path, 30)
    assert ddp["meta"]["processes"] == 2 and len(ddp["training"]["rng"]) == 2  # each rank's random state
    assert_same_weights(ddp["model"], read_checkpoint(one / LATEST)["model"])
    assert [v["bleu"] for v in validations(run)] == [v["bleu"] for v in validations(one)]  # the same dev BLEU


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups")
def test_ctrl_c_stops_every_process_and_the_run_resumes(tmp_path, write_yaml):
    data = tiny_dict("transformer", tmp_path / "ddp", **SETTINGS)
    data["train"].update(max_steps=100000, log_every=1)
    config = write_yaml(data)
    # a new session, like a terminal: Ctrl-C sends SIGINT to torchrun and to both workers
    proc = subprocess.Popen(torchrun(config), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    metrics = tmp_path / "ddp" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() or metrics.read_text().count('"event": "step"') < 12:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker left behind
        os.killpg(proc.pid, 0)
    assert err.count("stopped by SIGINT") == 1 and "saved" in err
    stored = read_checkpoint(tmp_path / "ddp" / LATEST)
    step = stored["meta"]["step"]
    assert step >= 12 and (tmp_path / "ddp" / CHECKPOINTS / f"step-{step:08d}.pt").is_file()
    out = subprocess.run(torchrun(config, "--set", f"train.max_steps={step + 5}"), capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"resumed at step {step}" in (tmp_path / "ddp" / "train.log").read_text()
    reference = one_process_reference(tmp_path, step + 5)
    assert_same_weights(read_checkpoint(tmp_path / "ddp" / LATEST)["model"],
                        read_checkpoint(reference / LATEST)["model"])


def test_subword_sampling_and_the_weight_average_are_the_same_on_two_processes(tmp_path, write_yaml):
    # each batch is sampled by its place in the epoch and the loss normalised by the tokens of every process;
    # 7 updates stay within the first epoch (its odd last batch is left out by 2 processes, not by 1)
    data = {"tokenizer": "sentencepiece", "vocab_size": 80, "spm_alpha": 0.1}
    train_keys = {**SETTINGS["train"], "max_steps": 7, "validate_every": 7, "ema_decay": 0.9}
    config = write_yaml(tiny_dict("transformer", tmp_path / "ddp", data=data, train=train_keys,
                                  model=SETTINGS["model"]))
    out = subprocess.run(torchrun(config), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    one = tiny_config("transformer", tmp_path / "one", data=data, train={**train_keys, "accumulate": 2},
                      model=SETTINGS["model"])
    threads = torch.get_num_threads()
    try:
        train(one)
    finally:
        torch.set_num_threads(threads)
    ddp, reference = read_checkpoint(tmp_path / "ddp" / LATEST), read_checkpoint(one.run_path / LATEST)
    assert_same_weights(ddp["model"], reference["model"])  # the average
    assert_same_weights(ddp["training"]["raw_model"], reference["training"]["raw_model"])
