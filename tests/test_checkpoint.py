import os
import pickle
import random
import subprocess
import sys

import pytest
import torch

from mtcli.checkpoint import BEST, atomic_save, load_checkpoint, resolve_checkpoint
from mtcli.errors import CheckpointError
from mtcli.inference import decode_request, translator
from mtcli.training import train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    train(tiny_config("attention", run_dir, train={"max_steps": 10, "validate_every": 10}))
    return run_dir


def test_saved_and_reloaded_checkpoint_translates_identically(trained_run):
    first = load_checkpoint(trained_run / BEST)
    second = load_checkpoint(trained_run / BEST)
    sentences = ["the dog sees a cat", "every small bird sleeps", "two kings"]
    out1 = translator(first, decode_request(first.config.decode, beam=3)).translate(sentences)
    out2 = translator(second, decode_request(second.config.decode, beam=3)).translate(sentences)
    assert [t.text for t in out1] == [t.text for t in out2]
    assert [t.score for t in out1] == [t.score for t in out2]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_is_self_contained(trained_run, tmp_path):
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes((trained_run / BEST).read_bytes())
    bundle = load_checkpoint(moved)
    assert bundle.config.model.backend == "attention"
    assert bundle.src_tokenizer.vocab_size > 10 and bundle.meta["step"] == 10


def test_resolve_run_folder_file_and_newest_run(trained_run, tmp_path):
    assert resolve_checkpoint(trained_run) == trained_run / BEST
    assert resolve_checkpoint(trained_run / BEST) == trained_run / BEST
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "new").mkdir()
    (runs / "old" / BEST).write_bytes(b"x")
    (runs / "new" / BEST).write_bytes(b"y")
    os.utime(runs / "old" / BEST, (1, 1))
    assert resolve_checkpoint(None, runs) == runs / "new" / BEST
    with pytest.raises(CheckpointError, match="no trained run found"):
        resolve_checkpoint(None, tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no such checkpoint or run folder"):
        resolve_checkpoint(tmp_path / "missing")


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle-2", "pickle-highest", "torch.save"])
def test_checkpoint_with_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = Payload()
    payload.marker = marker
    path = tmp_path / "evil.pt"
    data = {"format": "mtcli-checkpoint-1", "model": payload}
    if writer == "torch.save":
        torch.save(data, path)
    else:
        with path.open("wb") as f:
            pickle.dump(data, f, protocol=2 if writer == "pickle-2" else pickle.HIGHEST_PROTOCOL)
    pickle.loads(pickle.dumps(payload))  # the payload is live: plain unpickling would run it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"evil.pt: refused to load: it asks for posix.system, which is not "
                                              r"tensors or plain data .*; mtcli never runs code from a checkpoint$"):
        load_checkpoint(path)
    assert not marker.exists()  # ... loading the checkpoint did not


def test_damaged_and_foreign_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt: not a readable checkpoint \(an empty file\)"):
        load_checkpoint(tmp_path / "empty.pt")
    # bytes that are no pickle at all are damaged or foreign, not "code": torch's reason is kept
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk.pt: not a readable checkpoint: damaged, or not a file torch.save "
                                              r"wrote \(Unsupported operand \d+\)$"):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "random.pt").write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(CheckpointError, match=r"random.pt: not a readable checkpoint: damaged, or not a file "
                                              r"torch.save wrote \(Unsupported operand \d+\)$"):
        load_checkpoint(tmp_path / "random.pt")
    good = tmp_path / "good.pt"
    torch.save({"weights": torch.zeros(1000)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable checkpoint: damaged, or not a file torch.save "
                                              r"wrote \(PytorchStreamReader failed "):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an mtcli checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_refused_checkpoint_is_one_line_on_stderr_without_torch_warnings(tmp_path):
    """torch warns about the pickle protocol before it refuses (pytest's filter hides that: a real process)."""
    path = tmp_path / "evil.pt"
    payload = Payload()
    payload.marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"model": payload}, protocol=pickle.HIGHEST_PROTOCOL))
    out = subprocess.run([sys.executable, "-m", "mtcli", "evaluate", str(path)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"error: {path}: refused to load: it asks for posix.system")
    assert out.stderr.count("\n") == 1 and "Warning" not in out.stderr, out.stderr
    assert not payload.marker.exists()


def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(3)}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"a": torch.zeros(3), "b": Boom()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(3))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind
