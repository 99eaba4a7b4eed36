"""Subword sampling (data.spm_alpha): each training batch segmented anew at batch time, seeded by its place."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtcli.checkpoint import LATEST, read_checkpoint
from mtcli.data.dataset import prepare_data
from mtcli.data.tokenizers import EOS
from mtcli.errors import ConfigError
from mtcli.training import Trainer, train
from tests.conftest import tiny_config
from tests.test_resume import SignalAt, assert_same_weights

ROOT = Path(__file__).resolve().parents[1]
SPM = {"tokenizer": "sentencepiece", "vocab_size": 80}


def texts(batch, tokenizer) -> list[tuple[str, str]]:
    """Each row of a batch as (source, target) text."""
    rows = zip(batch.src.tolist(), batch.tgt_out.tolist())
    return [(tokenizer.decode(s[: s.index(EOS)]), tokenizer.decode(t[: t.index(EOS)])) for s, t in rows]


def same(a, b) -> bool:
    return a.src.shape == b.src.shape and a.tgt_out.shape == b.tgt_out.shape and bool(
        (a.src == b.src).all() and (a.tgt_out == b.tgt_out).all() and (a.tgt_in == b.tgt_in).all())


@pytest.mark.parametrize("spm_type,alpha", [("unigram", 0.1), ("bpe", 0.1)])
def test_a_batch_is_segmented_by_its_key_and_says_the_same_text(spm_type, alpha):
    data = prepare_data(tiny_config(data={**SPM, "spm_type": spm_type, "spm_alpha": alpha}).data)
    plain = prepare_data(tiny_config(data={**SPM, "spm_type": spm_type}).data)
    ids = data.train.plan(600, 1, 1).batch(0)
    first, again, other = (data.train.collate(ids, key) for key in [(1, 1, 0), (1, 1, 0), (1, 1, 1)])
    stored = plain.train.collate(ids)
    assert same(first, again) and not same(first, other) and not same(first, stored)
    assert same(data.train.collate(ids), stored)  # without a key: the prepared ids, as with sampling off
    tok = data.tgt_tokenizer
    assert texts(first, tok) == texts(other, tok) == texts(stored, tok)  # another segmentation, the same words
    assert first.n_tgt_tokens == int((first.tgt_out != 0).sum())


SAMPLE_IN_ANOTHER_PROCESS = """
import sys
from mtcli.data.dataset import prepare_data
from tests.conftest import tiny_config
data = prepare_data(tiny_config(data={"tokenizer": "sentencepiece", "vocab_size": 80, "spm_type": sys.argv[1],
                                      "spm_alpha": 0.1}).data)
print(data.train.collate(data.train.plan(600, 1, 1).batch(0), (1, 1, 0)).src.tolist())
"""


@pytest.mark.parametrize("spm_type", ["unigram", "bpe"])
def test_another_process_draws_the_same_segmentation(spm_type):
    # what a resumed run relies on (sentencepiece's own sampler is salted per process and would not)
    data = prepare_data(tiny_config(data={**SPM, "spm_type": spm_type, "spm_alpha": 0.1}).data)
    here = data.train.collate(data.train.plan(600, 1, 1).batch(0), (1, 1, 0)).src.tolist()
    out = subprocess.run([sys.executable, "-c", SAMPLE_IN_ANOTHER_PROCESS, spm_type], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert json.loads(out.stdout) == here


def test_bpe_dropout_without_dropping_is_sentencepieces_own_segmentation():
    data = prepare_data(tiny_config(data={**SPM, "spm_type": "bpe", "vocab_size": 200}).data)
    tok, rng = data.src_tokenizer, np.random.default_rng(0)
    rows = [ids for pair in data.train.pairs(np.arange(len(data.train))) for ids in pair]
    assert tok.is_bpe and [tok.sample([row], 0.0, 0, rng)[0] for row in rows] == rows


def test_sampling_leaves_the_prepared_data_and_the_dev_set_alone():
    plain = prepare_data(tiny_config(data=SPM).data)
    sampled = prepare_data(tiny_config(data={**SPM, "spm_alpha": 0.1, "spm_nbest": 16}).data)
    assert plain.train.sampling is None and sampled.train.sampling.nbest == 16
    assert [c.folder for c in sampled.train.corpora] == [c.folder for c in plain.train.corpora]  # one cache entry
    assert "prepared before" in sampled.notes[-1]
    assert sampled.dev == plain.dev  # the dev set keeps the deterministic segmentation
    trainer = Trainer(tiny_config(data={**SPM, "spm_alpha": 0.1}), [])
    reference = Trainer(tiny_config(data=SPM), [])
    assert all(same(a, b) for a, b in zip(trainer.dev_batches, reference.dev_batches, strict=True))


def test_training_with_sampling_resumes_exactly(tmp_path):
    settings = {"train": {"max_steps": 16, "validate_every": 100, "log_every": 1}, "data": {**SPM, "spm_alpha": 0.1}}
    whole = tiny_config("transformer", tmp_path / "whole", **settings)
    train(whole)
    parts = tiny_config("transformer", tmp_path / "parts", **settings)
    assert train(parts, [SignalAt(5)]).step == 6
    assert train(parts).step == 16
    sampled = read_checkpoint(whole.run_path / LATEST)["model"]
    assert_same_weights(sampled, read_checkpoint(parts.run_path / LATEST)["model"])
    plain = tiny_config("transformer", tmp_path / "plain", train=settings["train"], data=SPM)
    train(plain)
    unsampled = read_checkpoint(plain.run_path / LATEST)["model"]
    assert not all(np.array_equal(sampled[k], unsampled[k]) for k in sampled)  # the batches were sampled


@pytest.mark.parametrize("data,message", [
    ({"spm_alpha": 0.1}, "data.spm_alpha: subword sampling needs data.tokenizer: sentencepiece"),
    ({**SPM, "spm_type": "bpe", "spm_alpha": 1.0}, "data.spm_alpha: BPE-dropout drops each merge with this "
                                                   "probability: must be below 1"),
    ({**SPM, "spm_alpha": 0.1, "spm_nbest": -1}, "data.spm_nbest: unigram sampling draws from the N best "
                                                 "segmentations: must be at least 2, got -1"),
    ({**SPM, "spm_alpha": -0.1}, "data.spm_alpha: must be zero"),
])
def test_bad_sampling_settings_are_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(data=data)
