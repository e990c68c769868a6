"""The Judger: compare two responses to one prompt, and turn the verdicts into preference data.

Every judge answers `compare(prompts, responses_a, responses_b)` with one `Judgement` per prompt
("a", "b" or "tie", with scores where the judge has them), or None where it gave no verdict (a
skipped item, a failed or malformed reply). Judges that score a single response also answer
`score(prompts, responses)`; PPO can train on those.

    reward  the run's trained reward model (built in: every run with a reward stage has it)
    python  a user's function: f(prompt, response) -> float, or f(prompt, a, b) -> "a" | "b" | "tie"
    llm     an OpenAI-compatible chat endpoint, asked both ways round (or in a random, recorded order)
    human   a person at the terminal, shown the two responses blinded and in random order

`PreferenceFile` appends judgements, flushed per row, in the pairwise format the reward stage reads
(prompt, chosen, rejected; a tie has `tie: true` and is not trained on), plus who judged and which
adapters wrote each response: the next round's reward model trains on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lorahf import roles
from lorahf.errors import LorahfError
from lorahf.runs import append_line

OUTCOMES = ("a", "b", "tie")
REWARD = roles.REWARD  # the built-in judge's name, and the adapter it reads


@dataclass(frozen=True)
class Judgement:
    outcome: str  # "a", "b" or "tie"
    score_a: float | None = None
    score_b: float | None = None
    note: str = ""  # how it was reached, e.g. "a,b" for an llm asked both ways


class Judge:
    """One interface for every judge; `interactive` judges need a person and never run unattended."""

    name: str
    interactive = False

    def compare(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> list[Judgement | None]:
        raise NotImplementedError


class ScoringJudge(Judge):
    """A judge that scores each response on its own; it compares by the scores."""

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotImplementedError

    def compare(self, prompts, responses_a, responses_b):
        scores_a, scores_b = self.score(prompts, responses_a), self.score(prompts, responses_b)
        return [Judgement("a" if a > b else "b" if b > a else "tie", a, b) for a, b in zip(scores_a, scores_b)]


# ------------------------------------------------------------------------------------------- python
class PythonScoreJudge(ScoringJudge):
    """Scores responses with a user's function f(prompt, response) -> float."""

    def __init__(self, name: str, target: str, function: Callable | None = None):
        self.name, self.target = name, target
        self.function = function or load_function(target)

    def score(self, prompts, responses):
        scores = []
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            value = self.function(prompt, response)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise LorahfError(f"judge '{self.name}' ({self.target}): returned {value!r} for item {row}; "
                                  "a scoring function must return a number")
            scores.append(float(value))
        return scores


class PythonPairwiseJudge(Judge):
    """Compares responses with a user's function f(prompt, a, b) -> "a" | "b" | "tie"."""

    def __init__(self, name: str, target: str, function: Callable | None = None):
        self.name, self.target = name, target
        self.function = function or load_function(target)

    def compare(self, prompts, responses_a, responses_b):
        found = []
        for row, (prompt, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
            outcome = self.function(prompt, a, b)
            if outcome not in OUTCOMES:
                raise LorahfError(f"judge '{self.name}' ({self.target}): returned {outcome!r} for item {row}; "
                                  "a pairwise function must return 'a', 'b' or 'tie'")
            found.append(Judgement(outcome))
        return found


def python_judge(name: str, target: str) -> Judge:
    """A scoring or a pairwise judge, told apart by the function's number of parameters (2 or 3)."""
    function = load_function(target)
    try:
        parameters = [p for p in inspect.signature(function).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        parameters = []
    if len(parameters) == 2:
        return PythonScoreJudge(name, target, function)
    if len(parameters) == 3:
        return PythonPairwiseJudge(name, target, function)
    raise LorahfError(f"judge '{name}': {target} takes {len(parameters)} required arguments; expected "
                      "(prompt, response) -> score or (prompt, a, b) -> 'a' | 'b' | 'tie'")


def load_function(target: str) -> Callable:
    """Import `module:function` or `path/to/file.py:function`."""
    location, sep, attribute = target.rpartition(":")
    if not sep or not location or not attribute:
        raise LorahfError(f"judge '{target}': expected module:function or path/to/file.py:function")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise LorahfError(f"judge '{target}': file {location} not found")
        name = f"lorahf_judge_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # the user's file: say where it broke, in one line
            sys.modules.pop(name, None)
            line = f" line {error.lineno}" if isinstance(error, SyntaxError) else ""
            raise LorahfError(f"judge '{target}': {location}{line} failed to import "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:  # ImportError, or the module's own code failing
            raise LorahfError(f"judge '{target}': cannot import {location} ({error})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise LorahfError(f"judge '{target}': {location} has no function {attribute}")
    return function


# ------------------------------------------------------------------------------------------- reward
class RewardJudge(ScoringJudge):
    """The run's trained reward model's scores (either form: lorahf.reward_model)."""

    name = REWARD

    def __init__(self, reward):
        self.reward = reward

    def score(self, prompts, responses):
        return self.reward.score(prompts, responses)


# ---------------------------------------------------------------------------------------------- llm
class LLMJudge(Judge):
    """Asks an OpenAI-compatible chat endpoint which response is better.

    The reply's first standalone A, B or TIE is the verdict; anything else is malformed (no verdict).
    Position bias: `both` asks in both orders and keeps a verdict only when the two agree (else tie);
    `random` asks once in a random order from the seed and records the order in the note."""

    def __init__(self, name: str, spec, seed: int = 0, client=None):
        self.name, self.spec, self.seed = name, spec, seed
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=spec.base_url, api_key=api_key(name, spec), timeout=spec.timeout,
                            max_retries=spec.max_retries)
        self.client = client

    def compare(self, prompts, responses_a, responses_b):
        rng = random.Random(self.seed)
        orders = [rng.random() < 0.5 for _ in prompts]  # drawn up front: the same whatever the thread timing
        with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
            return list(pool.map(self._one, prompts, responses_a, responses_b, orders))

    def _one(self, prompt: str, a: str, b: str, swap: bool) -> Judgement | None:
        if self.spec.position_bias == "both":
            first, second = self._ask(prompt, a, b), self._ask(prompt, b, a)
            if first is None or second is None:
                return None
            second = {"a": "b", "b": "a"}.get(second, second)  # back to this call's a/b
            return Judgement(first if first == second else "tie", note=f"asked both ways: {first}, {second}")
        outcome = self._ask(prompt, b, a) if swap else self._ask(prompt, a, b)
        if outcome is None:
            return None
        if swap:
            outcome = {"a": "b", "b": "a"}.get(outcome, outcome)
        return Judgement(outcome, note="shown b first" if swap else "shown a first")

    def _ask(self, prompt: str, first: str, second: str) -> str | None:
        import openai

        message = self.spec.template.format(prompt=prompt, a=first, b=second)
        try:
            reply = self.client.chat.completions.create(
                model=self.spec.model, messages=[{"role": "user", "content": message}],
                temperature=self.spec.temperature, max_tokens=self.spec.max_tokens)
            text = reply.choices[0].message.content or ""
        except (openai.APIError, openai.APIConnectionError, IndexError, AttributeError):
            return None  # after the client's own retries: this item gets no verdict
        return parse_verdict(text)


def api_key(name: str, spec) -> str:
    """The LLM judge's key from its environment variable (a placeholder for endpoints without keys)."""
    if not spec.api_key_env:
        return "not-needed"
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise LorahfError(f"judge '{name}': environment variable {spec.api_key_env} is not set",
                          hint="export it, or set judges.<name>.llm.api_key_env: null for an endpoint without keys")
    return key


def parse_verdict(text: str) -> str | None:
    """"a", "b" or "tie" from a judge's reply ("A", "Response B", "Tie."), None when it says none of them."""
    match = re.search(r"\b(A|B|TIE)\b", text.upper())
    return match.group(1).lower() if match else None


# -------------------------------------------------------------------------------------------- human
class HumanJudge(Judge):
    """A person at the terminal picks A, B or tie for each prompt, blinded to which adapter wrote which.

    Keys: a / b / t (tie) / s (skip) / u (undo the last choice) / q (quit). Every choice is written to
    the preference file at once, so quitting or a kill loses nothing; `undo` removes the last row."""

    interactive = True
    KEYS = "a / b / t tie / s skip / u undo / q quit"

    def __init__(self, name: str, seed: int = 0, console=None, read_key: Callable[[], str] | None = None):
        from rich.console import Console

        self.name, self.seed = name, seed
        self.console = console or Console(highlight=False)
        self.read_key = read_key or _read_key

    def session(self, items: list[dict], out: "PreferenceFile") -> dict[str, int]:
        """Judge `items` ({prompt, a, b, a_by, b_by}) not judged in `out` already; return the counts."""
        from rich.panel import Panel

        pending = [i for i, item in enumerate(items) if not out.has(item)]
        done_before = len(items) - len(pending)
        counts = {"judged": 0, "skipped": 0}
        history: list[int] = []  # positions in `pending` judged in this session, for undo
        position = 0
        while position < len(pending):
            item = items[pending[position]]
            swap = random.Random(f"{self.seed}:{item['prompt']}").random() < 0.5  # blinded, stable on resume
            left, right = (item["b"], item["a"]) if swap else (item["a"], item["b"])
            self.console.rule(f"{done_before + counts['judged'] + 1} of {len(items)}")
            self.console.print(Panel(item["prompt"], title="prompt", title_align="left"))
            self.console.print(Panel(left, title="A", title_align="left"))
            self.console.print(Panel(right, title="B", title_align="left"))
            self.console.print(f"which is better? [bold]{self.KEYS}[/bold]")
            key = self.read_key().lower()
            if key == "q":
                break
            if key == "u":
                if history and out.undo():
                    position = history.pop()
                    counts["judged"] -= 1
                    self.console.print("[yellow]undone[/yellow]")
                else:
                    self.console.print("[dim]nothing to undo in this session[/dim]")
                continue
            if key == "s":
                counts["skipped"] += 1
                position += 1
                continue
            if key not in ("a", "b", "t"):
                self.console.print(f"[red]unknown key {key!r}[/red]")
                continue
            shown = {"a": "a", "b": "b", "t": "tie"}[key]
            outcome = {"a": "b", "b": "a"}.get(shown, shown) if swap else shown
            out.append(item, Judgement(outcome, note="shown b first" if swap else "shown a first"), self.name)
            history.append(position)
            counts["judged"] += 1
            position += 1
        counts["total_judged"] = done_before + counts["judged"]
        return counts

    def compare(self, prompts, responses_a, responses_b):
        raise LorahfError(f"judge '{self.name}' is a person: use `lorahf judge RUN --judge {self.name}`")


def _read_key() -> str:
    import click

    return click.getchar()


# --------------------------------------------------------------------------------- preference files
class PreferenceFile:
    """A preference JSONL the reward stage reads, appended one flushed row per judgement.

    Rows: prompt, chosen, rejected (a tie: a's response as chosen, `tie: true`), judge, chosen_by,
    rejected_by. `has(item)` says whether an item (a prompt and its two responses) is judged already."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offsets: list[int] = []  # file size before each row appended by this object, for undo
        self.judged: set[tuple] = set()
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self.judged |= _keys(row["prompt"], row["chosen"], row["rejected"], row.get("chosen_by"),
                                         row.get("rejected_by"))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LorahfError(f"{self.path}: line {number} is not a preference row "
                                      "(prompt, chosen, rejected)", hint="give a new --out file") from None

    def has(self, item: dict) -> bool:
        return bool(_keys(item["prompt"], item["a"], item["b"], item.get("a_by"), item.get("b_by")) & self.judged)

    def append(self, item: dict, judgement: Judgement, judge: str) -> None:
        row = preference_row(item, judgement.outcome, judge)
        if judgement.note:
            row["note"] = judgement.note
        self.offsets.append(self.path.stat().st_size if self.path.exists() else 0)
        append_line(self.path, json.dumps(row, ensure_ascii=False))
        self.judged |= _keys(item["prompt"], item["a"], item["b"], item.get("a_by"), item.get("b_by"))

    def undo(self) -> bool:
        """Remove the last row this object appended; False when there is none."""
        if not self.offsets:
            return False
        last = self.path.read_text(encoding="utf-8").encode("utf-8")[self.offsets[-1]:].decode("utf-8")
        row = json.loads(last)
        with open(self.path, "r+b") as handle:
            handle.truncate(self.offsets.pop())
        self.judged -= _keys(row["prompt"], row["chosen"], row["rejected"], row.get("chosen_by"), row.get("rejected_by"))
        return True


def preference_row(item: dict, outcome: str, judge: str) -> dict:
    """A verdict on an item ({prompt, a, b, a_by, b_by}) as the pairwise row the reward stage reads: the winner as
    chosen (a tie: a's answer, `tie: true`, not trained on), and which adapters wrote each."""
    won_by_b = outcome == "b"
    return {"prompt": item["prompt"], "chosen": item["b"] if won_by_b else item["a"],
            "rejected": item["a"] if won_by_b else item["b"], "tie": outcome == "tie", "judge": judge,
            "chosen_by": item.get("b_by" if won_by_b else "a_by"),
            "rejected_by": item.get("a_by" if won_by_b else "b_by")}


def _keys(prompt: str, first: str, second: str, first_by: str | None, second_by: str | None) -> set[tuple]:
    """What makes an item judged already: the prompt and the two responses, or, where known, the prompt and the
    two adapters that wrote them (sampled answers can change with the batch they were drawn in)."""
    keys = {("texts", prompt, frozenset((first, second)))}
    if first_by and second_by:
        keys.add(("adapters", prompt, frozenset((first_by, second_by))))
    return keys


# -------------------------------------------------------------------------------------- the recipe's
def build_judges(recipe, reward=None, names: list[str] | None = None, interactive: bool = False) -> dict[str, Judge]:
    """The recipe's judges by name, plus `reward` when the run's reward model is given (lorahf.reward_model.of_run).

    `names` picks some (in that order); a person (human judge) is included only when `interactive`."""
    available: dict[str, Callable[[], Judge]] = {}
    if reward is not None:
        available[REWARD] = lambda: RewardJudge(reward)
    for name, spec in recipe.judges.items():
        if spec.python:
            available[name] = lambda name=name, spec=spec: python_judge(name, spec.python)
        elif spec.llm:
            available[name] = lambda name=name, spec=spec: LLMJudge(name, spec.llm, recipe.seed)
        elif spec.human and interactive:
            available[name] = lambda name=name: HumanJudge(name, recipe.seed)
    if names is None:
        return {name: make() for name, make in available.items()}
    missing = [name for name in names if name not in available]
    if missing:
        raise LorahfError(f"no judge named {', '.join(missing)} here (available: {', '.join(available) or 'none'})",
                          hint="judges come from the recipe's `judges:`; `reward` needs a trained reward stage")
    return {name: available[name]() for name in names}


def scoring_judges(recipe) -> dict[str, ScoringJudge]:
    """The recipe's judges that score single responses (what PPO can train on or pick its best by)."""
    python = [name for name, spec in recipe.judges.items() if spec.python]
    return {name: judge for name, judge in build_judges(recipe, names=python).items()
            if isinstance(judge, ScoringJudge)}
