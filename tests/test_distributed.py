"""`accelerate launch --multi_gpu --num_processes 2 -m lorahf run` on the CPU (gloo): SFT and the reward stage split
across two processes end where one process with the same global batch does (within float rounding), and only one
process writes the run folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml
from safetensors.torch import load_file

from lorahf import pipeline
from lorahf.recipe import validate
from tests.conftest import tiny_reward_section, tiny_run_recipe

# Each process sums its share, then the shares are added: float sums in another order. Adam turns the last bits
# of a near-zero gradient into a whole step (its update is about lr * sign), so weights differ by up to ~2e-4
# after 6 steps (measured 1.6e-4; the largest weight is 0.09). Without the gradient sum they differ by 1e-2.
WEIGHT_TOLERANCE = 1e-3
LOSS_TOLERANCE = 1e-3  # relative
SCORE_TOLERANCE = 5e-3  # absolute, on scores about 0.1 (measured 1.3e-3)


def test_two_processes_train_sft_and_reward_like_one_with_the_same_global_batch(tmp_path, tiny_model_dir):
    model = tmp_path / "no-dropout"  # dropout draws differ by process; without it the two runs compute the same
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dropout_rate": 0.0}))
    raw = tiny_run_recipe(tmp_path, model, "one", ["sft", "reward"], sft_steps=6,
                          reward={**tiny_reward_section(max_steps=4, eval_every=2), "batch_size": 8})
    raw["sft"].update(batch_size=8, eval_every=3)
    raw["lora"] = {"sft": {"dropout": 0.0}, "reward": {"dropout": 0.0}}
    one = pipeline.run(validate(raw)).folder.root

    raw["name"] = "two"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    # `--multi_gpu` is accelerate's multi-process launcher (torch's elastic launch); on a machine without a GPU
    # the processes join over gloo. (`--cpu` alone starts one process.)
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "lorahf", "run", str(tmp_path / "recipe.yaml")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "runs" / "two"

    metrics = [json.loads((root / "stages" / "sft.json").read_text())["metrics"] for root in (two, one)]
    for key in ("train_loss_first", "train_loss_last", "eval_loss"):
        assert abs(metrics[0][key] - metrics[1][key]) < LOSS_TOLERANCE * abs(metrics[1][key]), (key, metrics)
    for role in ("sft", "reward"):
        ours, theirs = (load_file(root / "adapters" / role / "adapter_model.safetensors") for root in (two, one))
        assert ours.keys() == theirs.keys()
        assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < WEIGHT_TOLERANCE, role
    reward = [json.loads((root / "stages" / "reward.json").read_text())["metrics"] for root in (two, one)]
    for key in ("train_loss_first", "train_loss_last"):  # the reward stage's own steps: measured equal to 1e-6
        assert abs(reward[0][key] - reward[1][key]) < LOSS_TOLERANCE * abs(reward[1][key]), (key, reward)
    for key in ("eval_margin", "offset"):  # scores of the best adapter, here the sft copy it started from, whose
        assert abs(reward[0][key] - reward[1][key]) < SCORE_TOLERANCE, (key, reward)  # weights differ as above
    assert reward[0]["eval_accuracy"] == reward[1]["eval_accuracy"]
    steps = [(r["step"], tuple(sorted(r))) for r in map(json.loads, (two / "metrics.jsonl").read_text().splitlines())]
    assert len(steps) == len(set(steps))  # one writer: each step logged once
