"""The bundled example task: its generator, its data files and its gold judge."""

from __future__ import annotations

import ast
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

TASK = Path(__file__).resolve().parent.parent / "examples" / "summaries"
DATA = TASK / "data"
FILES = ("sft", "preferences", "rankings", "scores", "prompts", "test")


def _load(name: str, path: Path):
    """Import a file by path, the way lorahf loads a gold judge named in a recipe."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gold = _load("example_task_gold", TASK / "gold.py")
generate = _load("example_task_generate", TASK / "generate.py")


def _rows(name: str) -> list[dict]:
    with open(DATA / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _run_generator(out: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(TASK / "generate.py"), "--out", str(out), "--quiet", *args],
                   check=True, timeout=60)


def _same_files(a: Path, b: Path) -> None:
    names_a = sorted(p.name for p in a.iterdir())
    assert names_a == sorted(p.name for p in b.iterdir())
    for name in names_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ---------------------------------------------------------------------------------- generator
def test_generator_is_deterministic(tmp_path):
    _run_generator(tmp_path / "one", "--scale", "0.1")
    _run_generator(tmp_path / "two", "--scale", "0.1")
    _same_files(tmp_path / "one", tmp_path / "two")


def test_committed_data_matches_the_generator(tmp_path):
    # Regenerating must give the committed bytes, so the data cannot drift from the code.
    _run_generator(tmp_path)
    _same_files(tmp_path, DATA)


def test_files_have_the_documented_rows_and_columns():
    columns = {
        "sft": ["document", "summary"],
        "preferences": ["document", "better", "worse"],
        "rankings": ["document", "candidates", "ranks"],
        "scores": ["document", "summary", "rating"],
        "prompts": ["document"],
        "test": ["document", "reference"],
    }
    for name in FILES:
        rows = _rows(name)
        assert len(rows) == generate.ROWS[name]
        assert all(list(row) == columns[name] for row in rows), name
    assert sum((DATA / f"{name}.jsonl").stat().st_size for name in FILES) < 4 * 1024 * 1024


def test_documents_are_fresh_across_files():
    seen = set()
    for name in FILES:
        docs = [row["document"] for row in _rows(name)]
        assert len(set(docs)) == len(docs), name
        assert not seen & set(docs), name
        seen |= set(docs)


# ---------------------------------------------------------------------------------- gold judge
def test_facts_parses_every_document():
    for name in FILES:
        for row in _rows(name):
            f = gold.facts(row["document"])
            assert f is not None, row["document"]
            assert f["winner"] != f["loser"]
            assert f["winner_score"] > f["loser_score"]


def test_facts_tolerates_a_prompt_prefix_and_garbage():
    doc = _rows("test")[0]["document"]
    assert gold.facts("summarize: " + doc) == gold.facts(doc)
    assert gold.facts("") is None
    assert gold.facts("nothing to see here") is None


def test_every_reference_gets_the_max_score():
    for row in _rows("test"):
        assert gold.score(row["document"], row["reference"]) == gold.MAX_SCORE
        assert gold.score("summarize: " + row["document"], row["reference"]) == gold.MAX_SCORE


def test_reference_beats_every_flaw_type():
    rng = random.Random(0)
    for row in _rows("test")[:100]:
        doc, reference = row["document"], row["reference"]
        f = gold.facts(doc)
        for kind in generate.SFT_MIX:
            if kind == "reference":
                continue
            for _ in range(3):   # several templates and fillings per flaw
                flawed = generate.make_summary(rng, f, kind)
                assert gold.score(doc, flawed) < gold.score(doc, reference), (kind, flawed)
                assert gold.compare(doc, reference, flawed) == "a"
                assert gold.compare(doc, flawed, reference) == "b"


def test_wrong_facts_cost_more_than_missing_ones():
    row = _rows("test")[0]
    doc, f = row["document"], gold.facts(row["document"])
    rng = random.Random(0)
    s = lambda kind: gold.score(doc, generate.make_summary(rng, f, kind))  # noqa: E731
    assert s("wrong_score") < s("missing_score")
    assert s("wrong_city") < s("missing_city")
    assert s("swapped") < s("vague")


def test_empty_and_garbage_score_at_the_bottom():
    row = _rows("test")[0]
    doc = row["document"]
    vocab = sorted({w for r in _rows("sft")[:200] for w in r["document"].split()})
    rng = random.Random(0)
    assert gold.score(doc, "") == gold.EMPTY_SCORE
    assert gold.score(doc, "") < gold.score(doc, "A match was played.")
    # Random tokens, as from an untrained model: whole words, and word pieces.
    for _ in range(20):
        words = " ".join(rng.choice(vocab) for _ in range(rng.randint(15, 40)))
        pieces = " ".join(rng.choice(vocab)[:3] for _ in range(rng.randint(15, 40)))
        assert gold.score(doc, words) <= gold.MIN_SCORE + 1
        assert gold.score(doc, pieces) <= gold.MIN_SCORE + 1


def test_compare_ties_on_equal_scores():
    row = _rows("test")[0]
    assert gold.compare(row["document"], row["reference"], row["reference"]) == "tie"


def test_score_is_deterministic():
    row = _rows("sft")[0]
    assert gold.score(row["document"], row["summary"]) == gold.score(row["document"], row["summary"])


# ------------------------------------------------------------------------------------- labels
def test_preferences_are_distinct_and_about_ninety_percent_right():
    rows = _rows("preferences")
    assert generate.LABEL_FLIP_RATE == 0.10
    assert all(row["better"] != row["worse"] for row in rows)
    verdicts = [gold.compare(row["document"], row["better"], row["worse"]) for row in rows]
    assert "tie" not in verdicts
    accuracy = verdicts.count("a") / len(verdicts)
    assert 0.85 <= accuracy <= 0.95


def test_rankings_follow_the_gold_score_exactly():
    for row in _rows("rankings"):
        ranks, candidates = row["ranks"], row["candidates"]
        assert sorted(ranks) == [1, 2, 3, 4]
        assert len(set(candidates)) == 4
        by_rank = [candidates[ranks.index(r)] for r in (1, 2, 3, 4)]
        scores = [gold.score(row["document"], c) for c in by_rank]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4


def test_ratings_are_gold_scores_plus_small_noise():
    rows = _rows("scores")
    errors = [row["rating"] - gold.score(row["document"], row["summary"]) for row in rows]
    mean = sum(errors) / len(errors)
    std = (sum((e - mean) ** 2 for e in errors) / len(errors)) ** 0.5
    assert abs(mean) < 0.1 and 0.2 < std < 0.4


def test_sft_summaries_leave_room_above_imitation():
    rows = _rows("sft")
    mean = sum(gold.score(r["document"], r["summary"]) for r in rows) / len(rows)
    share = sum(r["summary"] == gold.reference_summary(gold.facts(r["document"])) for r in rows) / len(rows)
    assert mean < gold.MAX_SCORE - 1.0
    assert 0.40 <= share <= 0.50


@pytest.mark.parametrize("name", ["gold.py", "generate.py"])
def test_task_files_use_only_the_standard_library(name):
    stdlib = set(sys.stdlib_module_names) | {"gold", "__future__"}
    for node in ast.walk(ast.parse((TASK / name).read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module]
        else:
            continue
        assert all(m.split(".")[0] in stdlib for m in modules), modules
