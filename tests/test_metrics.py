import pytest

from mtcli.metrics import corpus_scores


def test_identical_output_scores_perfectly():
    scores = corpus_scores(["Ein Mann fährt Fahrrad ."], ["Ein Mann fährt Fahrrad ."])
    assert scores["bleu"].score == 100.0 and scores["chrf"].score == 100.0 and scores["ter"].score == 0.0


def test_one_sentence_bleu_is_pinned():
    # precisions 4/6, 2/5, 1/4, 0/3 -> smoothed BLEU of sacrebleu 2.x (exp smoothing), cased, 13a
    scores = corpus_scores(["a cat sat on a mat"], ["the cat sat on the mat ."])
    assert scores["bleu"].score == pytest.approx(27.48, abs=0.01)
    assert scores["chrf"].score == pytest.approx(43.20, abs=0.01)
    assert scores["ter"].score == pytest.approx(42.86, abs=0.01)


def test_bleu_is_cased_and_signed():
    scores = corpus_scores(["The Cat ."], ["the cat ."])
    assert scores["bleu"].score < 100
    assert "case:mixed" in scores["bleu"].signature and "tok:13a" in scores["bleu"].signature
    assert scores["chrf"].signature.startswith("nrefs:1") and "version:" in scores["ter"].signature
