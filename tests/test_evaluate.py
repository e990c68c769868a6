"""The evaluation stage, `lorahf eval`, `lorahf judge` (a person at the keyboard, driven by pexpect) and the
report, on one short real run of the tiny T5: sft, reward, two PPO iterations, evaluate."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
from click.testing import CliRunner

from lorahf import pipeline
from lorahf.cli import main
from lorahf.recipe import dump, validate
from lorahf.runs import RunFolder, load_run

from tests.conftest import EXAMPLE_DATA, REPO, tiny_ppo_section, tiny_reward_section, tiny_run_recipe

PROMPTS = 6  # held-out prompts evaluated


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """A finished run folder with sft, reward, policy, policy-last and value adapters and an evaluate marker."""
    root = tmp_path_factory.mktemp("evaluate")
    raw = tiny_run_recipe(
        root, tiny_model_dir, "eval-toy", ["sft", "reward", "ppo", "evaluate"], sft_steps=40,
        judges={"gold": {"python": f"{EXAMPLE_DATA.parent / 'gold.py'}:score"}, "person": {"human": True}},
        reward=tiny_reward_section(max_steps=6, eval_every=3),
        ppo=tiny_ppo_section(iterations=2, eval_every=1, policy_learning_rate=1e-2),  # a big step: policy != sft
        evaluate={"max_prompts": PROMPTS, "adapters": ["sft", "policy-last"]})  # policy may be iteration 0
    result = pipeline.run(validate(raw))
    return result


def test_evaluate_stage_writes_its_contract(run):
    metrics = run.metrics["evaluate"]
    assert metrics["adapters"] == ["sft", "policy-last"] and metrics["eval_prompts"] == PROMPTS
    for adapter in ("sft", "policy-last"):
        for name in ("rouge_l", "rouge_1", "rouge_2", "bleu", "meteor", "reward_mean", "kl", "length"):
            assert metrics[f"{name}.{adapter}"] is not None, f"{name}.{adapter}"
    assert metrics["kl.sft"] == 0.0 and metrics["kl.policy-last"] > 0
    assert isinstance(metrics["meteor_synonyms"], bool)
    for judge in ("gold", "reward"):  # people never judge unattended
        low, high = metrics[f"win_rate_ci.{judge}"]
        assert 0 <= low <= metrics[f"win_rate.{judge}"] <= high <= 1
        counts = metrics[f"judged.{judge}"]
        assert counts["wins"] + counts["losses"] + counts["ties"] + counts["no_verdict"] == PROMPTS
        rows = [json.loads(line) for line in (run.folder.root / "judgements" / f"{judge}.jsonl").read_text().splitlines()]
        assert len(rows) == PROMPTS
        assert sum(r["chosen_by"] == "policy-last" and not r["tie"] for r in rows) == counts["wins"]
    assert "win_rate.person" not in metrics
    samples = [json.loads(line) for line in run.folder.samples_path("evaluate").read_text().splitlines()]
    assert len(samples) == PROMPTS and {"prompt", "reference", "sft", "policy-last"} <= samples[0].keys()


def test_report_has_a_table_per_stage_and_the_plots(run):
    report = run.report.read_text()
    for stage in ("sft", "reward", "ppo", "evaluate"):
        assert f"## {stage}" in report
        assert f"![{stage}](plots/{stage}.png)" in report
        png = run.folder.root / "plots" / f"{stage}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "| gold | policy-last |" in report and "| reward | policy-last |" in report
    assert "METEOR" in report


def test_lorahf_eval_compares_more_adapters_and_rewrites_the_report(run):
    result = CliRunner().invoke(main, ["eval", str(run.folder.root), "--adapter", "sft", "--adapter", "policy",
                                       "--adapter", "policy-last", "--judge", "gold"])
    assert result.exit_code == 0, result.output
    metrics = RunFolder(run.folder.root).marker("evaluate").metrics
    assert metrics["adapters"] == ["sft", "policy", "policy-last"]
    assert "win_rate.gold" in metrics and "win_rate.gold.policy-last" in metrics and "win_rate.reward" not in metrics
    assert "| gold | policy-last |" in (run.folder.root / "report.md").read_text()
    assert "| gold | policy |" in (run.folder.root / "report.md").read_text()
    result = CliRunner().invoke(main, ["report", str(run.folder.root)])
    assert result.exit_code == 0 and "report.md" in result.output


def test_lorahf_eval_names_a_missing_adapter(run):
    result = CliRunner().invoke(main, ["eval", str(run.folder.root), "--adapter", "sft", "--adapter", "nope"])
    assert result.exit_code == 1
    assert "'nope' adapter" in result.output and "does not exist" in result.output


def test_lorahf_judge_with_the_reward_model_appends_and_resumes(run, tmp_path):
    out = tmp_path / "by-reward.jsonl"
    args = ["judge", str(run.folder.root), "--judge", "reward", "--b", "policy-last", "--n", "3", "--out", str(out)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert len(out.read_text().splitlines()) == 3
    again = CliRunner().invoke(main, args[:-4] + ["--n", "4", "--out", str(out)])
    assert again.exit_code == 0 and "4 judged" in again.output
    assert len(out.read_text().splitlines()) == 4  # only the new prompt was judged


def _panel(screen: str, title: str) -> str:
    """The one-line text inside the last rich panel titled `title` on the screen."""
    found = re.findall(rf"╭─ {title} ─+╮\r?\n│ (.*?)\s*│", screen)
    return found[-1]


def test_a_person_judges_at_the_keyboard_with_undo_quit_and_resume(run, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    out = tmp_path / "prefs.round2.jsonl"
    command = [sys.executable, "-m", "lorahf", "judge", str(run.folder.root), "--judge", "person", "--a", "sft",
               "--b", "policy-last", "--n", "3", "--out", str(out)]
    env = {**os.environ, "COLUMNS": "200", "LINES": "60", "PYTHONPATH": str(REPO)}
    child = pexpect.spawn(command[0], command[1:], env=env, encoding="utf-8", timeout=120, dimensions=(60, 200))
    shown = []
    for key in ("a", "u", "b", "t"):  # choose A, undo it, choose B instead, then tie the second
        child.expect(r"q quit")
        shown.append((_panel(child.before, "prompt"), _panel(child.before, "A"), _panel(child.before, "B")))
        child.send(key)
    child.expect(r"q quit")
    child.send("q")
    child.expect(pexpect.EOF)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    prompt, left, right = shown[2]  # the first prompt again, after the undo
    assert shown[2] == shown[0]
    assert rows[0]["chosen"].startswith(right[:30]) and rows[0]["rejected"].startswith(left[:30])
    assert {rows[0]["chosen_by"], rows[0]["rejected_by"]} == {"sft", "policy-last"}
    assert rows[1]["tie"] is True and rows[0]["tie"] is False and rows[0]["judge"] == "person"

    # Resume: the third prompt comes up first; quitting at once leaves the file as it was
    child = pexpect.spawn(command[0], command[1:], env=env, encoding="utf-8", timeout=120, dimensions=(60, 200))
    child.expect(r"q quit")
    assert "3 of 3" in child.before
    child.send("q")
    child.expect(pexpect.EOF)
    assert len(out.read_text().splitlines()) == 2

    # Round 2: a recipe whose reward data lists the original preferences and the judged file reads both
    recipe = validate({**json.loads(json.dumps(dump_raw(run))), "stages": ["sft", "reward"]})
    recipe.reward.data.files = [str(EXAMPLE_DATA / "preferences.jsonl"), str(out)]
    recipe.reward.data.max_rows = None
    rows_read = pipeline.describe(recipe)
    assert rows_read[2][0] == "reward" and rows_read[2][2].startswith("2501 rows")  # 2500 + 1 (the tie is not one)


def dump_raw(run) -> dict:
    import yaml

    return yaml.safe_load(dump(load_run(run.folder.root)))

