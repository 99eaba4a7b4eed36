"""Writing files so that a failure never damages what is there and always reads as one line.

Every file mtcli writes goes through here: whole files through `atomic_write` (temporary file, fsync,
rename), log lines through `append_line` (the whole line or nothing), outputs checked up front with
`check_output_file` / `check_output_folder`, a folder held by one process with `folder_lock`. Any failure
(full disk, read-only file system, missing folder, permission; torch's writer reports a full disk as a
RuntimeError) becomes a WriteError: "PATH: cannot write (CAUSE)". Knows nothing of models or the terminal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mtcli.errors import FolderInUse, WriteError

try:
    import fcntl
except ImportError:  # Windows has no fcntl: there no folder lock is taken
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)

# torch.save reports a failed write as RuntimeError("... PytorchStreamWriter failed writing ...",
# "... unexpected pos N vs M"); the OSError behind it, when the writer had one, is in its __context__
_TORCH_WRITER = ("PytorchStreamWriter", "inline_container", "file write failed", "unexpected pos")


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, or one it was raised from or during), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_write_failure(exc: BaseException) -> bool:
    """An OSError, or torch's writer failing (which hides the OSError, or has none to give)."""
    if _os_error(exc) is not None:
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc) for mark in _TORCH_WRITER)


def failure_cause(exc: BaseException, folder: Path) -> str:
    """Why a write failed, in words: the OSError's, else a full disk if `folder`'s is, else torch's line."""
    os_error = _os_error(exc)
    if os_error is not None:
        return os_error.strerror or str(os_error)
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_bavail == 0:
            return os.strerror(errno.ENOSPC)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failure to write `path` inside the block into a WriteError naming it and the cause."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as exc:
        if not is_write_failure(exc):
            raise
        raise WriteError(path, failure_cause(exc, path.parent)) from None


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """`write` into a temporary file in `path`'s folder (created if missing), then rename.

    `path` only ever holds a complete file: a crash, a SIGKILL or a failed write leaves the previous file
    intact and at most a hidden `.NAME.*.tmp`; a failed write raises WriteError (after removing that file).
    """
    tmp = None
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; this is an ordinary file
            os.replace(tmp, path)
            _sync_folder(path.parent)
        except BaseException:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline: the whole line or nothing (a partial append is cut back off)."""
    data = (line + "\n").encode("utf-8")
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                done = 0
                while done < len(data):  # a short write means the disk filled: the next one says so
                    done += os.write(fd, data[done:])
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def _probe(folder: Path, path: Path) -> None:
    """Create and remove a file in `folder`: read-only, permission and vanished folders fail here."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)


def check_output_file(path: Path) -> Path:
    """Fail now, before any long work, if `path` cannot be written (its folder must exist)."""
    if path.is_dir():
        raise WriteError(path, "it is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise WriteError(path, f"{folder} is not a folder" if folder.exists() else f"no folder {folder}")
    _probe(folder, path)
    return path


def check_output_folder(folder: Path) -> Path:
    """Create `folder` (and its parents) if needed and check that files can be written in it."""
    if folder.exists() and not folder.is_dir():
        raise WriteError(folder, "it is a file, not a folder")
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    _probe(folder, folder / "probe")
    return folder


# ---------------------------------------------------------------- one process per folder


def describe_holder(holder: dict[str, Any]) -> str:
    """'mtcli train (process 123 on host, since 2026-11-22 10:00:00)' from a lock record."""
    what = holder.get("what") or "another process"
    who = " ".join(p for p in (f"process {holder['pid']}" if holder.get("pid") else "",
                               f"on {holder['host']}" if holder.get("host") else "") if p)
    where = ", ".join(p for p in (who, f"since {holder['since']}" if holder.get("since") else "") if p)
    return f"{what} ({where})" if where else what


def _record(what: str) -> dict[str, Any]:
    return {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_record(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        record = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError):
        record = {"what": "an unknown process"}
    return record if isinstance(record, dict) else {"what": "an unknown process"}


def _take(path: Path, hint: str) -> tuple[int, dict[str, Any]]:
    """Open and lock `path` (exclusively, without waiting); returns the fd and the record found in it."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_record(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                message = f"{path.parent}: in use by {describe_holder(holder)}" + (f"; {hint}" if hint else "")
                raise FolderInUse(path.parent, holder, message) from None
            raise
        try:  # the previous holder may have removed the file between our open and our lock: retry
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, _read_record(fd)
        os.close(fd)
    raise WriteError(path, "the lock file keeps being replaced by another process")


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, hint: str = "", name: str = ".lock") -> Iterator[dict[str, Any] | None]:
    """Hold `folder/name` for the block, so that one process at a time works in `folder`.

    `what` names the holder in its record (e.g. "mtcli train"). A second process gets FolderInUse naming
    the holder, then `hint`. The lock is the operating system's (flock): it
    ends with its process however that process ends, so a lock left by a killed process is taken over;
    the block then receives that process's record (a clean exit removes the file), else None.
    Creates `folder` if needed; a folder that cannot be written is a WriteError here, before any work.
    """
    path = folder / name
    with writing(path):
        folder.mkdir(parents=True, exist_ok=True)
        taken = _take(path, hint) if fcntl is not None else None
    if taken is None:
        yield None
        return
    fd, previous = taken
    try:
        with writing(path):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(_record(what)).encode("utf-8"))
        yield previous or None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiting opener then sees a new file (checked in _take)
        os.close(fd)
