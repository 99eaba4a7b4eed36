"""Getting Multi30k (task 1, raw cased text) into a data folder: from its public files or from local ones.

Each file is checked against the SHA-256 of its decompressed text before it is written (atomically)
under the name mtcli's configs read: `<split>.<lang>` with the splits train, val, test2016. Downloads
(any URL urllib opens: https, http, file) are kept in a cache, so a second fetch reads no network.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mtcli.errors import DataError
from mtcli.files import atomic_write_bytes

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_LANGS = ("de", "en", "fr", "cs")
# mtcli's split name -> the file stem in the Multi30k repository
MULTI30K_SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}
# SHA-256 of the decompressed raw files (29,000 / 1,014 / 1,000 lines)
MULTI30K_SHA256 = {
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "val.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "test2016.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test2016.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test2016.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "test2016.cs": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
}


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtcli" / "multi30k"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _text(data: bytes, origin: str) -> bytes:
    """The raw text of a file that may be gzip-compressed."""
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{origin}: not a readable gzip file ({exc})") from None
    return data


def _check(name: str, text: bytes, origin: str, checksums: dict[str, str]) -> None:
    expected, got = checksums[name], sha256_bytes(text)
    if got != expected:
        raise DataError(f"{origin}: checksum mismatch for {name} (sha256 {got[:16]}..., expected "
                        f"{expected[:16]}...): a damaged download or a different version of the file")


def _download(url: str, cache: Path) -> bytes:
    """The bytes at `url`, from the cache when a previous download left them there."""
    cached = cache / url.rstrip("/").rsplit("/", 1)[-1]
    if cached.is_file():
        return cached.read_bytes()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"{url}: download failed ({reason}); without network, use --from DIR with the "
                        "files") from None
    atomic_write_bytes(cached, data)
    return data


def _local(source: Path, split: str, lang: str) -> tuple[bytes, str]:
    """A file from a local folder, under mtcli's name or the repository's, plain or .gz."""
    stems = [split, MULTI30K_SPLITS[split]]
    for stem in stems:
        for suffix in ("", ".gz"):
            path = source / f"{stem}.{lang}{suffix}"
            if path.is_file():
                return path.read_bytes(), str(path)
    raise DataError(f"{source}: no {split}.{lang} (nor {MULTI30K_SPLITS[split]}.{lang}, plain or .gz) "
                    "in this folder")


def fetch_multi30k(dest: Path, langs: tuple[str, ...] = ("de", "en"), source: Path | None = None,
                   base_url: str = MULTI30K_URL, cache: Path | None = None,
                   checksums: dict[str, str] | None = None,
                   report: Callable[[str], None] = lambda line: None) -> list[Path]:
    """Put `<split>.<lang>` for the three splits and the given languages into `dest`, checked.

    With `source`, the files come from that folder (offline); else from `base_url` through the cache.
    Files already in `dest` with the right checksum are left alone. Returns the files in `dest`.
    """
    checksums = MULTI30K_SHA256 if checksums is None else checksums
    unknown = [lang for lang in langs if lang not in MULTI30K_LANGS]
    if unknown:
        raise DataError(f"--langs: {', '.join(unknown)}: Multi30k has {', '.join(MULTI30K_LANGS)}")
    if source is not None and not source.is_dir():
        raise DataError(f"--from {source}: no such folder")
    cache = cache or default_cache()
    written = []
    for split, remote in MULTI30K_SPLITS.items():
        for lang in langs:
            name, target = f"{split}.{lang}", dest / f"{split}.{lang}"
            if target.is_file() and sha256_bytes(target.read_bytes()) == checksums[name]:
                report(f"{target}: already there, checksum ok")
                written.append(target)
                continue
            if source is not None:
                data, origin = _local(source, split, lang)
            else:
                origin = base_url.rstrip("/") + f"/{remote}.{lang}.gz"
                data = _download(origin, cache)
            try:
                text = _text(data, origin)
                _check(name, text, origin, checksums)
            except DataError:
                if source is None:  # do not keep a bad download in the cache
                    (cache / origin.rsplit("/", 1)[-1]).unlink(missing_ok=True)
                raise
            try:
                atomic_write_bytes(target, text)
            except OSError as exc:
                raise DataError(f"{target}: cannot write ({exc.strerror or exc})") from None
            lines = text.count(b"\n")
            report(f"{target}: {lines:,} lines from {origin}, checksum ok")
            written.append(target)
    return written

