"""Text metrics equal the libraries' numbers worked out by hand; win rates and their intervals on known counts."""

from __future__ import annotations

import math

import pytest

from lorahf.metrics import bleu, meteor, rouge, win_rate, win_rate_of, wilson_interval

HYPOTHESIS = "the cat sat on the mat"
REFERENCE = "the cat sat on a mat"


def test_rouge_counts_shared_words_and_bigrams():
    scores = rouge([HYPOTHESIS], [REFERENCE])
    assert scores["rouge1"] == pytest.approx(5 / 6)  # 5 of 6 words shared, both sides 6 long
    assert scores["rouge2"] == pytest.approx(3 / 5)  # the cat, cat sat, sat on
    assert scores["rougeL"] == pytest.approx(5 / 6)
    assert rouge(["Falcons beat Tigers"], ["Falcons beat Tigers"])["rouge2"] == 1.0


def test_bleu_is_the_geometric_mean_of_ngram_precisions():
    # precisions 5/6, 3/5, 2/4, 1/3 and no brevity penalty (equal lengths)
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu([HYPOTHESIS], [REFERENCE]) == pytest.approx(expected, abs=1e-6)
    assert bleu([REFERENCE], [REFERENCE]) == pytest.approx(100.0)


def test_meteor_exact_and_stem_matches_with_its_fragmentation_penalty():
    value, synonyms = meteor([HYPOTHESIS], [HYPOTHESIS])
    assert value == pytest.approx(1 - 0.5 * (1 / 6) ** 3)  # one chunk of 6 matches
    stemmed, _ = meteor(["cats sat"], ["cat sat"])  # Porter stems cats -> cat
    assert stemmed == pytest.approx(1 - 0.5 * (1 / 2) ** 3)
    assert isinstance(synonyms, bool)


def test_meteor_says_when_wordnet_is_missing(monkeypatch):
    from lorahf import metrics

    monkeypatch.setattr(metrics, "_wordnet", lambda: (metrics._NoSynonyms(), False))
    value, synonyms = meteor(["a big match"], ["a large match"])
    assert synonyms is False
    assert value < 0.9  # big != large without synonyms


def test_win_rate_counts_ties_half_with_the_textbook_wilson_interval():
    wins = win_rate_of(["a"] * 6 + ["b"] * 2 + ["tie"] * 2)
    assert wins["win_rate"] == pytest.approx(0.7)
    assert (wins["wins"], wins["losses"], wins["ties"], wins["n"]) == (6, 2, 2, 10)
    assert (wins["low"], wins["high"]) == pytest.approx((0.3968, 0.8922), abs=1e-4)  # Wilson, 7 of 10
    assert win_rate([2.0, 1.0, 1.0], [1.0, 1.0, 3.0])["win_rate"] == pytest.approx(0.5)
    assert math.isnan(win_rate_of([])["win_rate"])


def test_wilson_interval_stays_inside_0_and_1():
    assert wilson_interval(0.0, 5)[0] == 0.0 and wilson_interval(1.0, 5)[1] == 1.0
    low, high = wilson_interval(0.5, 400)
    assert high - low == pytest.approx(2 * 1.96 * 0.025, rel=0.01)
