import json
import math
import subprocess
import sys

import pytest
import torch

from mtcli.checkpoint import BEST, LATEST, load_checkpoint, read_checkpoint
from mtcli.config import TrainConfig
from mtcli.data.toy import toy_split
from mtcli.runlog import RunLog
from mtcli.training import Callback, Schedule, train
from tests.conftest import tiny_config


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, e):
        self.events.append(("start", e))

    def on_step(self, e):
        self.events.append(("step", e))

    def on_validation(self, e):
        self.events.append(("validation", e))

    def on_end(self, e):
        self.events.append(("end", e))


def test_training_reports_through_callbacks_and_writes_the_run_folder(tmp_path):
    recorder = Recorder()
    cfg = tiny_config("transformer", tmp_path / "run")
    end = train(cfg, [recorder, RunLog(cfg.run_path)])
    kinds = [k for k, _ in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("step") == 3 and kinds.count("validation") == 2  # steps 10/20/30; validations at 15, 30
    steps = [e for k, e in recorder.events if k == "step"]
    assert [e.step for e in steps] == [10, 20, 30]
    # warmup 5 then inverse square root: lr = 0.003 * sqrt(5 / step)
    assert [e.lr for e in steps] == pytest.approx([0.003 * (5 / s) ** 0.5 for s in (10, 20, 30)], rel=1e-12)
    validation = [e for k, e in recorder.events if k == "validation"][-1]
    assert validation.ppl == pytest.approx(math.exp(validation.loss)) and len(validation.samples) == 1
    src, ref, hyp = validation.samples[0]  # the first dev pair and its translation
    assert (src, ref) == (toy_split(cfg.data.toy, "dev")[0].src, toy_split(cfg.data.toy, "dev")[0].tgt)
    assert end.reason == "max_steps" and end.step == 30 and end.checkpoint == cfg.run_path / BEST
    run = cfg.run_path
    assert (run / BEST).is_file() and (run / LATEST).is_file() and (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("validation") == 2 and records[-1]["event"] == "end"
    assert "BLEU" in (run / "train.log").read_text()
    stored = read_checkpoint(run / LATEST)
    assert stored["config"]["model"]["backend"] == "transformer" and "optimizer" in stored["training"]


def test_training_loop_does_not_import_rich():
    code = "import sys, mtcli.training, mtcli.runlog; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_early_stopping_on_patience(tmp_path):
    # lr 0 after warmup: nothing improves after the first validation
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 200, "validate_every": 5, "patience": 2,
                                                          "lr": 1e-9, "min_lr": 0.0, "best_metric": "loss"})
    end = train(cfg)
    assert end.reason == "early_stopping" and end.step < 200


def test_max_epochs_stops_training(tmp_path):
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 0, "max_epochs": 1, "validate_every": 1000})
    end = train(cfg)
    assert end.reason == "max_epochs" and end.epoch == 1 and end.step > 0
    two = train(tiny_config("seq2seq", tmp_path / "run2",
                            train={"max_steps": 0, "max_epochs": 2, "validate_every": 1000}))
    assert two.epoch == 2 and two.step == 2 * end.step  # the same number of batches every epoch


def test_schedules():
    warm = Schedule(TrainConfig(lr=1.0, warmup_steps=10, scheduler="inverse_sqrt", min_lr=0.0))
    assert warm.lr(5) == pytest.approx(0.5) and warm.lr(10) == 1.0 and warm.lr(40) == pytest.approx(0.5)
    const = Schedule(TrainConfig(lr=1.0, warmup_steps=0, scheduler="constant"))
    assert const.lr(1) == 1.0 and const.lr(1000) == 1.0
    plateau = Schedule(TrainConfig(lr=1.0, warmup_steps=0, scheduler="plateau", plateau_patience=1,
                                   plateau_factor=0.5, min_lr=0.1))
    plateau.validated(True)
    plateau.validated(False)
    assert plateau.lr(100) == 1.0
    plateau.validated(False)
    assert plateau.lr(100) == 0.5
    for _ in range(20):
        plateau.validated(False)
    assert plateau.lr(100) == 0.1  # never below min_lr


def test_training_again_resumes_from_the_latest_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny_config("attention", run, train={"max_steps": 10, "validate_every": 10}))
    recorder = Recorder()
    end = train(tiny_config("attention", run, train={"max_steps": 20, "validate_every": 10}), [recorder])
    start = recorder.events[0][1]
    assert start.resumed_step == 10 and end.step == 20
    assert [e.step for k, e in recorder.events if k == "step"] == [20]
    fresh = Recorder()
    train(tiny_config("attention", run, train={"max_steps": 10, "validate_every": 10}), [fresh], restart=True)
    assert fresh.events[0][1].resumed_step == 0


def test_resuming_with_a_different_model_is_refused(tmp_path):
    from mtcli.errors import ConfigError

    run = tmp_path / "run"
    train(tiny_config("seq2seq", run, train={"max_steps": 5, "validate_every": 5}))
    with pytest.raises(ConfigError, match="different model section.*--restart"):
        train(tiny_config("attention", run))


def test_best_checkpoint_holds_the_best_validation(tmp_path):
    recorder = Recorder()
    cfg = tiny_config("transformer", tmp_path / "run", train={"max_steps": 40, "validate_every": 10})
    train(cfg, [recorder])
    validations = [e for k, e in recorder.events if k == "validation"]
    best = max(validations, key=lambda e: (e.bleu.score, -e.step))
    assert load_checkpoint(cfg.run_path / BEST).meta["best_step"] == best.step
    assert torch.is_tensor(next(iter(load_checkpoint(cfg.run_path / BEST).model.state_dict().values())))
