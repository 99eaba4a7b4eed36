"""Reading parallel text: the built-in toy pair or plain-text / TSV files (plain or gzip) named by the config.

Training corpora are streamed in chunks of lines, so a corpus of any size passes through bounded memory;
dev and test sets are read whole. Every problem with a file is a DataError naming the file (and the line
where there is one). Knows nothing of tokenizers or tensors.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mtcli.config import CorpusConfig, DataConfig
from mtcli.data.toy import toy_split
from mtcli.errors import DataError
from mtcli.inputs import open_input

SPLIT_KEYS = ("train", "dev", "test")
CHUNK_LINES = 100_000


@dataclass(frozen=True)
class ParallelText:
    name: str  # where it came from, for messages
    src: list[str]
    tgt: list[str]
    alignments: list[str] | None = None  # gold 'i-j' links, toy data only

    def __len__(self) -> int:
        return len(self.src)


# ---------------------------------------------------------------- files, line by line


def _decode(block: bytes, path: Path, first_line: int) -> list[str]:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + block.count(b"\n", 0, exc.start)
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {block[exc.start]:#04x})") from None
    lines = text.split("\n")  # newlines only, not the other characters str.splitlines knows
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


class LineReader:
    """The lines of a UTF-8 text file (plain or .gz), in chunks, without line endings."""

    def __init__(self, path: Path, chunk_lines: int = CHUNK_LINES):
        self.path, self.chunk_lines = path, chunk_lines
        self.handle = open_input(path)
        self.raw = getattr(self.handle, "fileobj", self.handle)  # the compressed stream of a .gz file
        self.lines = 0

    def __iter__(self) -> Iterator[list[str]]:
        try:
            with self.handle:
                while raw := list(itertools.islice(self.handle, self.chunk_lines)):
                    chunk = _decode(b"".join(raw), self.path, self.lines + 1)
                    self.lines += len(raw)
                    yield chunk
        except (OSError, EOFError) as exc:  # a damaged gzip stream, a read error
            raise DataError(f"{self.path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None

    def position(self) -> int:
        """Bytes of the file read so far (compressed bytes for .gz)."""
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file (plain or .gz), without line endings."""
    lines = [line for chunk in LineReader(path) for line in chunk]
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: file is empty")
    return lines


def _tsv_fields(lines: list[str], path: Path, first_line: int) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for number, line in enumerate(lines, start=first_line):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns (source, target), found {len(fields)}")
        src.append(fields[0])
        tgt.append(fields[1])
    return src, tgt


# ---------------------------------------------------------------- corpora


def _is_tsv(path: Path) -> bool:
    return path.name.endswith((".tsv", ".tsv.gz"))


def _existing(path: Path) -> Path:
    """`path`, or `path.gz` where only the compressed file is there."""
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and gz.is_file() else path


def stem_files(cfg: DataConfig, stem_name: str) -> list[Path]:
    """`<dir>/<stem>.tsv[.gz]`, or `<dir>/<stem>.<src_lang>` and `.<tgt_lang>` (each plain or .gz)."""
    stem = Path(cfg.dir or ".") / stem_name
    if _is_tsv(stem):
        return [stem]
    return [_existing(stem.with_name(f"{stem.name}.{lang}")) for lang in (cfg.src_lang, cfg.tgt_lang)]


def split_files(cfg: DataConfig, split: str) -> list[Path]:
    """The file(s) holding one split; every training corpus's files for train."""
    if split == "train":
        return [path for corpus in cfg.corpora for path in stem_files(cfg, corpus.name)]
    return stem_files(cfg, getattr(cfg, split))


@dataclass(frozen=True)
class CorpusSource:
    """One training corpus as a stream of stripped (source, target) lines, chunk by chunk."""

    cfg: DataConfig
    corpus: CorpusConfig

    @property
    def files(self) -> list[Path]:
        return [] if self.cfg.dir is None else stem_files(self.cfg, self.corpus.name)

    @property
    def label(self) -> str:
        return "toy train" if self.cfg.dir is None else " + ".join(map(str, self.files))

    def identity(self) -> dict:
        """What decides the corpus's content: the toy settings, or each file's path, size and modification time."""
        if self.cfg.dir is None:
            return {"toy": vars(self.cfg.toy)}
        stats = []
        for path in self.files:
            try:
                st = path.stat()
            except OSError:
                raise DataError(f"{path}: no such file") from None
            if not path.is_file():
                raise DataError(f"{path}: is a folder, expected a text file")
            stats.append({"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return {"files": stats}

    def plain_files(self) -> bool:
        """Uncompressed one-sentence-per-line files (sentencepiece can read them itself)."""
        return bool(self.files) and not any(p.suffix == ".gz" or _is_tsv(p) for p in self.files)

    def size(self) -> int:
        """Bytes to read (for progress); the number of pairs for the toy pair."""
        if self.cfg.dir is None:
            return self.cfg.toy.train_size
        return sum(os.path.getsize(p) for p in self.files)

    def chunks(self, chunk_lines: int = CHUNK_LINES) -> Iterator[tuple[list[str], list[str], int]]:
        """(source lines, target lines, progress in the unit of `size`) per chunk, stripped."""
        if self.cfg.dir is None:
            pairs = toy_split(self.cfg.toy, "train")
            for start in range(0, len(pairs), chunk_lines):
                part = pairs[start: start + chunk_lines]
                yield [p.src for p in part], [p.tgt for p in part], start + len(part)
            return
        files = self.files
        if len(files) == 1:
            reader = LineReader(files[0], chunk_lines)
            for chunk in reader:
                src, tgt = _tsv_fields(chunk, files[0], reader.lines - len(chunk) + 1)
                yield _strip(src), _strip(tgt), reader.position()
            return
        yield from self._paired(*files, chunk_lines)

    def _paired(self, src_path: Path, tgt_path: Path, chunk_lines: int
                ) -> Iterator[tuple[list[str], list[str], int]]:
        src_reader, tgt_reader = LineReader(src_path, chunk_lines), LineReader(tgt_path, chunk_lines)
        src_chunks, tgt_chunks = iter(src_reader), iter(tgt_reader)
        for src in src_chunks:
            tgt = next(tgt_chunks, [])
            if len(tgt) != len(src):
                break
            yield _strip(src), _strip(tgt), src_reader.position() + tgt_reader.position()
        else:
            if next(tgt_chunks, None) is None:
                return
        for _ in itertools.chain(src_chunks, tgt_chunks):  # count the rest of both for the message
            pass
        _mismatch(src_path, src_reader.lines, tgt_path, tgt_reader.lines)


def _strip(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines]


def _mismatch(src_path: Path, src_lines: int, tgt_path: Path, tgt_lines: int) -> None:
    raise DataError(f"{tgt_path}: {tgt_lines} lines, but {src_path} has {src_lines}: the files must be line-parallel")


def train_sources(cfg: DataConfig) -> list[CorpusSource]:
    return [CorpusSource(cfg, corpus) for corpus in cfg.corpora]


# ---------------------------------------------------------------- whole splits (dev, test)


def read_tsv(path: Path) -> ParallelText:
    src, tgt = _tsv_fields(read_lines(path), path, 1)
    return ParallelText(str(path), _strip(src), _strip(tgt))


def read_pair(src_path: Path, tgt_path: Path) -> ParallelText:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        _mismatch(src_path, len(src), tgt_path, len(tgt))
    return ParallelText(f"{src_path} + {tgt_path}", _strip(src), _strip(tgt))


def load_split(cfg: DataConfig, split: str) -> ParallelText:
    """`split` is one of dev, test, or train (whole, in memory: for small corpora and reports only)."""
    assert split in SPLIT_KEYS
    if cfg.dir is None:
        pairs = toy_split(cfg.toy, split)
        return ParallelText(f"toy {split}", [p.src for p in pairs], [p.tgt for p in pairs],
                            [p.alignment_text() for p in pairs])
    if split == "train" and len(cfg.corpora) > 1:
        raise DataError("data.train names several corpora: read them with train_sources")
    files = stem_files(cfg, cfg.corpora[0].name if split == "train" else getattr(cfg, split))
    return read_tsv(files[0]) if len(files) == 1 else read_pair(*files)
