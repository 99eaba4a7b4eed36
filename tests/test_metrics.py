import pytest

from mtcli.metrics import METRICS, corpus_scores, lower_is_better


def test_identical_output_scores_perfectly():
    text = ["Ein Mann fährt Fahrrad ."]
    scores = corpus_scores(["A man rides a bike ."], text, text)
    assert scores["bleu"].score == scores["chrf"].score == scores["chrf++"].score == 100.0
    assert scores["ter"].score == 0.0


def test_one_sentence_scores_are_pinned():
    # precisions 4/6, 2/5, 1/4, 0/3 -> smoothed BLEU of sacrebleu 2.x (exp smoothing), cased, 13a
    scores = corpus_scores(["eine Katze"], ["a cat sat on a mat"], ["the cat sat on the mat ."])
    assert scores["bleu"].score == pytest.approx(27.48, abs=0.01)
    assert scores["chrf"].score == pytest.approx(43.20, abs=0.01)
    assert scores["chrf++"].score == pytest.approx(44.11, abs=0.01)  # word uni- and bigrams raise it here
    assert scores["ter"].score == pytest.approx(42.86, abs=0.01)


def test_scores_are_cased_and_signed():
    scores = corpus_scores(["die Katze ."], ["The Cat ."], ["the cat ."])
    assert scores["bleu"].score < 100
    assert "case:mixed" in scores["bleu"].signature and "tok:13a" in scores["bleu"].signature
    assert scores["chrf"].signature.startswith("nrefs:1") and "version:" in scores["ter"].signature
    assert scores["chrf++"].name == "chrF2++" and "|nw:2|" in scores["chrf++"].signature
    assert "|nw:0|" in scores["chrf"].signature


def test_selection_direction_comes_from_the_metric():
    assert [name for name in METRICS if lower_is_better(name)] == ["ter"]
    assert lower_is_better("loss")
