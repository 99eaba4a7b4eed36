"""Reading parallel text: the built-in toy pair or plain-text / TSV files named by the config.

Every problem with a file is a DataError naming the file (and the line where there is one).
Knows nothing of tokenizers or tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtcli.config import DataConfig
from mtcli.data.toy import toy_split
from mtcli.errors import DataError

SPLIT_KEYS = ("train", "dev", "test")


@dataclass(frozen=True)
class ParallelText:
    name: str  # where it came from, for messages
    src: list[str]
    tgt: list[str]
    alignments: list[str] | None = None  # gold 'i-j' links, toy data only

    def __len__(self) -> int:
        return len(self.src)


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file, without line endings."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a text file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {data[exc.start]:#04x})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return split_lines(text)


def split_lines(text: str) -> list[str]:
    """Lines split on newlines only (not on the other characters str.splitlines knows), CR removed."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_tsv(path: Path) -> ParallelText:
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns (source, target), found {len(fields)}")
        src.append(fields[0].strip())
        tgt.append(fields[1].strip())
    return ParallelText(str(path), src, tgt)


def read_pair(src_path: Path, tgt_path: Path) -> ParallelText:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{tgt_path}: {len(tgt)} lines, but {src_path} has {len(src)}: the files must be line-parallel")
    return ParallelText(f"{src_path} + {tgt_path}", [s.strip() for s in src], [t.strip() for t in tgt])


def split_files(cfg: DataConfig, split: str) -> list[Path]:
    """The file(s) holding one split: `<dir>/<name>.tsv` or `<dir>/<name>.<src_lang>` and `.<tgt_lang>`."""
    stem = Path(cfg.dir or ".") / getattr(cfg, split)
    if stem.suffix == ".tsv":
        return [stem]
    return [stem.with_name(f"{stem.name}.{cfg.src_lang}"), stem.with_name(f"{stem.name}.{cfg.tgt_lang}")]


def load_split(cfg: DataConfig, split: str) -> ParallelText:
    """`split` is one of train, dev, test."""
    assert split in SPLIT_KEYS
    if cfg.dir is None:
        pairs = toy_split(cfg.toy, split)
        return ParallelText(f"toy {split}", [p.src for p in pairs], [p.tgt for p in pairs],
                            [p.alignment_text() for p in pairs])
    files = split_files(cfg, split)
    return read_tsv(files[0]) if len(files) == 1 else read_pair(*files)
