"""Checkpoints: one self-contained file (weights + resolved config + tokenizers + training state).

Written atomically (temporary file, fsync, rename) and read with torch.load(weights_only=True), so a
checkpoint holds only tensors and plain data and loading never runs code from the file.

A run folder keeps its checkpoints in `checkpoints/step-NNNNNNNN.pt`; `latest.pt` and `best.pt` point to
one of them (symbolic links, replaced atomically; copies where the file system has no links), and
`prune` keeps the newest `keep_last` and the `keep_best` best of them.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtcli.config import ExperimentConfig, config_from_dict, config_to_dict
from mtcli.data.tokenizers import Tokenizer, tokenizer_from_state
from mtcli.errors import CheckpointError, ConfigError
from mtcli.files import atomic_write, writing
from mtcli.metrics import lower_is_better
from mtcli.models import Backend, build_model

FORMAT = "mtcli-checkpoint-1"
BEST, LATEST = "best.pt", "latest.pt"
CHECKPOINTS = "checkpoints"


@dataclass
class Bundle:
    """Everything needed to translate: the model in eval mode, its config and tokenizers."""

    path: Path
    model: Backend
    config: ExperimentConfig
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    meta: dict[str, Any]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written `path`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def step_file(step: int) -> str:
    """The run-folder-relative name of the checkpoint written at `step`."""
    return f"{CHECKPOINTS}/step-{step:08d}.pt"


def point(run_dir: Path, pointer: str, target: str) -> None:
    """Make `run_dir/pointer` refer to `run_dir/target`, atomically (a link, else a hard link, else a copy)."""
    tmp = run_dir / f".{pointer}.{os.getpid()}.tmp"
    with writing(run_dir / pointer):
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target, tmp)
        except OSError:
            try:
                os.link(run_dir / target, tmp)
            except OSError:
                shutil.copyfile(run_dir / target, tmp)
        os.replace(tmp, run_dir / pointer)


def pointed(run_dir: Path, pointer: str) -> str | None:
    """The run-folder-relative file a pointer refers to (None: no pointer, or a plain file)."""
    path = run_dir / pointer
    if not path.is_symlink():
        return None
    return os.path.relpath(path.resolve(), run_dir.resolve())


def kept_checkpoints(entries: list[dict[str, Any]], keep_last: int, keep_best: int,
                     lower_is_better: bool) -> list[dict[str, Any]]:
    """The newest `keep_last` and the `keep_best` best of the {"file", "step", "value"} records.

    A record with value None (a checkpoint written on interruption) counts only as recent; ties in
    value keep the earlier step, the one the `best` pointer names.
    """
    newest = sorted(entries, key=lambda e: e["step"])[-keep_last:]
    scored = [e for e in entries if e["value"] is not None]
    best = sorted(scored, key=lambda e: (e["value"] if lower_is_better else -e["value"], e["step"]))[:keep_best]
    files = {e["file"] for e in newest + best}
    return [e for e in entries if e["file"] in files]


def prune(run_dir: Path, kept: list[dict[str, Any]]) -> None:
    """Delete the step checkpoints not in `kept` (the files `latest` and `best` point to always stay)."""
    keep = {e["file"] for e in kept} | {pointed(run_dir, LATEST), pointed(run_dir, BEST)}
    for path in (run_dir / CHECKPOINTS).glob("step-*.pt"):
        if f"{CHECKPOINTS}/{path.name}" not in keep:
            with writing(path):
                path.unlink(missing_ok=True)


def remove_partial_files(run_dir: Path) -> None:
    """Temporary files a killed save left behind (never under a real name, so nothing else is lost)."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                with writing(tmp):
                    tmp.unlink(missing_ok=True)


def save_checkpoint(path: Path, model: Backend, config: ExperimentConfig, src_tokenizer: Tokenizer,
                    tgt_tokenizer: Tokenizer, meta: dict[str, Any], training: dict[str, Any] | None = None) -> None:
    atomic_save({
        "format": FORMAT,
        "config": config_to_dict(config),
        "model": model.state_dict(),
        "tokenizers": {"src": src_tokenizer.state(), "tgt": tgt_tokenizer.state()},
        "meta": meta,
        "training": training or {},
    }, path)


def resolve_checkpoint(target: str | Path | None, runs_dir: Path = Path("runs")) -> Path:
    """A checkpoint file, a run folder (its best, else latest checkpoint), or None: the newest run."""
    if target is None:
        found = sorted(runs_dir.glob(f"*/{BEST}"), key=lambda p: p.stat().st_mtime) if runs_dir.is_dir() else []
        if not found:
            raise CheckpointError(f"no trained run found under {runs_dir}/: train one first or pass a checkpoint")
        return found[-1]
    path = Path(target)
    if path.is_dir():
        for name in (BEST, LATEST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no {BEST} or {LATEST} in this folder (is it a run folder?)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    return path


def _unpickler_detail(exc: Exception) -> str:
    """torch's weights-only refusal is a long text; keep the part that says what was refused."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # older torch: at the start of a line; newer: mid-line
        text = text.split("WeightsUnpickler error:", 1)[1]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    return lines[0] if lines else type(exc).__name__


def pickled_globals(path: Path) -> list[str] | None:
    """The module.name globals a plain pickle file asks for, read without running it (pickletools);
    None if the file is not a whole pickle (damaged, or not a pickle at all)."""
    names, strings = [], []
    try:
        with path.open("rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                if op.name == "GLOBAL":
                    names.append(".".join(str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "a global name")
                elif isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
    except Exception:  # pickletools raises ValueError, UnicodeDecodeError, ... on bytes that are no pickle
        return None
    return list(dict.fromkeys(names))


def _refusal(path: Path, exc: Exception) -> CheckpointError:
    """Tell a file that asks to run code (refused, never run) from one that is damaged or foreign."""
    detail = _unpickler_detail(exc)
    named = re.search(r"GLOBAL (\S+)", detail)
    names = [named.group(1)] if named else pickled_globals(path)
    if names:
        return CheckpointError(f"{path}: refused to load: it asks for {', '.join(names)}, which is not tensors or "
                               "plain data (loading it could run code); mtcli never runs code from a checkpoint")
    return CheckpointError(f"{path}: not a readable checkpoint: damaged, or not a file torch.save wrote ({detail})")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's plain data; anything but tensors and plain data is refused, never executed."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses: the refusal says it
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except Exception as exc:  # truncated or foreign files fail in many ways inside torch.load
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: not a readable checkpoint (an empty file)") from None
        detail = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint: damaged, or not a file torch.save wrote "
                              f"({detail})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mtcli checkpoint")
    return data


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    data = read_checkpoint(path)
    try:
        config = config_from_dict(data["config"], f"{path} (stored config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    src_tok = tokenizer_from_state(data["tokenizers"]["src"])
    tgt_tok = tokenizer_from_state(data["tokenizers"]["tgt"])
    model = build_model(config.model, src_tok.vocab_size, tgt_tok.vocab_size)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    return Bundle(path, model, config, src_tok, tgt_tok, data.get("meta", {}))



def kept_step_checkpoints(run_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """The {"file", "step", "value"} records of a run's step checkpoints still on disk, and the metric."""
    latest = run_dir / LATEST
    if not latest.is_file():
        raise CheckpointError(f"{run_dir}: no {LATEST} here (is it a run folder?)")
    data = read_checkpoint(latest)
    entries = (data.get("training") or {}).get("progress", {}).get("checkpoints", [])
    return [e for e in entries if (run_dir / e["file"]).is_file()], data["config"]["train"]["best_metric"]


def choose_for_average(run_dir: Path, last: int | None, best: int | None) -> list[Path]:
    """The newest `last` or the `best` best step checkpoints of a run."""
    if (last is None) == (best is None):
        raise CheckpointError("give one of --last N or --best N")
    entries, metric = kept_step_checkpoints(run_dir)
    want = last or best
    if best is not None:
        entries = [e for e in entries if e["value"] is not None]
        entries.sort(key=lambda e: (e["value"] if lower_is_better(metric) else -e["value"], e["step"]))
    else:
        entries.sort(key=lambda e: -e["step"])
    if len(entries) < want:
        raise CheckpointError(f"{run_dir}: {len(entries)} {'validated ' if best else ''}step checkpoint(s) kept, "
                              f"{want} asked for; train with a larger train.keep_last / train.keep_best")
    return [run_dir / e["file"] for e in entries[:want]]


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """Write a checkpoint whose weights are the mean of `paths`' weights (same config and tokenizers)."""
    first = read_checkpoint(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first["model"].items()}
    steps = [first["meta"]["step"]]
    for path in paths[1:]:
        data = read_checkpoint(path)
        steps.append(data["meta"]["step"])
        if data["config"]["model"] != first["config"]["model"] or data["tokenizers"] != first["tokenizers"]:
            raise CheckpointError(f"{path}: another model or vocabulary than {paths[0]}; cannot average them")
        for key, value in data["model"].items():
            if value.is_floating_point():
                total[key] += value.double()
    model = {k: (v / len(paths)).to(first["model"][k].dtype) if v.is_floating_point() else v
             for k, v in total.items()}
    meta = dict(first["meta"], averaged=[str(p) for p in paths], step=max(steps))
    atomic_save({"format": FORMAT, "config": first["config"], "model": model, "tokenizers": first["tokenizers"],
                 "meta": meta, "training": {}}, out)
    return out
