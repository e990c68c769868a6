"""Text and preference metrics, as plain functions of strings and numbers."""

from __future__ import annotations

import math


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (rouge-score, with stemming), 0..1."""
    from rouge_score import rouge_scorer

    if not predictions:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)) / len(
        predictions)


def win_rate(scores_a: list[float], scores_b: list[float], tie_tolerance: float = 1e-9) -> dict[str, float]:
    """How often A beats B on paired scores (ties count half), with a 95 % Wilson interval."""
    n = len(scores_a)
    if n == 0:
        return {"win_rate": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    wins = sum(1.0 if a - b > tie_tolerance else 0.5 if abs(a - b) <= tie_tolerance else 0.0
               for a, b in zip(scores_a, scores_b))
    rate = wins / n
    low, high = wilson_interval(rate, n)
    return {"win_rate": rate, "low": low, "high": high, "n": n}


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at 0, 1 and small n, unlike the normal one."""
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    spread = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)
