"""SIGKILLs of a short four-stage run, at a random moment and inside a save, each followed by the
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
    result = _harness().main(["--recipe", "recipe.yaml", "--kills", "2", "--mode", "mixed", "--seed", "1",
                              "--cwd", str(tmp_path)])
    assert result["kills"] == 2 and result["problems"] == [], result
    assert sum("(save" in where for where in result["landed_in"]) == 1, result  # one of them inside a save


def test_kills_inside_sft_reward_and_dpo_resume_from_their_last_checkpoint(tmp_path, tiny_model_dir):
    """Three SIGKILLs just after random optimizer steps of sft, reward and dpo: each next start takes the stage up at
    its last checkpoint's next step (not at step 1), and the run ends with the unbroken run's metrics, bit for bit."""
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "stepped", ["sft", "reward", "dpo"], sft_steps=16,
                          reward=tiny_reward_section(max_steps=12, eval_every=4),
                          dpo={"max_steps": 12, "eval_every": 4, "checkpoint_every": 5, "patience": None,
                               "batch_size": 8})
    raw["sft"].update(eval_every=4, checkpoint_every=5)
    raw["reward"].update(checkpoint_every=5, patience=None)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    result = _harness().main(["--recipe", "recipe.yaml", "--kills", "3", "--mode", "steps", "--seed", "1",
                              "--tolerance", "0", "--cwd", str(tmp_path)])
    assert result["kills"] == 3 and result["problems"] == [], result
    assert {where.split()[0] for where in result["landed_in"]} == {"sft", "reward", "dpo"}, result
    assert all(int(where.split()[1]) > 1 for where in result["resumed_at"]), result  # resumed, not started over
