"""Faults a user meets: full disks, read-only folders, missing folders, two runs on one folder, a diverging
model, a signal during validation. Each is one line on stderr, exit code 1 (130 for the signal), nothing lost."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtcli import files
from mtcli.checkpoint import BEST, LATEST, load_checkpoint, read_checkpoint
from mtcli.errors import FolderInUse, TrainingError, WriteError
from mtcli.training import Trainer, train
from tests.conftest import tiny_config, tiny_dict
from tests.test_cli import invoke, one_line_error

ENOSPC = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One tiny attention run with checkpoints at steps 10 and 20."""
    cfg = tiny_config("attention", tmp_path_factory.mktemp("faults") / "run",
                      train={"max_steps": 20, "validate_every": 10})
    train(cfg)
    return cfg.run_path


class FullDisk:
    """Writes through mtcli.files fail with ENOSPC once `room` bytes are written (a real partial write first),
    as a disk that fills would; `only` limits it to files whose name contains that text."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, room: int = 0, only: str = ""):
        self.room, self.only, self.real_write, self.real_fdopen = room, only, os.write, os.fdopen
        monkeypatch.setattr(files.os, "write", self.write)
        monkeypatch.setattr(files.os, "fdopen", self.fdopen)

    def _spend(self, size: int) -> int:
        """How many of `size` bytes still fit; raises ENOSPC when none do."""
        if self.room <= 0:
            raise OSError(errno.ENOSPC, ENOSPC)
        fits = min(size, self.room)
        self.room -= fits
        return fits

    def _watched(self, fd: int) -> bool:
        return self.only in os.readlink(f"/proc/self/fd/{fd}")

    def write(self, fd: int, data: bytes) -> int:
        if fd <= 2 or not self._watched(fd):
            return self.real_write(fd, data)
        return self.real_write(fd, data[: self._spend(len(data))])

    def fdopen(self, fd: int, *args, **kwargs):
        handle = self.real_fdopen(fd, *args, **kwargs)
        if not self._watched(fd):
            return handle
        disk = self

        class Filling:  # the file object torch.save and savefig write into: what fits, then ENOSPC
            def write(self, data) -> int:
                data = bytes(data)
                fits = disk._spend(len(data))
                handle.write(data[:fits])
                if fits < len(data):
                    raise OSError(errno.ENOSPC, ENOSPC)
                return fits

            def __getattr__(self, name):
                return getattr(handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

        return Filling()


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Every file created or opened for writing under `folder` fails with EROFS, as on a read-only mount."""
    real_open, real_mkdir = os.open, os.mkdir
    inside = str(folder.resolve())

    def guarded(path, *args):
        if str(Path(path).resolve()).startswith(inside):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            guarded(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if os.path.exists(path):  # as the kernel: an existing folder is that, before read-only
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        guarded(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", open_)
    monkeypatch.setattr(files.os, "mkdir", mkdir)


# ---------------------------------------------------------------- full disk


def test_torch_writer_on_a_full_disk_stops_training_with_one_line(tmp_path, monkeypatch, write_yaml):
    """torch.save reports ENOSPC as a RuntimeError ("unexpected pos ..."): still one line, nothing lost."""
    config = write_yaml(tiny_dict("seq2seq", tmp_path / "run", train={"max_steps": 10, "validate_every": 5}))

    from mtcli import training
    real_save, state = training.Trainer._save, {}

    def save(self, value, improved):  # the disk fills after the first checkpoint
        if self.progress.step == 10 and not state:
            state["full"] = FullDisk(monkeypatch, room=5000, only="step-00000010")
        return real_save(self, value, improved)

    monkeypatch.setattr(training.Trainer, "_save", save)
    result = invoke("train", config)
    one_line_error(result, "step-00000010.pt: could not write the checkpoint (No space left on device); the "
                           "previous checkpoint ")
    assert "step-00000005.pt is intact" in result.stderr
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / LATEST).meta["step"] == 5  # loads: nothing damaged
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000005.pt"]


def test_a_full_disk_while_logging_leaves_whole_lines(tmp_path, monkeypatch, write_yaml):
    config = write_yaml(tiny_dict("seq2seq", tmp_path / "run", train={"max_steps": 20, "validate_every": 10,
                                                                      "log_every": 1}))
    from mtcli import runlog
    real, calls = runlog.RunLog.on_step, []

    def on_step(self, event):
        calls.append(event.step)
        if event.step == 5:  # room for half of the next metrics line, then the disk is full
            FullDisk(monkeypatch, room=40, only="metrics.jsonl")
        real(self, event)

    monkeypatch.setattr(runlog.RunLog, "on_step", on_step)
    result = invoke("train", config)
    one_line_error(result, f"metrics.jsonl: cannot write ({ENOSPC})")
    monkeypatch.undo()
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert text.endswith("\n")  # the cut line was taken back
    records = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "train.log").read_text().count(" step ") == 5  # its own line 5 went in whole


@pytest.mark.parametrize("command, target", [
    (["evaluate", "{run}", "--beam", "1", "-o", "{out}/hyps.txt"], "hyps.txt"),
    (["visualize", "{run}", "--beam", "1", "-o", "{out}/attention.png"], "attention.png"),
    (["report", "{run}", "--beam", "1", "--samples", "1", "-o", "{out}/report.html"], "report.html"),
    (["average", "{run}", "--last", "2", "-o", "{out}/average.pt"], "average.pt"),
])
def test_a_failed_output_write_keeps_the_previous_file(run, tmp_path, monkeypatch, command, target):
    (tmp_path / target).write_bytes(b"the previous file")
    FullDisk(monkeypatch, room=10, only=target)
    result = invoke(*[part.format(run=run, out=tmp_path) for part in command])
    one_line_error(result, f"{tmp_path / target}: cannot write ({ENOSPC})")
    assert (tmp_path / target).read_bytes() == b"the previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target]  # no temporary file left behind


# ---------------------------------------------------------------- outputs checked before the work


@pytest.mark.parametrize("command", [
    ["evaluate", "{run}", "-o", "no/such/dir/h.txt"],
    ["compare", "{run}", "{run}", "-o", "no/such/dir/h.png"],
    ["report", "{run}", "-o", "no/such/dir/h.html"],
    ["visualize", "{run}", "-o", "no/such/dir/h.png"],
    ["average", "{run}", "--last", "2", "-o", "no/such/dir/h.pt"],
])
def test_an_output_in_a_missing_folder_fails_before_any_work(run, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    for module, name in (("evaluation", "evaluate"), ("analysis", "compare_runs"), ("report", "build_report"),
                         ("visualize", "attention_views"), ("checkpoint", "choose_for_average")):
        monkeypatch.setattr(f"mtcli.{module}.{name}", lambda *a, **k: pytest.fail("the work started"))
    result = invoke(*[part.format(run=run) for part in command])
    one_line_error(result, f"no/such/dir/h.{command[-1].rsplit('.', 1)[1]}: cannot write (no folder no/such/dir)")


def test_read_only_run_folder_refuses_train_and_average_up_front(run, tmp_path, monkeypatch, write_yaml):
    config = write_yaml(tiny_dict("attention", run, train={"max_steps": 30, "validate_every": 10}))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    read_only(monkeypatch, run)
    one_line_error(invoke("train", config), f"{run / '.lock'}: cannot write (Read-only file system)")
    one_line_error(invoke("average", run, "--last", "2"), f"{run / 'average.pt'}: cannot write (Read-only file system)")
    one_line_error(invoke("evaluate", run, "-o", run / "h.txt"), f"{run / 'h.txt'}: cannot write (Read-only")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_check_output_file_names_the_problem(tmp_path):
    assert files.check_output_file(tmp_path / "a.txt") == tmp_path / "a.txt"
    assert not (tmp_path / "a.txt").exists() and not list(tmp_path.iterdir())  # the probe leaves nothing
    with pytest.raises(WriteError, match=r"_t0: cannot write \(it is a folder; give a file name\)$"):
        files.check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(WriteError, match=r"f/a.txt: cannot write \(.*/f is not a folder\)"):
        files.check_output_file(tmp_path / "f" / "a.txt")


def test_write_failures_are_told_apart_from_bugs(tmp_path):
    with pytest.raises(WriteError, match=r"x.pt: cannot write \(No space left on device\)"):
        with files.writing(tmp_path / "x.pt"):
            try:
                raise OSError(errno.ENOSPC, ENOSPC)
            except OSError:  # torch.save's writer: a RuntimeError raised while handling the OSError
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")  # noqa: B904
    with pytest.raises(RuntimeError, match="a bug"):  # not a write failure: not dressed up as one
        with files.writing(tmp_path / "x.pt"):
            raise RuntimeError("a bug")


# ---------------------------------------------------------------- one train per run folder


def test_a_second_train_on_a_folder_in_use_is_refused(tmp_path, write_yaml):
    config = write_yaml(tiny_dict("seq2seq", tmp_path / "run", train={"max_steps": 5, "validate_every": 5}))
    with files.folder_lock(tmp_path / "run", "mtcli train") as stale:
        assert stale is None
        result = invoke("train", config)
        with pytest.raises(FolderInUse):
            with files.folder_lock(tmp_path / "run", "mtcli train"):
                pass
    one_line_error(result, f"{tmp_path / 'run'}: in use by mtcli train (process {os.getpid()} on ")
    assert "wait for it to end, stop it, or train into another folder (--set run_dir=...)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # nothing written by the refused run
    with files.folder_lock(tmp_path / "run", "mtcli train") as stale:  # the lock went with its holder
        assert stale is None


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, write_yaml):
    data = tiny_dict("seq2seq", tmp_path / "run", train={"max_steps": 100000, "validate_every": 5, "log_every": 1})
    config = write_yaml(data)
    proc = subprocess.Popen([sys.executable, "-m", "mtcli", "train", str(config)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest, deadline = tmp_path / "run" / LATEST, time.time() + 120
    while not latest.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    one_line_error(invoke("train", config), f"in use by mtcli train (process {proc.pid} on ")
    proc.kill()  # SIGKILL: no chance to release anything
    proc.wait()
    assert (tmp_path / "run" / ".lock").exists()
    step = read_checkpoint(latest)["meta"]["step"]
    result = invoke("train", config, "--set", f"train.max_steps={step + 2}")
    assert result.exit_code == 0, result.output
    assert f"took over the run folder from mtcli train (process {proc.pid} on " in result.output
    assert f"resuming at step {step}" in result.output and not (tmp_path / "run" / ".lock").exists()


# ---------------------------------------------------------------- divergence


def test_an_exploding_loss_is_never_saved_and_the_run_resumes_from_the_last_sound_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 20, "validate_every": 10})
    from mtcli import training
    real_loss = training.batch_loss

    def exploding(model, batch, smoothing, net=None):  # finite, but 1e30 times too large from update 15 on
        loss = real_loss(model, batch, smoothing, net)
        return loss * 1e30 if state["step"] >= 15 else loss

    state = {"step": 0}
    real_update = Trainer._update

    def update(self, group):
        state["step"] = self.progress.step + 1
        return real_update(self, group)

    monkeypatch.setattr(training, "batch_loss", exploding)
    monkeypatch.setattr(Trainer, "_update", update)
    with pytest.raises(TrainingError, match=r"training diverged at step 15: the loss per target token is [\d.]+e\+3\d "
                                            r"\(above 100\); the diverged weights are not saved; the last sound "
                                            r"checkpoint .*step-00000010.pt is kept"):
        train(cfg)
    assert read_checkpoint(cfg.run_path / LATEST)["meta"]["step"] == 10
    assert read_checkpoint(cfg.run_path / BEST)["meta"]["step"] == 10
    monkeypatch.undo()
    end = train(cfg)  # the same command: resumes from step 10 and ends normally
    assert end.step == 20 and end.reason == "max_steps"
    kept = read_checkpoint(cfg.run_path / LATEST)["training"]["progress"]["checkpoints"]
    assert [e["step"] for e in kept] == [10, 20]


def test_non_finite_gradients_with_a_finite_loss_stop_training(tmp_path):
    trainer = Trainer(tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 20, "validate_every": 10}), [])
    calls = []

    def poison(grad):
        calls.append(1)
        return grad * float("nan") if len(calls) >= 12 else grad

    trainer.model.output.weight.register_hook(poison)
    with pytest.raises(TrainingError, match=r"diverged at step 12: the gradient norm is nan; .* the last sound "
                                            r"checkpoint .*step-00000010.pt is kept"):
        trainer.run()
    assert read_checkpoint(tmp_path / "run" / LATEST)["meta"]["step"] == 10


def test_a_diverged_dev_loss_is_not_saved_as_best(tmp_path, monkeypatch):
    from mtcli import training
    cfg = tiny_config("seq2seq", tmp_path / "run", train={"max_steps": 20, "validate_every": 10,
                                                          "best_metric": "loss"})
    real, calls = training.dev_loss, []

    def dev_loss(*args):
        calls.append(1)
        return float("nan") if len(calls) == 2 else real(*args)

    monkeypatch.setattr(training, "dev_loss", dev_loss)
    with pytest.raises(TrainingError, match="diverged at step 20: on the dev set the loss per target token is nan"):
        train(cfg)
    assert read_checkpoint(cfg.run_path / BEST)["meta"]["step"] == 10
    assert read_checkpoint(cfg.run_path / LATEST)["meta"]["step"] == 10


# ---------------------------------------------------------------- signals


def test_sigint_during_a_validation_is_acknowledged_at_once(tmp_path, monkeypatch, capfd, write_yaml):
    config = write_yaml(tiny_dict("seq2seq", tmp_path / "run", train={"max_steps": 100, "validate_every": 10}))
    real, said = Trainer._dev_scores, []

    def slow_validation(self):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the dev set is being translated ...
        said.append(capfd.readouterr().err)  # ... is answered before the validation goes on
        return real(self)

    monkeypatch.setattr(Trainer, "_dev_scores", slow_validation)
    result = invoke("train", config)
    assert result.exit_code == 130, result.output
    assert "SIGINT: stopping after the update or validation under way, with a final checkpoint" in said[0]
    assert "stopped by SIGINT at step 11" in result.stderr
    assert read_checkpoint(tmp_path / "run" / LATEST)["meta"]["step"] == 11
    assert len(said) == 1  # the stop came at the next update, not after another validation


def test_torch_writer_error_without_an_oserror_still_names_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "statvfs", lambda path: type("S", (), {"f_bavail": 0})())
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert files.failure_cause(error, tmp_path) == ENOSPC
    assert files.is_write_failure(error) and not files.is_write_failure(RuntimeError("shape mismatch"))


def test_atomic_save_of_torch_reports_the_disk_and_keeps_the_old_file(tmp_path, monkeypatch):
    from mtcli.checkpoint import atomic_save
    target = tmp_path / "c.pt"
    atomic_save({"w": torch.ones(3)}, target)
    FullDisk(monkeypatch, room=300)
    with pytest.raises(WriteError, match=rf"c.pt: cannot write \({ENOSPC}\)"):
        atomic_save({"w": torch.zeros(100_000)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_fetched_data_on_a_full_disk_is_one_line_and_keeps_what_is_there(tmp_path, monkeypatch):
    from mtcli.data.fetch import fetch_multi30k
    from tests.test_fetch import tiny_corpus

    checksums = tiny_corpus(tmp_path / "from")
    dest = tmp_path / "dest"
    fetch_multi30k(dest, ("de", "en"), tmp_path / "from", checksums=checksums)
    (dest / "val.en").write_text("an older copy\n")  # a wrong checksum: fetched again
    FullDisk(monkeypatch, room=10, only="val.en")
    with pytest.raises(WriteError, match=rf"dest/val.en: cannot write \({ENOSPC}\)$"):
        fetch_multi30k(dest, ("de", "en"), tmp_path / "from", checksums=checksums)
    assert (dest / "val.en").read_text() == "an older copy\n" and not list(dest.glob(".*.tmp"))


def test_data_fetch_checks_its_folder_before_fetching(tmp_path, monkeypatch):
    monkeypatch.setattr("mtcli.data.fetch.fetch_multi30k", lambda *a, **k: pytest.fail("the fetch started"))
    (tmp_path / "file").write_text("x")
    one_line_error(invoke("data", "fetch", "multi30k", tmp_path / "file", "--from", tmp_path),
                   f"{tmp_path / 'file'}: cannot write (it is a file, not a folder)")
    read_only(monkeypatch, tmp_path / "ro")
    one_line_error(invoke("data", "fetch", "multi30k", tmp_path / "ro", "--from", tmp_path),
                   f"{tmp_path / 'ro'}: cannot write (Read-only file system)")
