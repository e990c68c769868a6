"""The examples/ scripts, run as a user runs them, on the tiny model: the pipeline from Python with a judge of
one's own, and a trained adapter loaded with plain peft (it answers as `lorahf generate` does)."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.conftest import REPO, tiny_ppo_section, tiny_reward_section, tiny_run_recipe


def test_run_from_python_with_a_custom_judge_then_load_the_adapter_with_plain_peft(tmp_path, tiny_model_dir):
    raw = tiny_run_recipe(tmp_path, tiny_model_dir, "example", ["sft", "reward", "ppo", "evaluate"], sft_steps=4,
                          reward=tiny_reward_section(max_steps=2, eval_every=2), ppo=tiny_ppo_section(iterations=1),
                          evaluate={"max_prompts": 6})
    raw["model"]["quantization"] = "none"  # plain peft below loads the base unquantized, as merge does
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, str(REPO / "examples" / "run_from_python.py"), "recipe.yaml",
                           "--set", "evaluate.greedy=true"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the concise judge prefers policy to sft in" in done.stdout, done.stdout
    run = tmp_path / "runs" / "example"
    assert (run / "judgements" / "concise.jsonl").is_file()

    prompt = "Bears claimed a 2-1 win over Owls. The game was played in Leeds on Monday."
    plain = subprocess.run([sys.executable, str(REPO / "examples" / "load_with_peft.py"), str(run), "policy", prompt],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    ours = subprocess.run([sys.executable, "-m", "lorahf", "generate", str(run), "--adapter", "policy", "--prompt",
                           prompt], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert plain.stdout.strip() and plain.stdout.split() == ours.stdout.split()
