"""Three SIGKILLs at random moments of a short four-stage run, each followed by the same command: the run
completes, every file parses, nothing temporary is left, each step is logged once, and the final metrics
equal an uninterrupted run's (benchmarks/kill_resume.py; BENCHMARKS.md has the long version)."""

from __future__ import annotations

import importlib.util

import yaml

from tests.conftest import EXAMPLE_DATA, REPO, tiny_run_recipe


def _harness():
    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "benchmarks" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_kills_and_resumes_end_where_an_unbroken_run_does(tmp_path, tiny_model_dir):
    raw = tiny_run_recipe(
        tmp_path, tiny_model_dir, "killed", ["sft", "reward", "ppo", "evaluate"], sft_steps=40,
        reward={"data": {"files": [str(EXAMPLE_DATA / "preferences.jsonl")], "max_rows": 200,
                         "columns": {"prompt": "document", "chosen": "better", "rejected": "worse"}},
                "max_steps": 20, "eval_every": 10, "min_accuracy": 0.0},
        ppo={"data": {"files": [str(EXAMPLE_DATA / "prompts.jsonl")], "max_rows": 64,
                      "eval_files": [str(EXAMPLE_DATA / "test.jsonl")], "columns": {"prompt": "document"}},
             "iterations": 4, "batch_size": 8, "minibatch_size": 4, "epochs": 1, "eval_every": 3,
             "eval_prompts": 4, "checkpoint_every": 2},
        evaluate={"max_prompts": 8})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    result = _harness().main(["--recipe", "recipe.yaml", "--kills", "3", "--seed", "1", "--cwd", str(tmp_path)])
    print(result)
    assert result["kills"] == 3 and result["problems"] == [], result
