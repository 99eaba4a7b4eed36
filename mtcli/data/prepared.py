"""Prepared data, made once: the tokenizers and every training corpus's token ids, kept in a cache folder.

An entry is keyed by a fingerprint of everything that decides its content, written into a temporary
folder and renamed into place when complete, so an interrupted preparation is never taken for a finished
one; a file lock makes concurrent preparations of the same entry (torchrun processes, two runs) wait for
the first. Token ids lie in flat files read through numpy memory maps. Knows nothing of models or batches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtcli.config import DataConfig
from mtcli.data.corpus import CorpusSource
from mtcli.data.tokenizers import SentencePieceTokenizer, Tokenizer, WhitespaceTokenizer, tokenizer_from_state
from mtcli.errors import DataError

FORMAT = "mtcli-prepared-1"  # change when the layout or the encoding rules change: old entries are then missed
META = "meta.json"  # written last: an entry folder is complete when it has one
SPM_SEED = 1  # sentencepiece's input sampling; the vocabulary does not depend on the training seed

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


def cache_root(cfg: DataConfig) -> Path:
    """data.cache_dir, else $MTCLI_CACHE, else $XDG_CACHE_HOME/mtcli/prepared (~/.cache/mtcli/prepared)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get("MTCLI_CACHE"):
        return Path(os.environ["MTCLI_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtcli" / "prepared"


def fingerprint(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    state = tokenizer.state()
    payload = state["model"] if state["kind"] == "sentencepiece" else json.dumps(state["vocab"]).encode()
    return hashlib.sha256(state["kind"].encode() + b"\0" + payload).hexdigest()[:20]


# ---------------------------------------------------------------- cache entries


def _write_error(path: Path, exc: OSError) -> DataError:
    return DataError(f"{path}: cannot write the prepared data ({exc.strerror or exc}); free space or set "
                     "data.cache_dir (or MTCLI_CACHE) to a writable folder")


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on the entry `name` (released by the kernel if the holder dies)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(root, exc) from None
    path = root / f".{name}.lock"
    try:
        handle = path.open("a")
    except OSError as exc:
        raise _write_error(path, exc) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cached(root: Path, name: str, build: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
    """The complete entry `root/name`: (folder, its meta, whether it was there already).

    If missing, `build(folder)` writes the entry's files into a temporary folder and returns its meta,
    which is written last; then the folder is renamed into place.
    """
    final = root / name
    if (final / META).is_file():
        return final, read_meta(final), True
    with _locked(root, name):
        if (final / META).is_file():  # another process made it while this one waited
            return final, read_meta(final), True
        for stale in itertools.chain(root.glob(f".{name}.tmp-*"), [final]):  # left by a killed preparation
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            meta = build(tmp)
            _write_json(tmp / META, meta)
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(Path(exc.filename or tmp), exc) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, meta, False


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META).read_text(encoding="utf-8"))


def _write_json(path: Path, data: dict) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _write_array(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------- tokenizers


def save_tokenizers(folder: Path, src: Tokenizer, tgt: Tokenizer) -> None:
    for side, tok in (("src", src), ("tgt", tgt)):
        state = tok.state()
        if state["kind"] == "sentencepiece":
            (folder / f"{side}.model").write_bytes(state["model"])
        else:
            _write_json(folder / f"{side}.vocab.json", state)


def load_tokenizers(folder: Path) -> tuple[Tokenizer, Tokenizer]:
    def one(side: str) -> Tokenizer:
        model = folder / f"{side}.model"
        if model.is_file():
            return SentencePieceTokenizer(model.read_bytes())
        return tokenizer_from_state(json.loads((folder / f"{side}.vocab.json").read_text(encoding="utf-8")))

    src, tgt = one("src"), one("tgt")
    return (src, src) if tokenizer_hash(src) == tokenizer_hash(tgt) else (src, tgt)


def _sentences(sources: list[CorpusSource], sides: tuple[int, ...]) -> Iterator[str]:
    for source in sources:
        for chunk in source.chunks():
            for side in sides:
                yield from (line for line in chunk[side] if line)


def _train_tokenizer(cfg: DataConfig, sources: list[CorpusSource], sides: tuple[int, ...]) -> Tokenizer:
    if cfg.tokenizer == "whitespace":
        return WhitespaceTokenizer.train(_sentences(sources, sides), cfg.vocab_size)
    plain = all(source.plain_files() for source in sources)
    files = [source.files[side] for source in sources for side in sides] if plain else []
    return SentencePieceTokenizer.train(None if plain else _sentences(sources, sides), cfg.vocab_size,
                                        cfg.spm_type, SPM_SEED, files=files, sample=cfg.spm_sample)


def vocabulary_key(cfg: DataConfig, sources: list[CorpusSource]) -> dict:
    return {"format": FORMAT, "kind": "vocabulary", "tokenizer": cfg.tokenizer, "vocab_size": cfg.vocab_size,
            "joint_vocab": cfg.joint_vocab,
            **({"spm_type": cfg.spm_type, "spm_sample": cfg.spm_sample} if cfg.tokenizer == "sentencepiece" else {}),
            "corpora": [source.identity() for source in sources]}


def prepare_tokenizers(cfg: DataConfig, sources: list[CorpusSource], progress: Progress = _no_progress
                       ) -> tuple[Tokenizer, Tokenizer, bool]:
    """The tokenizers trained on the training corpora (both sides for a joint vocabulary), from the cache
    when they were made before. Returns them and whether the cache had them."""
    key = vocabulary_key(cfg, sources)

    def build(folder: Path) -> dict:
        progress(f"training the {cfg.tokenizer} vocabulary", 0, 1)
        start = time.perf_counter()
        if cfg.joint_vocab:
            src = tgt = _train_tokenizer(cfg, sources, (0, 1))
        else:
            src, tgt = _train_tokenizer(cfg, sources, (0,)), _train_tokenizer(cfg, sources, (1,))
        save_tokenizers(folder, src, tgt)
        progress(f"training the {cfg.tokenizer} vocabulary", 1, 1)
        return {"key": key, "seconds": round(time.perf_counter() - start, 2)}

    folder, _, hit = cached(cache_root(cfg), f"vocabulary-{fingerprint(key)}", build)
    return (*load_tokenizers(folder), hit)


# ---------------------------------------------------------------- corpora: token ids on disk


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def length_dtype(max_len: int) -> np.dtype:
    return np.dtype(np.uint8 if max_len < 1 << 8 else np.uint16 if max_len < 1 << 16 else np.uint32)


@dataclass
class PreparedCorpus:
    """One corpus's pairs, memory-mapped: ids of pair i are src[src_offsets[i]: src_offsets[i] + src_len[i]]."""

    folder: Path
    meta: dict
    src: np.ndarray
    tgt: np.ndarray
    src_offsets: np.ndarray  # (n + 1,) int64
    tgt_offsets: np.ndarray
    src_len: np.ndarray  # (n,) tokens, EOS not counted
    tgt_len: np.ndarray
    order: np.ndarray  # (n,) uint32: pairs sorted by (pair length, source length)
    groups: np.ndarray  # (G, 3) int64: pair length, source length, first position in `order` of each run

    def __len__(self) -> int:
        return len(self.src_len)

    @classmethod
    def open(cls, folder: Path, meta: dict) -> PreparedCorpus:
        def array(name: str) -> np.ndarray:
            return np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r"))

        def tokens(side: str) -> np.ndarray:
            if not os.path.getsize(folder / f"{side}.bin"):  # numpy cannot map an empty file
                return np.zeros(0, meta["token_dtype"])
            return np.asarray(np.memmap(folder / f"{side}.bin", dtype=meta["token_dtype"], mode="r"))

        return cls(folder, meta, tokens("src"), tokens("tgt"), array("src_offsets"), array("tgt_offsets"),
                   array("src_len"), array("tgt_len"), array("order"), np.load(folder / "groups.npy"))


def corpus_key(cfg: DataConfig, source: CorpusSource, src_tok: Tokenizer, tgt_tok: Tokenizer) -> dict:
    return {"format": FORMAT, "kind": "corpus", "source": source.identity(), "max_len": cfg.max_len,
            "tokenizers": [tokenizer_hash(src_tok), tokenizer_hash(tgt_tok)]}


def _ids(tokenizer: Tokenizer, lines: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids and lengths of `lines`."""
    encoded = tokenizer.encode_batch(lines)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def sorted_runs(pair_len: np.ndarray, src_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair indices sorted by (pair length, source length), stable, and the runs of equal keys in that order:
    (order, groups) with groups[g] = (pair length, source length, start of the run)."""
    key = pair_len.astype(np.int64) << 32 | src_len.astype(np.int64)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, np.int64)
    groups = np.stack([ordered[starts] >> 32, ordered[starts] & 0xFFFFFFFF, starts], axis=1).astype(np.int64)
    return order.astype(np.uint32), groups.reshape(-1, 3)


def _encode_corpus(folder: Path, cfg: DataConfig, source: CorpusSource, src_tok: Tokenizer, tgt_tok: Tokenizer,
                   progress: Progress, stage: str) -> dict:
    dtype = token_dtype(max(src_tok.vocab_size, tgt_tok.vocab_size))
    lengths: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    empty = long = lines = 0
    total = source.size()
    with (folder / "src.bin").open("wb") as src_bin, (folder / "tgt.bin").open("wb") as tgt_bin:
        for src, tgt, done in source.chunks():
            lines += len(src)
            keep = [i for i, (s, t) in enumerate(zip(src, tgt)) if s and t]
            empty += len(src) - len(keep)
            (s_ids, s_len), (t_ids, t_len) = (_ids(src_tok, [src[i] for i in keep], dtype),
                                              _ids(tgt_tok, [tgt[i] for i in keep], dtype))
            fits = (s_len <= cfg.max_len) & (t_len <= cfg.max_len)
            long += int((~fits).sum())
            for handle, ids, side_len, side in ((src_bin, s_ids, s_len, "src"), (tgt_bin, t_ids, t_len, "tgt")):
                handle.write(ids[np.repeat(fits, side_len)].tobytes())
                lengths[side].append(side_len[fits])
            progress(stage, done, total)
        for handle in (src_bin, tgt_bin):
            handle.flush()
            os.fsync(handle.fileno())
    if not lines:
        raise DataError(f"{source.label}: no lines (empty file)")
    src_len, tgt_len = (np.concatenate(lengths[s]) for s in ("src", "tgt"))
    for side, side_len in (("src", src_len), ("tgt", tgt_len)):
        _write_array(folder / f"{side}_len.npy", side_len.astype(length_dtype(cfg.max_len)))
        _write_array(folder / f"{side}_offsets.npy", np.r_[0, np.cumsum(side_len)].astype(np.int64))
    order, groups = sorted_runs(np.maximum(src_len, tgt_len) + 1, src_len + 1)
    _write_array(folder / "order.npy", order)
    _write_array(folder / "groups.npy", groups)
    return {"label": source.label, "lines": lines, "pairs": len(src_len), "dropped_empty": empty,
            "dropped_long": long, "token_dtype": dtype.name}


def prepare_corpus(cfg: DataConfig, source: CorpusSource, src_tok: Tokenizer, tgt_tok: Tokenizer,
                   progress: Progress = _no_progress) -> tuple[PreparedCorpus, bool]:
    """The corpus's token ids, encoded now or found in the cache (then the bool is True)."""
    key = corpus_key(cfg, source, src_tok, tgt_tok)
    stage = f"encoding {source.label}"

    def build(folder: Path) -> dict:
        start = time.perf_counter()
        meta = _encode_corpus(folder, cfg, source, src_tok, tgt_tok, progress, stage)
        return {**meta, "key": key, "seconds": round(time.perf_counter() - start, 2)}

    folder, meta, hit = cached(cache_root(cfg), f"corpus-{fingerprint(key)}", build)
    return PreparedCorpus.open(folder, meta), hit
