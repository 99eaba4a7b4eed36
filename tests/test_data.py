import random

import pytest

from mtcli.config import DataConfig, ToyConfig
from mtcli.data.batching import collate, iterate_batches, make_example, token_batches
from mtcli.data.corpus import load_split, read_lines
from mtcli.data.dataset import prepare_data
from mtcli.data.tokenizers import EOS, PAD, SentencePieceTokenizer, WhitespaceTokenizer, tokenizer_from_state
from mtcli.errors import DataError


def files(tmp_path, **contents):
    for name, text in contents.items():
        (tmp_path / name.replace("_", ".")).write_bytes(text if isinstance(text, bytes) else text.encode())
    return tmp_path


def test_read_lines_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"missing.txt: no such file"):
        read_lines(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.txt: file is empty"):
        read_lines(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok\nfine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad.txt:3: not valid UTF-8"):
        read_lines(tmp_path / "bad.txt")
    (tmp_path / "crlf.txt").write_bytes(b"a b\r\nc\r\n")
    assert read_lines(tmp_path / "crlf.txt") == ["a b", "c"]


def test_mismatched_line_counts_are_an_error(tmp_path):
    files(tmp_path, train_de="a\nb\nc\n", train_en="x\ny\n", val_de="a\n", val_en="x\n")
    cfg = DataConfig(dir=str(tmp_path), src_lang="de", tgt_lang="en")
    with pytest.raises(DataError, match=r"train.en: 2 lines, but .*train.de has 3"):
        load_split(cfg, "train")


def test_tsv_split_and_bad_columns(tmp_path):
    files(tmp_path, train_tsv="ein Haus\ta house\nzwei\ttwo\n", bad_tsv="ok\tfine\nno tab here\n")
    cfg = DataConfig(dir=str(tmp_path), train="train.tsv", dev="bad.tsv")
    text = load_split(cfg, "train")
    assert text.src == ["ein Haus", "zwei"] and text.tgt == ["a house", "two"]
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 2 tab-separated columns"):
        load_split(cfg, "dev")


def test_prepare_filters_empty_and_long_pairs_and_reports_counts(tmp_path):
    src = "a b\n\nc d e f g h\ni j\n"
    tgt = "w x\ny\nz z z\n\n"
    files(tmp_path, train_de=src, train_en=tgt, val_de="a b\n", val_en="w x\n")
    cfg = DataConfig(dir=str(tmp_path), src_lang="de", tgt_lang="en", max_len=4)
    data = prepare_data(cfg)
    assert len(data.train) == 1  # "a b" kept; 2 with an empty side, 1 too long
    assert any("dropped 2 with an empty side and 1 longer than data.max_len=4" in n for n in data.notes)
    batch = data.train.collate(data.train.plan(100, seed=1, epoch=1).batch(0))
    assert batch.src.tolist() == [data.src_tokenizer.encode("a b") + [EOS]]
    assert batch.tgt_in.tolist() == [[2] + data.tgt_tokenizer.encode("w x")]


def test_whitespace_tokenizer_roundtrip_and_unknown_words():
    tok = WhitespaceTokenizer.train(["the dog", "the cat"], max_size=100)
    ids = tok.encode("the dog barks")
    assert tok.decode(ids) == "the dog <unk>"
    assert tokenizer_from_state(tok.state()).encode("the cat") == tok.encode("the cat")


def test_sentencepiece_trains_detokenizes_and_travels_as_bytes():
    texts = [f"Ein Mann fährt Fahrrad Nummer {i} am Fluss ." for i in range(200)] + ["Zwei Hunde spielen ."] * 50
    for model_type in ("unigram", "bpe"):
        tok = SentencePieceTokenizer.train(texts, vocab_size=60, model_type=model_type)
        text = "Ein Mann fährt Fahrrad ."
        assert tok.decode(tok.encode(text)) == text
        clone = tokenizer_from_state(tok.state())
        assert isinstance(tok.state()["model"], bytes) and clone.encode(text) == tok.encode(text)
        assert clone.pieces(clone.encode(text))[0].startswith("▁")


def test_joint_and_separate_vocabularies(tmp_path):
    files(tmp_path, train_de="hallo welt\n" * 20, train_en="hello world\n" * 20, val_de="hallo\n", val_en="hello\n")
    joint = prepare_data(DataConfig(dir=str(tmp_path), src_lang="de", tgt_lang="en"))
    assert joint.src_tokenizer is joint.tgt_tokenizer
    separate = prepare_data(DataConfig(dir=str(tmp_path), src_lang="de", tgt_lang="en", joint_vocab=False))
    assert "hello" not in separate.src_tokenizer.vocab and "hello" in separate.tgt_tokenizer.vocab


def test_token_batches_cover_everything_once_within_budget():
    lengths = [(i * 7) % 23 + 1 for i in range(500)]
    plain = lambda batches: [b.tolist() for b in batches]  # noqa: E731
    for seed in (None, 1, 2):
        batches = token_batches(lengths, batch_tokens=100, seed=seed)
        assert sorted(i for b in plain(batches) for i in b) == list(range(500))
        assert all(max(lengths[i] for i in b) * len(b) <= 100 for b in batches)
    assert plain(token_batches(lengths, 100, seed=1)) == plain(token_batches(lengths, 100, seed=1))
    assert plain(token_batches(lengths, 100, seed=1)) != plain(token_batches(lengths, 100, seed=2))


def greedy_reference(lengths, order, budget):
    """The batching rule as a plain loop: a pair closes the batch when length x (sentences + 1) > budget."""
    batches, current = [], []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def test_planner_cuts_exactly_like_the_greedy_rule_and_sorts_by_length_then_source_length():
    rng = random.Random(0)
    for _ in range(100):
        n = rng.randint(0, 200)
        lengths = [rng.randint(1, 40) for _ in range(n)]
        src = [rng.randint(1, length) for length in lengths]
        budget = rng.randint(1, 300)
        batches = [b.tolist() for b in token_batches(lengths, budget, None, src)]
        order = [i for b in batches for i in b]
        assert [(lengths[i], src[i]) for i in order] == sorted(zip(lengths, src))
        assert batches == greedy_reference(lengths, order, budget)


def test_bucketing_keeps_padding_small():
    pairs = load_split(DataConfig(toy=ToyConfig(train_size=5000, dev_size=10, test_size=10)), "train")
    tok = WhitespaceTokenizer.train(pairs.src + pairs.tgt, 1000)
    examples = [make_example(tok.encode(s), tok.encode(t)) for s, t in zip(pairs.src, pairs.tgt)]
    batches = iterate_batches(examples, batch_tokens=2000, seed=1)
    for side, least in (("src", 0.92), ("tgt_out", 0.98)):
        real = sum(int((getattr(b, side) != PAD).sum()) for b in batches)
        padded = sum(getattr(b, side).numel() for b in batches)
        assert real / padded > least, side


def test_collate_shapes_and_specials():
    batch = collate([make_example([5, 6], [7]), make_example([5], [7, 8, 9])])
    assert batch.src.tolist() == [[5, 6, EOS], [5, EOS, PAD]]
    assert batch.tgt_in.tolist() == [[2, 7, PAD, PAD], [2, 7, 8, 9]]
    assert batch.tgt_out.tolist() == [[7, EOS, PAD, PAD], [7, 8, 9, EOS]]
    assert batch.n_tgt_tokens == 6 and batch.src_mask.sum().item() == 5
