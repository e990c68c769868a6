"""Text and preference metrics, as plain functions of strings and numbers.

Each text metric is the well-known library's own number, averaged or pooled the usual way:

    rouge(predictions, references)   ROUGE-1/2/L F1 (rouge-score, stemmed), mean over pairs, 0..1
    bleu(predictions, references)    corpus BLEU (sacrebleu, its default 13a tokenizer), 0..100
    meteor(predictions, references)  METEOR (nltk), mean over pairs, 0..1, and whether WordNet synonyms
                                     were used: offline the WordNet data is often missing, and then the
                                     score matches exact words and stems only (callers label it so)
    win_rate(scores_a, scores_b)     paired wins of A over B, ties half, with a 95 % Wilson interval
    win_rate_of(outcomes)            the same from judged outcomes ("a", "b", "tie")
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (rouge-score, with stemming), 0..1."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    if not predictions:
        return {kind: float("nan") for kind in kinds}
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    return {kind: sum(score[kind].fmeasure for score in scores) / len(scores) for kind in kinds}


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (rouge-score, with stemming), 0..1."""
    return rouge(predictions, references)["rougeL"]


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU with one reference per prediction (sacrebleu's defaults), 0..100."""
    import sacrebleu

    if not predictions:
        return float("nan")
    return sacrebleu.corpus_bleu(predictions, [references]).score


def meteor(predictions: list[str], references: list[str]) -> tuple[float, bool]:
    """Mean METEOR (nltk) over pairs, and True when WordNet synonyms took part in the matching.

    Texts are split on whitespace (nltk's word tokenizer would need its own downloaded data too)."""
    from nltk.translate.meteor_score import meteor_score

    wordnet, synonyms = _wordnet()
    if not predictions:
        return float("nan"), synonyms
    total = sum(meteor_score([reference.split()], prediction.split(), wordnet=wordnet)
                for prediction, reference in zip(predictions, references))
    return total / len(predictions), synonyms


class _NoSynonyms:
    """Stands in for nltk's WordNet reader when its data is not installed: no word has a synonym."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


def _wordnet():
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        return _NoSynonyms(), False
    return wordnet, True


def win_rate(scores_a: list[float], scores_b: list[float], tie_tolerance: float = 1e-9) -> dict[str, float]:
    """How often A beats B on paired scores (ties count half), with a 95 % Wilson interval."""
    return win_rate_of("a" if a - b > tie_tolerance else "b" if b - a > tie_tolerance else "tie"
                       for a, b in zip(scores_a, scores_b))


def win_rate_of(outcomes: Iterable[str]) -> dict[str, float]:
    """Win rate of A from outcomes "a", "b" or "tie" (ties count half), its 95 % Wilson interval and counts."""
    outcomes = list(outcomes)
    counts = {kind: outcomes.count(kind) for kind in ("a", "b", "tie")}
    n = len(outcomes)
    if n == 0:
        return {"win_rate": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0,
                "wins": 0, "losses": 0, "ties": 0}
    rate = (counts["a"] + 0.5 * counts["tie"]) / n
    low, high = wilson_interval(rate, n)
    return {"win_rate": rate, "low": low, "high": high, "n": n,
            "wins": counts["a"], "losses": counts["b"], "ties": counts["tie"]}


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at 0, 1 and small n, unlike the normal one."""
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    spread = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)
