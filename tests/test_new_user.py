"""Issue 19's new user: a task of their own in another domain (tests/weather.py, generated here, with column names
that are neither lorahf's nor the example's), a tiny base built from it, `lorahf init` on the folder, and the
recipe it writes run as written: every check of the table holds. The only addition is the task's gold judge,
given on the command line, which lorahf cannot know."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import REPO
from tests.weather import write_task


def test_init_writes_a_recipe_for_its_base_whose_whole_run_passes_its_checks(tmp_path):
    write_task(tmp_path / "data", prompts=200, held_out=64)
    lorahf = [sys.executable, "-m", "lorahf"]

    def step(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(lorahf + list(args), cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
        return done

    step("make-tiny", "--data", "data", "--out", "models/tiny")
    step("init", "data", "--base", "models/tiny", "--out", "recipe.yaml")
    written = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert written["sft"]["data"]["columns"] == {"prompt": "weather_log", "response": "forecast"}
    assert written["sft"]["learning_rate"] == 1e-3 and written["ppo"]["data"]["eval_files"] == ["data/validation.jsonl"]

    done = step("run", "recipe.yaml", "--set", f"judges.gold.python={REPO / 'tests' / 'weather.py'}:score",
                timeout=1200)
    assert "✗" not in done.stdout, done.stdout
    markers = {stage: json.loads((tmp_path / "runs" / "recipe" / "stages" / f"{stage}.json").read_text())["metrics"]
               for stage in ("sft", "reward", "ppo", "evaluate")}
    sft, reward, ppo = markers["sft"], markers["reward"], markers["ppo"]
    assert sft["gold_win_rate_vs_untrained"] > 0.9 and sft["gold_score"] > sft["gold_score_untrained"] + 5
    report = (tmp_path / "runs" / "recipe" / "report.md").read_text()
    assert "| sft | ✓ | the gold judge scores SFT answers close to the held-out references |" in report
    assert "| ✗ |" not in report
    assert reward["gate"] == "pass" and reward["eval_accuracy"] > 0.6
    assert ppo["reward_policy"] > ppo["reward_sft"]
