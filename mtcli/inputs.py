"""Text to translate, from an argument, a file or a stream (stdin): checked as UTF-8 the same way whatever its
source (one DataError naming the source, line and byte), and read from a stream in chunks as lines arrive.

Knows nothing of models or of the terminal.
"""

from __future__ import annotations

import gzip
import io
import os
import select
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mtcli.errors import DataError

READ_BYTES = 1 << 16


def _decode(raw: bytes, where: str) -> str:
    """One line's bytes as text, without a trailing CR; `where` is 'SOURCE:LINE' or 'SOURCE'."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not valid UTF-8 at byte {exc.start + 1} ({raw[exc.start]:#04x})") from None
    return text.removesuffix("\r")


def argument_text(text: str, source: str = "argument") -> str:
    """A command-line argument: the system hands undecodable bytes over as surrogate escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise DataError(f"{source}: not valid text at character {exc.start + 1}") from None
    return _decode(raw, source)


def open_input(path: Path) -> BinaryIO:
    """A text file opened for reading bytes (decompressed if it ends in .gz); a missing file, a folder or
    a file that cannot be read is a one-line DataError."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a text file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle


def file_lines(path: Path) -> list[str]:
    """Every line of a UTF-8 text file (plain or .gz), read and checked before anything is translated."""
    try:
        with open_input(path) as handle:
            data = handle.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [_decode(line, f"{path}:{number}") for number, line in enumerate(lines, start=1)]


def chunks(lines: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(lines), size):
        yield lines[start: start + size]


def _fileno(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both: an in-memory stream
        return None


def _waiting(fd: int | None) -> bool:
    """More input can be read without waiting (always, for a stream without a file descriptor)."""
    return fd is None or bool(select.select([fd], [], [], 0)[0])


def stream_chunks(stream: BinaryIO, source: str, size: int, prompt: Callable[[], None] | None = None
                  ) -> Iterator[list[str]]:
    """The lines of `stream` in chunks of at most `size`. A chunk ends early when no more input is waiting, so
    lines typed or piped one at a time are answered at once while a file or a fast pipe fills whole chunks.
    `prompt` is called before waiting for a line at an empty queue (interactive use)."""
    fd = _fileno(stream)
    queue: deque[bytes] = deque()
    tail, number, chunk, ended = b"", 0, [], False
    while True:
        while queue and len(chunk) < size:
            number += 1
            chunk.append(_decode(queue.popleft(), f"{source}:{number}"))
        if chunk and (len(chunk) >= size or ended or not _waiting(fd)):
            yield chunk
            chunk = []
            continue
        if ended:
            return
        if prompt is not None and not queue and not chunk:
            prompt()
        data = os.read(fd, READ_BYTES) if fd is not None else stream.read(READ_BYTES)
        if not data:
            ended = True
            queue.extend([tail] if tail else [])
            continue
        parts = (tail + data).split(b"\n")
        tail = parts.pop()
        queue.extend(parts)


def binary_stdin(stream: io.TextIOBase) -> BinaryIO:
    """The bytes under a text stream (sys.stdin), or the stream itself if it has none."""
    return getattr(stream, "buffer", stream)  # type: ignore[return-value]
