from collections import Counter

from mtcli.config import ToyConfig
from mtcli.data import toy
from mtcli.data.toy import toy_split

SMALL = ToyConfig(seed=3, train_size=400, dev_size=50, test_size=50)


def test_same_seed_same_data_other_seed_other_data():
    assert toy_split(SMALL, "train") == toy_split(ToyConfig(**{**SMALL.__dict__}), "train")
    other = toy_split(ToyConfig(seed=4, train_size=400, dev_size=50, test_size=50), "train")
    assert [p.src for p in other] != [p.src for p in toy_split(SMALL, "train")]


def test_splits_are_disjoint_and_sized():
    splits = {name: {p.src for p in toy_split(SMALL, name)} for name in ("train", "dev", "test")}
    assert [len(splits[n]) for n in ("train", "dev", "test")] == [400, 50, 50]
    assert not splits["train"] & splits["dev"] and not splits["train"] & splits["test"]
    assert not splits["dev"] & splits["test"]


def test_test_split_does_not_depend_on_train_size():
    bigger = ToyConfig(seed=3, train_size=800, dev_size=10, test_size=50)
    assert toy_split(bigger, "test") == toy_split(SMALL, "test")


def test_lengths_span_the_range():
    lengths = [len(p.src.split()) for p in toy_split(ToyConfig(train_size=2000), "train")]
    assert min(lengths) >= 3 and max(lengths) <= 40
    buckets = Counter(min(n // 10, 3) for n in lengths)
    assert all(buckets[b] > 200 for b in range(4)), buckets  # short and long sentences alike


def test_alignments_link_every_source_word_and_stay_in_range():
    for pair in toy_split(SMALL, "train"):
        src, tgt = pair.src.split(), pair.tgt.split()
        assert {s for s, _ in pair.alignment} == set(range(len(src)))
        assert all(0 <= t < len(tgt) for _, t in pair.alignment)


def test_word_translations_follow_the_gold_alignment():
    lexicon = {**toy.NOUNS, **toy.ADJECTIVES, **toy.PREPOSITIONS, **toy.ADVERBS, **toy.CONJUNCTIONS}
    for pair in toy_split(SMALL, "test"):
        src, tgt = pair.src.split(), pair.tgt.split()
        for s, t in pair.alignment:
            if src[s] in lexicon:
                assert tgt[t] == lexicon[src[s]]


def test_grammar_reorders_like_the_target_language():
    from mtcli.data.toy import Phrase, combine

    # "the big dog sees a cat": SOV, adjective after noun, determiner last, object marker
    the, big, dog = Phrase.word("the", ["ka"]), Phrase.word("big", ["ooki"]), Phrase.word("dog", ["inu"])
    np_ = combine([the, big, dog], [2, 1, 0])
    assert [w for w, _ in np_.tgt] == ["inu", "ooki", "ka"]
    assert [links for _, links in np_.tgt] == [(2,), (1,), (0,)]
    for pair in toy_split(SMALL, "test"):
        tgt = pair.tgt.split()
        verbs = {w for forms in (toy.TRANSITIVE, toy.INTRANSITIVE) for ws in forms.values() for w in ws}
        assert tgt[-1] in verbs  # every clause ends with its verb, so the sentence does
    many = [p for p in toy_split(SMALL, "train") if " every " in f" {p.src} "]
    assert many and all("zu mei" in p.tgt for p in many)  # a one-to-many word
