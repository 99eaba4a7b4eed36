"""Prepared data: made once, found again, missed when its content would differ, never half-trusted."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtcli import distributed
from mtcli.checkpoint import LATEST, read_checkpoint
from mtcli.cli import app
from mtcli.config import CorpusConfig, DataConfig
from mtcli.data import prepared
from mtcli.data.batching import LengthRuns, plan_epoch
from mtcli.data.dataset import prepare_data
from mtcli.data.tokenizers import EOS
from mtcli.errors import ConfigError, DataError
from mtcli.training import Trainer, train
from tests.conftest import tiny_config

WORDS = "a small dog sees two red birds near the river and every cat sleeps".split()


def write_corpus(folder: Path, n: int, stem: str = "train", seed: int = 0) -> None:
    """n pairs: source words and their reversal (target), lengths 1..8."""
    rng = np.random.default_rng(seed)
    src = [" ".join(rng.choice(WORDS, size=1 + i % 8)) for i in range(n)]
    (folder / f"{stem}.de").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{stem}.en").write_text("".join(" ".join(reversed(s.split())) + "\n" for s in src), encoding="utf-8")


def data_config(folder: Path, **changes) -> DataConfig:
    if not (folder / "val.de").exists():
        write_corpus(folder, 5, "val")
    return DataConfig(**{"dir": str(folder), "src_lang": "de", "tgt_lang": "en", "cache_dir": str(folder / "cache"),
                         "vocab_size": 100, **changes})


def entries(cfg: DataConfig) -> list[str]:
    return sorted(p.name.split("-")[0] for p in Path(cfg.cache_dir).iterdir() if not p.name.startswith("."))


def pairs(train_set) -> list[tuple[list[int], list[int]]]:
    """Every pair of a prepared training set as (source ids with EOS, target ids), in id order."""
    batch = train_set.collate(np.arange(len(train_set)))
    out = []
    for src, tgt in zip(batch.src.tolist(), batch.tgt_out.tolist()):
        out.append((src[: src.index(EOS) + 1], tgt[: tgt.index(EOS)]))
    return out


@pytest.fixture
def forbid_preparation(monkeypatch):
    """After this, training a vocabulary or encoding a corpus fails the test: the cache must answer."""
    def forbid():
        def fail(*args, **kwargs):
            raise AssertionError("prepared again")
        monkeypatch.setattr(prepared, "_train_tokenizer", fail)
        monkeypatch.setattr(prepared, "_encode_corpus", fail)
    return forbid


def test_second_preparation_is_a_cache_hit_with_the_same_ids(tmp_path, forbid_preparation):
    cfg = data_config(tmp_path, tokenizer="sentencepiece", vocab_size=40)
    write_corpus(tmp_path, 300)
    first = prepare_data(cfg)
    assert entries(cfg) == ["corpus", "vocabulary"]
    assert any("trained now" in n for n in first.notes) and any("prepared now" in n for n in first.notes)
    forbid_preparation()
    second = prepare_data(cfg)
    assert any("prepared before" in n for n in second.notes) and not any("now" in n for n in second.notes)
    assert second.src_tokenizer.state() == first.src_tokenizer.state()
    assert pairs(second.train) == pairs(first.train)
    text = (tmp_path / "train.de").read_text().splitlines()[7]
    assert pairs(first.train)[7][0] == first.src_tokenizer.encode(text) + [EOS]
    assert first.train.corpora[0].src.dtype == np.uint16  # the smallest type for 40 ids


def test_a_changed_file_key_or_tokenizer_option_misses_and_the_rest_is_reused(tmp_path):
    write_corpus(tmp_path, 200)
    cfg = data_config(tmp_path)
    prepare_data(cfg)
    names = lambda: sorted(p.name for p in Path(cfg.cache_dir).iterdir() if not p.name.startswith("."))  # noqa: E731
    before = names()
    prepare_data(data_config(tmp_path, max_len=5))  # another filter: new ids, same vocabulary
    after_max_len = names()
    assert len(after_max_len) == 3 and set(before) < set(after_max_len)
    prepare_data(data_config(tmp_path, vocab_size=50))  # another option, but the same vocabulary (18 words):
    assert len(names()) == 4  # new vocabulary entry, and the ids of the same vocabulary are reused
    prepare_data(data_config(tmp_path, vocab_size=10))  # a smaller vocabulary: both new
    assert len(names()) == 6
    prepare_data(data_config(tmp_path, dev="val", test="other"))  # dev and test do not decide the content
    assert len(names()) == 6
    write_corpus(tmp_path, 200, seed=1)  # the same file name, another content
    prepare_data(cfg)
    assert len(names()) == 8


def test_an_interrupted_preparation_is_redone_not_trusted(tmp_path, monkeypatch):
    write_corpus(tmp_path, 200)
    cfg = data_config(tmp_path)
    real = prepared._encode_corpus

    def killed(folder, *args, **kwargs):
        real(folder, *args, **kwargs)  # every file written, then the process dies before the entry is complete
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared, "_encode_corpus", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg)
    assert entries(cfg) == ["vocabulary"]  # no corpus entry, and no temporary folder left
    # what a SIGKILL leaves: a temporary folder, and (copied by hand, say) an entry folder without its meta
    key = prepared.fingerprint(prepared.corpus_key(cfg, *prepare_train_sources(cfg)))
    (Path(cfg.cache_dir) / f".corpus-{key}.tmp-99999").mkdir()
    (Path(cfg.cache_dir) / f"corpus-{key}").mkdir()
    (Path(cfg.cache_dir) / f"corpus-{key}" / "src.bin").write_bytes(b"\0\0")
    monkeypatch.setattr(prepared, "_encode_corpus", real)
    data = prepare_data(cfg)
    assert any("prepared now" in n for n in data.notes) and len(data.train) == 200
    assert sorted(p.name for p in Path(cfg.cache_dir).iterdir() if "tmp" in p.name) == []


def prepare_train_sources(cfg):
    from mtcli.data.corpus import train_sources

    src, tgt, _ = prepared.prepare_tokenizers(cfg, train_sources(cfg))
    return train_sources(cfg)[0], src, tgt


def test_gzip_and_tsv_inputs_give_the_same_ids_as_plain_files(tmp_path):
    write_corpus(tmp_path, 100)
    plain = prepare_data(data_config(tmp_path))
    gz = tmp_path / "gz"
    gz.mkdir()
    write_corpus(gz, 5, "val")
    for lang in ("de", "en"):
        (gz / f"train.{lang}.gz").write_bytes(gzip.compress((tmp_path / f"train.{lang}").read_bytes()))
    rows = zip((tmp_path / "train.de").read_text().splitlines(), (tmp_path / "train.en").read_text().splitlines())
    (gz / "train.tsv.gz").write_bytes(gzip.compress("".join(f"{s}\t{t}\n" for s, t in rows).encode()))
    for train_name in ("train", "train.tsv.gz"):
        data = prepare_data(data_config(gz, train=train_name, cache_dir=str(tmp_path / f"cache-{train_name}")))
        assert data.src_tokenizer.state() == plain.src_tokenizer.state()
        assert pairs(data.train) == pairs(plain.train)


def test_two_weighted_corpora_mix_in_the_expected_proportion(tmp_path):
    write_corpus(tmp_path, 40, "big")
    write_corpus(tmp_path, 30, "small", seed=1)
    cfg = data_config(tmp_path, train=(CorpusConfig("big", 2.0), CorpusConfig("small", 0.5)))
    train_set = prepare_data(cfg).train
    assert len(train_set) == 70

    def epoch(seed, number):
        plan = train_set.plan(batch_tokens=64, seed=seed, epoch=number)
        return np.concatenate([plan.batch(k) for k in range(len(plan))])

    ids = epoch(1, 1)
    big, small = np.bincount(ids[ids < 40], minlength=40), ids[ids >= 40]
    assert big.tolist() == [2] * 40  # every pair of the first corpus twice
    assert len(small) == 15 and len(set(small.tolist())) == 15  # a half of the second, each once
    assert epoch(1, 1).tolist() == ids.tolist()  # a pure function of (seed, epoch)
    assert set(epoch(1, 2)[epoch(1, 2) >= 40].tolist()) != set(small.tolist())  # another half next epoch


def test_plans_are_sorted_by_length_within_batches_and_differ_by_epoch(tmp_path):
    write_corpus(tmp_path, 300)
    train_set = prepare_data(data_config(tmp_path)).train
    a, b = train_set.plan(80, seed=1, epoch=1), train_set.plan(80, seed=1, epoch=2)
    assert sorted(np.concatenate([a.batch(k) for k in range(len(a))]).tolist()) == list(range(300))
    assert [a.batch(k).tolist() for k in range(len(a))] != [b.batch(k).tolist() for k in range(len(b))]
    corpus = train_set.corpora[0]
    for k in range(len(a)):
        ids = a.batch(k)
        longest = int(np.maximum(corpus.src_len[ids], corpus.tgt_len[ids]).max()) + 1
        assert longest * len(ids) <= 80 or len(ids) == 1


def test_processes_take_disjoint_shares_that_cover_every_update():
    runs = LengthRuns(np.arange(50, dtype=np.uint32), np.array([[4, 4, 0]]))
    plan = plan_epoch([runs], batch_tokens=12, seed=3)
    group = [plan.batch(k) for k in range(4)]  # one update of 2 processes x 2 batches
    shares = [distributed.share(group, distributed.World(rank, rank, 2)) for rank in range(2)]
    seen = [set(np.concatenate(share).tolist()) for share in shares]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(np.concatenate(group).tolist())


def test_bad_input_keeps_its_one_line_errors(tmp_path):
    write_corpus(tmp_path, 20)
    (tmp_path / "train.en").write_text("only one line\n")
    with pytest.raises(DataError, match=r"train.en: 1 lines, but .*train.de has 20: the files must be line-parallel"):
        prepare_data(data_config(tmp_path))
    write_corpus(tmp_path, 20)
    (tmp_path / "train.de").write_bytes((tmp_path / "train.de").read_bytes() + b"bad \xff byte\n")
    (tmp_path / "train.en").write_bytes((tmp_path / "train.en").read_bytes() + b"ok\n")
    with pytest.raises(DataError, match=r"train.de:21: not valid UTF-8 \(byte 0xff\)"):
        prepare_data(data_config(tmp_path))
    write_corpus(tmp_path, 20)
    with pytest.raises(DataError, match=r"all 20 pairs are longer than data.max_len=0 tokens on one side; raise"):
        prepare_data(data_config(tmp_path, max_len=0))
    with pytest.raises(DataError, match=r"missing.de: no such file"):
        prepare_data(data_config(tmp_path, train="missing"))
    with pytest.raises(DataError, match=r"data.vocab_size: 5 is too small for sentencepiece on this corpus: it "
                                        r"needs at least \d+"):
        prepare_data(data_config(tmp_path, tokenizer="sentencepiece", vocab_size=5))


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path):
    write_corpus(tmp_path, 20)
    (tmp_path / "file").write_text("a file where the cache folder should go")
    with pytest.raises(DataError, match=r"file/cache: cannot write the prepared data \(Not a "
                                        r"directory\); free space or set data.cache_dir"):
        prepare_data(data_config(tmp_path, cache_dir=str(tmp_path / "file" / "cache")))


def test_data_prepare_then_train_finds_everything_prepared(tmp_path, monkeypatch, forbid_preparation):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path, 200)
    write_corpus(tmp_path, 5, "val")
    Path("exp.yaml").write_text(json.dumps({
        "data": {"dir": ".", "src_lang": "de", "tgt_lang": "en", "cache_dir": "cache"},
        "model": {"embed_dim": 16, "hidden_dim": 16, "ff_dim": 32, "heads": 2, "encoder_layers": 1,
                  "decoder_layers": 1}, "train": {"max_steps": 2, "validate_every": 2, "batch_tokens": 200}}))
    out = CliRunner().invoke(app, ["data", "prepare", "exp.yaml"])
    assert out.exit_code == 0, out.output
    assert "200 training pairs ready in cache" in out.stdout and "prepared now" in out.stdout
    for lang in ("de", "en"):
        Path(f"long.{lang}").write_text("three words here\nand four words here\n")
    out = CliRunner().invoke(app, ["data", "prepare", "exp.yaml", "--set", "data.train=long", "--set",
                                   "data.max_len=2"])
    assert out.exit_code == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: long.de + long.en: all 2 pairs are longer than data.max_len=2 tokens")
    forbid_preparation()
    out = CliRunner().invoke(app, ["train", "exp.yaml"])
    assert out.exit_code == 0, out.output
    assert out.stdout.count("prepared before") == 2  # vocabulary and corpus



def test_fine_tuning_starts_from_the_other_models_weights_with_a_fresh_optimizer(tmp_path):
    base = tiny_config("transformer", tmp_path / "base", train={"max_steps": 10, "validate_every": 10})
    train(base)
    weights = read_checkpoint(base.run_path / LATEST)["model"]
    tuned = tiny_config("transformer", tmp_path / "tuned", data={"max_len": 8, "vocab_size": 12},
                        train={"init_from": str(base.run_path), "lr": 0.0005})
    trainer = Trainer(tuned, [])
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert trainer.optimizer.state == {} and trainer.progress.step == 0  # fresh optimizer and schedule
    assert trainer.data.src_tokenizer.state() == read_checkpoint(base.run_path / LATEST)["tokenizers"]["src"]
    assert any(n.startswith(f"initialised from {base.run_path}") for n in trainer.notes)
    end = train(tuned)
    assert end.step == 30
    other = tiny_config("transformer", tmp_path / "other", model={"heads": 4},
                        train={"init_from": str(base.run_path)})
    with pytest.raises(ConfigError, match=r"train.init_from: .* holds a model with model.heads=2, this config "
                                          r"has 4; the model sections must match"):
        Trainer(other, [])
