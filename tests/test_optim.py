"""Optimizers, schedules, weight-decay groups and the weight average, through the training API."""

import math

import pytest
import torch

from mtcli.checkpoint import CHECKPOINTS, LATEST, read_checkpoint
from mtcli.config import TrainConfig
from mtcli.errors import ConfigError
from mtcli.optim import SCHEDULES, Schedule
from mtcli.training import Callback, Trainer, dev_loss, train
from tests.conftest import tiny_config, tiny_dict
from tests.test_resume import SignalAt, assert_same_weights, weights


def exempt_by_name(name: str, param: torch.Tensor) -> bool:
    """The rule, said independently of the code: embeddings, norms and biases get no weight decay."""
    return "embed" in name or param.ndim == 1


@pytest.mark.parametrize("backend,tie", [("transformer", "decoder"), ("transformer", "all"), ("attention", "none")])
def test_weight_decay_spares_norms_biases_and_embeddings(tmp_path, backend, tie):
    trainer = Trainer(tiny_config(backend, tmp_path / "run", model={"tie_embeddings": tie},
                                  train={"optimizer": "adamw", "weight_decay": 0.1}), [])
    decay, spared = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    grouped = [id(p) for group in (decay, spared) for p in group["params"]]
    named = dict(trainer.model.named_parameters())  # a tied parameter once
    assert sorted(grouped) == sorted(id(p) for p in named.values())  # every parameter in exactly one group
    assert {id(p) for p in spared["params"]} == {id(p) for n, p in named.items() if exempt_by_name(n, p)}
    if tie != "none":
        assert trainer.model.output.weight is trainer.model.tgt_embed.weight
        assert any(p is trainer.model.output.weight for p in spared["params"])
    if backend == "attention":  # the untied output layer is a matrix like any other
        assert any(p is trainer.model.output.weight for p in decay["params"])


def test_decay_all_and_no_decay_make_one_group(tmp_path):
    every = Trainer(tiny_config("transformer", tmp_path / "a", train={"optimizer": "adamw", "weight_decay": 0.1,
                                                                      "decay_all": True}), [])
    assert [g["weight_decay"] for g in every.optimizer.param_groups] == [0.1]
    assert len(every.optimizer.param_groups[0]["params"]) == len(list(every.model.parameters()))
    plain = Trainer(tiny_config("transformer", tmp_path / "b"), [])  # adam, no decay: as before groups existed
    assert type(plain.optimizer) is torch.optim.Adam and len(plain.optimizer.param_groups) == 1


@pytest.mark.parametrize("optimizer,extra,kind", [
    ("sgd", {"lr": 0.5, "momentum": 0.9, "nesterov": True, "warmup_steps": 0, "scheduler": "constant"},
     torch.optim.SGD),
    ("adamw", {"weight_decay": 0.01}, torch.optim.AdamW),
])
def test_sgd_and_adamw_train_a_tiny_model(tmp_path, optimizer, extra, kind):
    cfg = tiny_config("attention", tmp_path / "run", train={"optimizer": optimizer, "max_steps": 30,
                                                            "validate_every": 100, **extra})
    trainer = Trainer(cfg, [])
    before = dev_loss(trainer.model, trainer.dev_batches, trainer.device)
    trainer.run()
    assert type(trainer.optimizer) is kind
    if optimizer == "sgd":
        assert trainer.optimizer.param_groups[0]["nesterov"] and all(
            "momentum_buffer" in s for s in trainer.optimizer.state.values())
    assert dev_loss(trainer.model, trainer.dev_batches, trainer.device) < before - 0.5


def lrs(schedule: Schedule, steps: list[int]) -> list[float]:
    return [schedule.lr(step) for step in steps]


def test_schedules_at_known_steps():
    assert set(SCHEDULES) >= {"constant", "inverse_sqrt", "noam", "cosine", "plateau"}
    inverse_sqrt = Schedule(TrainConfig(lr=1.0, warmup_steps=10, scheduler="inverse_sqrt", min_lr=0.0))
    assert lrs(inverse_sqrt, [5, 10, 40, 1000]) == pytest.approx([0.5, 1.0, 0.5, 0.1])
    constant = Schedule(TrainConfig(lr=1.0, warmup_steps=4, scheduler="constant"))
    assert lrs(constant, [1, 2, 4, 1000]) == [0.25, 0.5, 1.0, 1.0]
    assert lrs(Schedule(TrainConfig(lr=1.0, warmup_steps=0, scheduler="constant")), [1, 1000]) == [1.0, 1.0]
    # noam: lr * d^-0.5 * min(step^-0.5, step * warmup^-1.5) with lr 2, d 16, warmup 4
    noam = Schedule(TrainConfig(lr=2.0, warmup_steps=4, scheduler="noam", min_lr=0.0), model_dim=16)
    assert lrs(noam, [2, 4, 16, 64]) == pytest.approx([0.125, 0.25, 0.125, 0.0625])
    # cosine: warmup to 1 at step 10, then down to min_lr 0.1 at the run's last step (110), flat after
    cosine = Schedule(TrainConfig(lr=1.0, warmup_steps=10, scheduler="cosine", min_lr=0.1), total_steps=110)
    half = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert lrs(cosine, [5, 10, 35, 60, 110, 500]) == pytest.approx([0.5, 1.0, half, 0.55, 0.1, 0.1])
    pinned = Schedule(TrainConfig(lr=1.0, warmup_steps=10, scheduler="cosine", min_lr=0.1, decay_steps=60),
                      total_steps=110)
    assert lrs(pinned, [35, 60, 110]) == pytest.approx([0.55, 0.1, 0.1])


def test_plateau_cuts_after_patience_and_keeps_its_state():
    plateau = Schedule(TrainConfig(lr=1.0, warmup_steps=0, scheduler="plateau", plateau_patience=1,
                                   plateau_factor=0.5, min_lr=0.1))
    plateau.validated(True)
    plateau.validated(False)
    assert plateau.lr(100) == 1.0
    plateau.validated(False)
    assert plateau.lr(100) == 0.5
    again = Schedule(plateau.train)
    again.load(plateau.state())
    assert again.lr(100) == 0.5
    for _ in range(20):
        plateau.validated(False)
    assert plateau.lr(100) == 0.1  # never below min_lr


class Record(Callback):
    def __init__(self):
        self.steps, self.validations = [], []

    def on_step(self, event):
        self.steps.append(event)

    def on_validation(self, event):
        self.validations.append(event)


def test_cosine_reaches_min_lr_at_the_last_step_of_training(tmp_path):
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"scheduler": "cosine", "max_steps": 20, "min_lr": 0.0,
                                                          "warmup_steps": 5, "log_every": 5, "validate_every": 20})
    record = Record()
    train(cfg, [record])
    # steps 5, 10, 15, 20: the peak, then cos at 1/3, 2/3 and all of the way from step 5 to step 20
    assert [e.lr for e in record.steps] == pytest.approx([0.003, 0.003 * 0.75, 0.003 * 0.25, 0.0])


def test_the_average_is_the_hand_computed_ema_and_the_raw_weights_train_on(tmp_path):
    decay, steps = 0.5, 4
    settings = {"train": {"ema_decay": decay, "max_steps": steps, "validate_every": 1, "keep_last": steps,
                          "keep_best": 1, "log_every": 1}}
    record = Record()
    trainer = Trainer(tiny_config("transformer", tmp_path / "ema", **settings), [record])
    average = {k: v.clone() for k, v in trainer.model.state_dict().items()}  # starts at the initial weights
    trainer.run()
    run = tmp_path / "ema"
    for step in range(1, steps + 1):
        raw = read_checkpoint(run / CHECKPOINTS / f"step-{step:08d}.pt")["training"]["raw_model"]
        average = {k: decay * average[k] + (1 - decay) * raw[k] for k in average}
    stored = read_checkpoint(run / LATEST)
    assert_same_weights(stored["model"], average)  # the checkpoint's weights are the average
    assert not torch.equal(stored["model"]["src_embed.weight"], stored["training"]["raw_model"]["src_embed.weight"])
    # the raw weights train exactly as without an average
    train(tiny_config("transformer", tmp_path / "plain", train={**settings["train"], "ema_decay": 0.0}))
    assert_same_weights(stored["training"]["raw_model"], weights(tmp_path / "plain"))
    # validation scored the average: the dev loss reported at the last step is the average's
    trainer.model.load_state_dict(stored["model"])
    assert record.validations[-1].loss == pytest.approx(dev_loss(trainer.model, trainer.dev_batches, trainer.device))


def test_exact_resume_with_an_average(tmp_path):
    settings = {"train": {"max_steps": 16, "validate_every": 100, "log_every": 1, "ema_decay": 0.9},
                "model": {"dropout": 0.2}}
    whole = tiny_config("transformer", tmp_path / "whole", **settings)
    train(whole)
    parts = tiny_config("transformer", tmp_path / "parts", **settings)
    assert train(parts, [SignalAt(5)]).step == 6
    assert train(parts).step == 16
    a, b = read_checkpoint(whole.run_path / LATEST), read_checkpoint(parts.run_path / LATEST)
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["training"]["raw_model"], b["training"]["raw_model"])


def test_resuming_with_another_optimizer_or_other_groups_is_one_line(tmp_path):
    train(tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 5, "validate_every": 5}))
    for change, message in [
        ({"optimizer": "sgd"}, "train.optimizer: the run in .* was trained with adam, not sgd; resume with it, or "
                               "pass --restart"),
        ({"weight_decay": 0.1}, "train.weight_decay: the run in .* was trained with 1 parameter group.s., this "
                                "config makes 2"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train(tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 10, "validate_every": 5, **change}))


def test_a_resumed_run_keeps_its_optimizer_state_under_the_new_settings(tmp_path):
    keys = {"optimizer": "adamw", "weight_decay": 0.1, "max_steps": 3, "validate_every": 3}
    train(tiny_config("seq2seq", tmp_path / "run", train=keys))
    resumed = Trainer(tiny_config("seq2seq", tmp_path / "run", train={**keys, "weight_decay": 0.2, "beta2": 0.99,
                                                                        "max_steps": 6}), [])
    assert [(g["weight_decay"], g["betas"]) for g in resumed.optimizer.param_groups] == [(0.2, (0.9, 0.99)),
                                                                                       (0.0, (0.9, 0.99))]
    assert {float(s["step"]) for s in resumed.optimizer.state.values()} == {3.0}  # the moments of 3 updates


@pytest.mark.parametrize("train_keys,message", [
    ({"optimizer": "sgdd"}, "test: train.optimizer: 'sgdd' is not one of adam, adamw, sgd"),
    ({"scheduler": "linear"}, "test: train.scheduler: 'linear' is not one of constant, inverse_sqrt, noam, cosine, "
                              "plateau"),
    ({"nesterov": True}, "train.nesterov: needs train.optimizer: sgd and a positive train.momentum"),
    ({"ema_decay": 1.0}, r"train.ema_decay: must be in \[0, 1\)"),
    ({"scheduler": "cosine", "max_steps": 0, "max_epochs": 0, "max_minutes": 5},
     "train.decay_steps: cosine needs an end"),
])
def test_bad_optimizer_settings_are_config_errors(train_keys, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config("seq2seq", train=train_keys)


def test_the_cli_names_the_choices_of_a_misspelt_optimizer_or_schedule(tmp_path, write_yaml):
    from tests.test_cli import invoke, one_line_error

    config = write_yaml(tiny_dict("seq2seq", tmp_path / "run"))
    one_line_error(invoke("train", config, "--set", "train.optimizer=lion"),
                   "error: --set: train.optimizer: 'lion' is not one of adam, adamw, sgd")
    one_line_error(invoke("train", config, "--set", "train.scheduler=cosin"),
                   "train.scheduler: 'cosin' is not one of constant, inverse_sqrt, noam, cosine, plateau")
    assert not (tmp_path / "run").exists()  # refused before anything was prepared or written


def test_plateau_cuts_the_learning_rate_when_dev_bleu_stops_improving(tmp_path):
    cfg = tiny_config("transformer", tmp_path / "run", train={
        "scheduler": "plateau", "warmup_steps": 0, "min_lr": 0.0, "plateau_patience": 0, "plateau_factor": 0.5,
        "best_metric": "bleu", "max_steps": 8, "validate_every": 2, "log_every": 1})
    record = Record()
    train(cfg, [record])
    best, flags = -1.0, []
    for v in record.validations:  # improved means a higher dev BLEU than every validation before
        assert v.metric == "bleu" and v.value == v.bleu.score
        flags.append(v.bleu.score > best)
        best = max(best, v.bleu.score)
    assert [v.is_best for v in record.validations] == flags
    assert True in flags[1:] and False in flags  # BLEU both rose and stalled, so the test sees both cases
    # patience 0: every validation without a better BLEU halves the learning rate of the updates after it
    cuts = {v.step: 0 if improved else 1 for v, improved in zip(record.validations, flags)}
    expected, scale = [], 1.0
    for step in range(1, 9):
        expected.append(0.003 * scale)
        scale *= 0.5 ** cuts.get(step, 0)
    assert [e.lr for e in record.steps] == pytest.approx(expected)
