"""Four SIGKILLs of a short four-stage run, two at random moments and two inside saves, each followed by the
same command: the run completes, every file parses, nothing temporary is left, each step is logged once, and
the final metrics equal an uninterrupted run's (benchmarks/kill_resume.py; BENCHMARKS.md has the long version)."""

from __future__ import annotations

import importlib.util

import yaml

from tests.conftest import REPO, tiny_ppo_section, tiny_reward_section, tiny_run_recipe


def _harness():
    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "benchmarks" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kills_at_random_moments_and_inside_saves_end_where_an_unbroken_run_does(tmp_path, tiny_model_dir):
    raw = tiny_run_recipe(
        tmp_path, tiny_model_dir, "killed", ["sft", "reward", "ppo", "evaluate"], sft_steps=24,
        reward=tiny_reward_section(max_steps=12, eval_every=6),
        ppo=tiny_ppo_section(iterations=4, eval_every=3, checkpoint_every=2),
        evaluate={"max_prompts": 8})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    result = _harness().main(["--recipe", "recipe.yaml", "--kills", "4", "--mode", "mixed", "--seed", "1",
                              "--cwd", str(tmp_path)])
    assert result["kills"] == 4 and result["problems"] == [], result
    assert sum("(save" in where for where in result["landed_in"]) == 2, result  # two of them inside saves
