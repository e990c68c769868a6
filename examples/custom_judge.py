"""A judge of your own: plain Python, no lorahf import needed.

A recipe names it as `path/to/file.py:function`:

    judges:
      concise: {python: "examples/custom_judge.py:score"}

`score(prompt, response) -> float` scores one response (PPO can even train on it: `ppo.reward_judge: concise`);
evaluation compares two responses by their scores. A function `compare(prompt, a, b) -> "a" | "b" | "tie"`
is the other kind: it only compares.
"""

from __future__ import annotations

import re


def score(prompt: str, response: str) -> float:
    """Rewards a summary that names what the prompt names, in few words: +1 per capitalised word of the prompt
    it repeats, -0.1 per word beyond 12, -1 for an empty answer."""
    words = response.split()
    if not words:
        return -1.0
    named = set(re.findall(r"\b[A-Z][a-z]+\b", prompt))
    repeated = named & set(re.findall(r"\b[A-Z][a-z]+\b", response))
    return len(repeated) - 0.1 * max(0, len(words) - 12)


def compare(prompt: str, a: str, b: str) -> str:
    first, second = score(prompt, a), score(prompt, b)
    return "tie" if first == second else "a" if first > second else "b"
