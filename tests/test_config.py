import dataclasses
from pathlib import Path

import pytest
import yaml

from mtcli.config import ExperimentConfig, config_to_dict, load_config, parse_override
from mtcli.errors import ConfigError
from mtcli.models import BACKENDS

ROOT = Path(__file__).resolve().parents[1]


def test_reference_yaml_lists_every_key_with_its_default():
    reference = yaml.safe_load((ROOT / "experiments/reference.yaml").read_text())
    defaults = config_to_dict(ExperimentConfig())
    for backend in BACKENDS.values():  # the model section: every backend's own keys too
        defaults["model"] = {**dataclasses.asdict(backend.Options()), **defaults["model"]}
    assert reference == defaults


def test_every_experiment_config_loads():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.name == path.stem or path.stem == "reference"


def test_name_defaults_to_file_stem_and_run_dir_to_runs(write_yaml):
    cfg = load_config(write_yaml({"model": {"backend": "attention"}}, "my-exp.yaml"))
    assert cfg.name == "my-exp" and cfg.model.backend == "attention"
    assert cfg.run_path == Path("runs/my-exp")


def test_empty_sections_mean_defaults(write_yaml):
    cfg = load_config(write_yaml("model:\ntrain:\n"), ["model.heads=8"])
    assert cfg.model.heads == 8 and cfg.train.lr == ExperimentConfig().train.lr


def test_config_is_frozen(write_yaml):
    cfg = load_config(write_yaml({"model": {"backend": "transformer"}}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.backend = "seq2seq"


@pytest.mark.parametrize("text, key, value", [
    ("train.lr=0.0005", "train.lr", 0.0005),
    ("model.bidirectional=false", "model.bidirectional", False),
    ("data.dir=null", "data.dir", None),
    ("name=abc", "name", "abc"),
    ("train.max_steps=10", "train.max_steps", 10),
])
def test_parse_override_types_values_like_yaml(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_apply_with_types(write_yaml):
    path = write_yaml({"train": {"lr": 0.1}})
    cfg = load_config(path, ["train.lr=0.002", "model.backend=seq2seq", "data.toy.train_size=50",
                             "train.max_minutes=2"])
    assert cfg.train.lr == 0.002 and cfg.model.backend == "seq2seq"
    assert cfg.data.toy.train_size == 50 and cfg.train.max_minutes == 2.0


SOME = {"model": {"backend": "transformer"}}


@pytest.mark.parametrize("data, overrides, message", [
    ({"model": {"backend": "transfomer"}}, [],
     "exp.yaml: model.backend: 'transfomer' is not one of seq2seq, attention, transformer"),
    ({"train": {"warmup": 10}}, [], "exp.yaml: train.warmup: unknown key (did you mean 'warmup_steps'?)"),
    ({"modle": {}}, [], "exp.yaml: modle: unknown key (did you mean 'model'?)"),
    ({"train": {"lr": "fast"}}, [], "exp.yaml: train.lr: expected a number, got 'fast'"),
    ({"train": {"max_steps": 1.5}}, [], "exp.yaml: train.max_steps: expected an integer, got 1.5"),
    ({"model": {"bidirectional": "yes"}}, [], "exp.yaml: model.bidirectional: expected true or false, got 'yes'"),
    ({"model": 3}, [], "exp.yaml: model: expected a mapping of keys, got 3"),
    ({"data": {"toy": {"sed": 3}}}, [], "exp.yaml: data.toy.sed: unknown key (did you mean 'seed'?)"),
    ({"model": {"embed_dim": 30, "heads": 4}}, [], "exp.yaml: model.heads: 4 does not divide model.embed_dim 30"),
    ({"model": {"dropout": 1.5}}, [], "exp.yaml: model.dropout: must be in [0, 1), got 1.5"),
    ({"data": {"joint_vocab": False}, "model": {"tie_embeddings": "all"}}, [],
     "exp.yaml: model.tie_embeddings: 'all' needs data.joint_vocab: true"),
    ({"model": {"backend": "attention", "embed_dim": 64, "hidden_dim": 128, "tie_embeddings": "decoder"}}, [],
     "exp.yaml: model.tie_embeddings: tying needs model.embed_dim == model.hidden_dim for RNN backends"),
    (SOME, ["train.lrr=1"], "--set: train.lrr: unknown key (did you mean 'lr'?)"),
    (SOME, ["train.lr.x=1"], "--set: train.lr: is a value, not a section"),
    (SOME, ["train.lr"], "--set train.lr: expected section.key=value"),
    # a value given by --set is the override's mistake, not the file's: type, choice and range
    (SOME, ["model.backend=rnn"], "--set: model.backend: 'rnn' is not one of seq2seq, attention, transformer"),
    (SOME, ["train.lr=fast"], "--set: train.lr: expected a number, got 'fast'"),
    (SOME, ["data.toy={sed: 3}"], "--set: data.toy.sed: unknown key (did you mean 'seed'?)"),
    (SOME, ["train.keep_last=0"], "--set: train.keep_last: must be positive, got 0"),
    (SOME, ["data.toy.max_len=2"], "--set: data.toy.max_len: must be at least data.toy.min_len (3)"),
    ({"train": {"keep_last": 0}}, ["train.lr=0.1"], "exp.yaml: train.keep_last: must be positive, got 0"),
])
def test_user_mistakes_give_one_line_naming_file_key_and_fix(write_yaml, data, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(data), overrides)
    text = str(err.value)
    assert "\n" not in text
    assert text.endswith(message) or message in text, text


def test_missing_file_and_bad_yaml(tmp_path, write_yaml):
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=r"runs: is a folder, not a config file$"):
        load_config(tmp_path / "runs")
    (tmp_path / "runs" / "config.yaml").write_text("model:\n  backend: seq2seq\n")
    with pytest.raises(ConfigError, match=r"runs: is a folder, not a config file \(a run folder\? its resolved "
                                          r"config is .*runs/config.yaml\)"):
        load_config(tmp_path / "runs")
    for empty in ("", "# every line a comment\n", "{}\n"):  # an empty file would start a long default training
        with pytest.raises(ConfigError, match="exp.yaml: the file is empty"):
            load_config(write_yaml(empty))
    with pytest.raises(ConfigError, match=r"exp.yaml: line \d+: "):
        load_config(write_yaml("model:\n  backend: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write_yaml("- a\n- b\n"))


def test_exponent_notation_without_a_dot_is_a_number(write_yaml):
    # YAML 1.1 reads `1e-4` as a string; a learning rate is written that way all the time
    path = write_yaml("train:\n  lr: 1e-4\n  min_lr: 5E-7\n")
    cfg = load_config(path, ["train.warmup_steps=100", "train.lr=3e-4"])
    assert cfg.train.lr == 3e-4 and cfg.train.min_lr == 5e-7
    assert load_config(path).train.lr == 1e-4
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(path, ["train.max_steps=1e3"])
