"""Shared fixtures: tiny seeded configs that train in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mtcli.config import ExperimentConfig, config_from_dict

BACKENDS = ["seq2seq", "attention", "transformer"]

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def prepared_data_cache(tmp_path_factory) -> Path:
    """One cache of prepared data for the whole session (and its subprocesses), never the user's."""
    path = tmp_path_factory.mktemp("prepared")
    os.environ["MTCLI_CACHE"] = str(path)
    return path


def tiny_dict(backend: str = "transformer", run_dir: Path | str = "", **sections: dict) -> dict:
    """A config for the toy pair, shrunk: ~300 short pairs, width 32, a few dozen steps."""
    data = {"name": f"tiny-{backend}", "run_dir": str(run_dir),
            "data": {"toy": {"train_size": 300, "dev_size": 16, "test_size": 16, "min_len": 3, "max_len": 10}},
            "model": {"backend": backend, "embed_dim": 32, "hidden_dim": 32, "ff_dim": 64, "heads": 2,
                      "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0},
            "train": {"max_steps": 30, "batch_tokens": 600, "log_every": 10, "validate_every": 15,
                      "lr": 0.003, "warmup_steps": 5, "samples": 1},
            "decode": {"beam_size": 2, "max_len": 40}}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def tiny_config(backend: str = "transformer", run_dir: Path | str = "", **sections: dict) -> ExperimentConfig:
    return config_from_dict(tiny_dict(backend, run_dir, **sections), "test")


@pytest.fixture
def write_yaml(tmp_path: Path):
    import yaml

    def write(data: dict | str, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
        return path
    return write


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    """The test module's `workdir` fixture (its trained runs) as the working folder."""
    monkeypatch.chdir(workdir)
    return workdir


def train_tiny_runs(root: Path, configs: dict[str, dict], *args: str) -> dict[str, str]:
    """`mtcli train NAME.yaml ARGS...` in `root` for each NAME -> config, in order; every run must succeed.

    Returns each run's terminal output by NAME."""
    import yaml
    from typer.testing import CliRunner

    from mtcli.cli import app

    outputs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name, data in configs.items():
            Path(f"{name}.yaml").write_text(yaml.safe_dump(data))
            result = CliRunner().invoke(app, ["train", f"{name}.yaml", *args])
            assert result.exit_code == 0, result.output
            outputs[name] = result.output
    return outputs
