"""Training that never loses work: exact resume, checkpoint rotation, signals, crashes, full disks, NaN."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from mtcli import checkpoint as ckpt
from mtcli.checkpoint import BEST, CHECKPOINTS, LATEST, load_checkpoint, read_checkpoint
from mtcli.errors import CheckpointError, ConfigError
from mtcli.runtime import ONEDNN_CACHE_VARIABLES
from mtcli.training import Callback, train
from tests.conftest import tiny_config, tiny_dict

ROOT = Path(__file__).resolve().parents[1]


def weights(run: Path, name: str = LATEST) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / name)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


class SignalAt(Callback):
    """Sends this process `sig` when training reports step `step`, as a user's Ctrl-C or kill would."""

    def __init__(self, step: int, sig: int = signal.SIGINT):
        self.step, self.sig = step, sig

    def on_step(self, event):
        if event.step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("backend,accumulate", [("transformer", 1), ("attention", 2)])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, backend, accumulate):
    # dropout on: the random stream must be restored too; interrupted mid-epoch, between validations
    settings = {"train": {"max_steps": 40, "validate_every": 10, "log_every": 1, "accumulate": accumulate},
                "model": {"dropout": 0.2}}
    whole = tiny_config(backend, tmp_path / "whole", **settings)
    train(whole)
    parts = tiny_config(backend, tmp_path / "parts", **settings)
    end = train(parts, [SignalAt(13)])
    # the signal comes while step 13 is reported: the update under way (14) finishes, then it stops
    assert end.reason == "interrupted" and end.signal == "SIGINT" and end.step == 14
    assert end.saved == parts.run_path / CHECKPOINTS / "step-00000014.pt"
    assert os.path.realpath(parts.run_path / LATEST) == str(end.saved.resolve())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    resumed = train(parts)
    assert resumed.step == 40 and resumed.reason == "max_steps"
    assert_same_weights(weights(whole.run_path), weights(parts.run_path))
    stored = read_checkpoint(parts.run_path / LATEST)["training"]
    assert stored["progress"]["step"] == 40 and stored["progress"]["epoch"] > 1  # resumed across epochs


def test_latest_and_best_pointers_and_rotation(tmp_path):
    cfg = tiny_config("transformer", tmp_path / "run",
                      train={"max_steps": 60, "validate_every": 10, "keep_last": 2, "keep_best": 2})
    train(cfg)
    run = cfg.run_path
    entries = read_checkpoint(run / LATEST)["training"]["progress"]["checkpoints"]
    files = sorted(p.name for p in (run / CHECKPOINTS).iterdir())
    assert sorted(Path(e["file"]).name for e in entries) == files
    assert 2 <= len(files) <= 4 and {"step-00000050.pt", "step-00000060.pt"} <= set(files)
    by_value = sorted(entries, key=lambda e: (-e["value"], e["step"]))
    assert os.path.realpath(run / BEST) == str((run / by_value[0]["file"]).resolve())
    assert os.path.realpath(run / LATEST) == str((run / CHECKPOINTS / "step-00000060.pt").resolve())
    assert load_checkpoint(run / BEST).meta["step"] == by_value[0]["step"]
    assert not list(run.glob(".*.tmp")) and not list((run / CHECKPOINTS).glob(".*.tmp"))


def test_sigterm_stops_the_cli_cleanly_and_the_run_resumes_exactly(tmp_path, write_yaml):
    data = tiny_dict("transformer", tmp_path / "run", train={"max_steps": 100000, "validate_every": 25,
                                                             "log_every": 1}, model={"dropout": 0.1})
    config = write_yaml(data)
    proc = subprocess.Popen([sys.executable, "-m", "mtcli", "train", str(config)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"

    def steps_logged() -> int:
        return metrics.read_text().count('"event": "step"') if metrics.exists() else 0

    deadline = time.time() + 120
    while steps_logged() < 30:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "run the same command to resume" in err and "Traceback" not in err
    step = read_checkpoint(tmp_path / "run" / LATEST)["meta"]["step"]
    assert step >= 30
    # resume to step + 7 and compare with a run that went there without stopping
    more = ["--set", f"train.max_steps={step + 7}"]
    out = subprocess.run([sys.executable, "-m", "mtcli", "train", str(config), *more], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"resumed at step {step}" in (tmp_path / "run" / "train.log").read_text()
    data["run_dir"] = str(tmp_path / "whole")
    out = subprocess.run([sys.executable, "-m", "mtcli", "train", str(write_yaml(data, "whole.yaml")), *more],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "run"))


KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, sys, time, torch
    from pathlib import Path
    from mtcli import checkpoint
    target = Path(sys.argv[1])
    checkpoint.atomic_save({"step": 1, "w": torch.ones(1000)}, target)        # a good checkpoint ...
    real_save = torch.save
    def slow_save(obj, handle):                                                # ... then a save that stalls
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        Path(sys.argv[2]).touch()                                              # half written: kill me now
        time.sleep(60)
    checkpoint.torch.save = slow_save
    checkpoint.atomic_save({"step": 2, "w": torch.zeros(4_000_000)}, target)
""")


def test_sigkill_in_the_middle_of_saving_leaves_the_previous_checkpoint(tmp_path):
    target, marker = tmp_path / "run" / "latest.pt", tmp_path / "half-written"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_SAVING, str(target), str(marker)])
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    partial = list(target.parent.glob(".latest.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 1000  # the half-written bytes are there ...
    proc.kill()
    proc.wait()
    data = torch.load(target, weights_only=True)  # ... but never under the real name
    assert data["step"] == 1 and torch.equal(data["w"], torch.ones(1000))
    ckpt.remove_partial_files(target.parent)  # what the next training run does first
    assert [p.name for p in target.parent.iterdir()] == ["latest.pt"]


def test_a_full_disk_stops_training_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 20, "validate_every": 10})
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, handle):
        calls.append(1)
        if len(calls) > 1:  # the second checkpoint: some bytes, then ENOSPC
            handle.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, handle)

    monkeypatch.setattr(ckpt.torch, "save", save_until_the_disk_fills)
    with pytest.raises(CheckpointError, match="could not write the checkpoint .No space left on device.; "
                                              "the previous checkpoint .*step-00000010.pt is intact"):
        train(cfg)
    monkeypatch.undo()
    assert load_checkpoint(cfg.run_path / LATEST).meta["step"] == 10
    assert [p.name for p in (cfg.run_path / CHECKPOINTS).iterdir()] == ["step-00000010.pt"]


def test_a_diverging_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, write_yaml):
    from tests.test_cli import invoke

    good = write_yaml(tiny_dict("transformer", tmp_path / "run", train={"max_steps": 10, "validate_every": 10}))
    assert invoke("train", good).exit_code == 0
    # an absurd learning rate and no clipping: the weights blow up within a few updates
    result = invoke("train", good, "--set", "train.max_steps=200", "--set", "train.lr=1e12",
                    "--set", "train.warmup_steps=0", "--set", "train.clip_grad_norm=0",
                    "--set", "train.scheduler=constant")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert re.match(r"error: training diverged at step 1\d: the loss per target token is nan; the diverged weights "
                    r"are not saved; the last sound checkpoint .*step-00000010.pt is kept: run the same command to "
                    r"resume from it, with a lower train.lr", line) and "\n" not in line, line
    assert read_checkpoint(tmp_path / "run" / LATEST)["meta"]["step"] == 10


def test_precision_settings(tmp_path, monkeypatch):
    for name in ONEDNN_CACHE_VARIABLES:  # absent during the test, as before it afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train(tiny_config("transformer", tmp_path / "a", train={"precision": "fp16", "device": "cpu"}))
    cfg = tiny_config("attention", tmp_path / "b", train={"precision": "bf16", "max_steps": 10,
                                                          "validate_every": 10})
    end = train(cfg)
    assert end.step == 10 and load_checkpoint(cfg.run_path / BEST).meta["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in weights(cfg.run_path).values())  # fp32 master weights


def test_old_runs_without_training_state_ask_for_restart(tmp_path):
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 5, "validate_every": 5})
    train(cfg)
    data = read_checkpoint(cfg.run_path / LATEST)
    data["training"] = {}
    (cfg.run_path / LATEST).unlink()
    ckpt.atomic_save(data, cfg.run_path / LATEST)
    with pytest.raises(CheckpointError, match="no training state to resume from; pass --restart"):
        train(cfg)
    assert train(cfg, restart=True).step == 5


def test_metrics_record_every_resumed_segment(tmp_path):
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 20, "validate_every": 10, "log_every": 1})
    from mtcli.runlog import RunLog

    train(cfg, [RunLog(cfg.run_path), SignalAt(5)])
    train(cfg, [RunLog(cfg.run_path)])
    records = [json.loads(line) for line in (cfg.run_path / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in records if r["event"] == "start"]
    assert [s["resumed_step"] for s in starts] == [0, 6]
    steps = [r["step"] for r in records if r["event"] == "step"]
    assert steps == list(range(1, 21))  # no step trained twice, none skipped
    assert yaml.safe_load((cfg.run_path / "config.yaml").read_text())["train"]["max_steps"] == 20


def test_bad_checkpoint_settings_are_config_errors():
    with pytest.raises(ConfigError, match="train.keep_last: must be positive"):
        tiny_config("seq2seq", train={"keep_last": 0})
    with pytest.raises(ConfigError, match="train.accumulate: must be positive"):
        tiny_config("seq2seq", train={"accumulate": 0})
    with pytest.raises(ConfigError, match="train.precision: 'fp8' is not one of fp32, bf16, fp16, auto"):
        tiny_config("seq2seq", train={"precision": "fp8"})


def test_average_of_the_last_and_best_checkpoints(tmp_path):
    from tests.test_cli import invoke, one_line_error

    cfg = tiny_config("transformer", tmp_path / "run", train={"max_steps": 25, "validate_every": 5,
                                                              "keep_last": 4, "keep_best": 2})
    train(cfg)
    run = cfg.run_path
    result = invoke("average", run, "--last", "3")
    assert result.exit_code == 0, result.output
    assert "step-00000025.pt, step-00000020.pt, step-00000015.pt" in result.output.replace("\n", "")
    averaged = read_checkpoint(run / "average.pt")
    parts = [read_checkpoint(run / CHECKPOINTS / f"step-{s:08d}.pt")["model"] for s in (15, 20, 25)]
    for key, value in averaged["model"].items():
        torch.testing.assert_close(value, (parts[0][key] + parts[1][key] + parts[2][key]) / 3)
    assert averaged["meta"]["step"] == 25 and len(averaged["meta"]["averaged"]) == 3
    assert invoke("evaluate", run / "average.pt", "--beam", "1").exit_code == 0  # usable like any checkpoint
    result = invoke("average", run, "--best", "2", "-o", tmp_path / "best2.pt")
    assert result.exit_code == 0 and (tmp_path / "best2.pt").is_file()
    one_line_error(invoke("average", run, "--last", "9"), "4 step checkpoint(s) kept, 9 asked for")
    one_line_error(invoke("average", run, "--last", "2", "--best", "2"), "give one of --last N or --best N")
    one_line_error(invoke("average", tmp_path, "--last", "2"), "no latest.pt here")
