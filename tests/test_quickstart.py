"""The README's quickstart, run as a user runs it: `lorahf run recipes/quickstart.yaml` (about 13 minutes), then the README's deployment commands on its run."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_end_to_end(tmp_path):
    readme = (REPO / "README.md").read_text()
    command = re.search(r"<!-- quickstart-command -->\n```bash\n(.*)\n```", readme).group(1)
    run_part = command.split("&&")[-1].strip()
    assert run_part == "lorahf run recipes/quickstart.yaml"
    for folder in ("recipes", "examples"):  # a copy, so the test never touches the user's runs/ or models/
        shutil.copytree(REPO / folder, tmp_path / folder)

    lorahf = [sys.executable, "-m", "lorahf"]
    done = subprocess.run(lorahf + run_part.split()[1:], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "✗" not in done.stdout, done.stdout

    run = tmp_path / "runs" / "quickstart"
    sft = json.loads((run / "stages" / "sft.json").read_text())["metrics"]
    reward = json.loads((run / "stages" / "reward.json").read_text())["metrics"]
    assert sft["eval_loss"] < 0.3 * sft["eval_loss_untrained"]
    assert sft["gold_win_rate_vs_untrained"] > 0.9
    assert reward["gate"] == "pass" and reward["eval_accuracy"] >= 0.7 and reward["eval_pairs"] == 250
    ppo = json.loads((run / "stages" / "ppo.json").read_text())["metrics"]
    assert ppo["reward_policy"] > ppo["reward_sft"] and ppo["gold_score_policy"] > ppo["gold_score_sft"]
    assert ppo["gold_win_rate_vs_sft"] > 0.5 and 0 < ppo["kl"] < ppo["kl_limit"]
    assert (run / "adapters" / "policy" / "adapter_model.safetensors").is_file()
    assert not (run / "checkpoints" / "ppo").exists()
    assert (run / "adapters" / "sft" / "adapter_model.safetensors").is_file()
    assert (run / "adapters" / "reward" / "head.safetensors").is_file()

    evaluate = json.loads((run / "stages" / "evaluate.json").read_text())["metrics"]
    assert evaluate["adapters"] == ["sft", "policy"] and evaluate["eval_prompts"] == 200
    for judge in ("gold", "reward"):
        low, high = evaluate[f"win_rate_ci.{judge}"]
        assert low <= evaluate[f"win_rate.{judge}"] <= high
    assert evaluate["reward_mean.policy"] > evaluate["reward_mean.sft"]
    report = (run / "report.md").read_text()
    assert "| gold | policy |" in report and "| reward | policy |" in report
    assert all((run / "plots" / f"{stage}.png").is_file() for stage in ("sft", "reward", "ppo", "evaluate"))
    assert "report.md" in done.stdout

    again = subprocess.run(lorahf + run_part.split()[1:], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skipped" in again.stderr + again.stdout

    # The README's deployment section, as written: merge, generate, and the adapter with plain peft
    commands = re.search(r"<!-- deploy-commands -->\n```bash\n(.*?)\n```", readme, re.S).group(1).splitlines()
    outputs = []
    for line in commands:
        assert line.startswith("lorahf ")
        step = subprocess.run(lorahf + shlex.split(line)[1:], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert step.returncode == 0, (line, step.stderr[-2000:])
        outputs.append(" ".join(step.stdout.split()))
    assert "16 of 16 held-out greedy answers identical" in outputs[0]
    assert outputs[1]  # the merged model's answer
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 200
    snippet = re.search(r"<!-- deploy-python -->\n```python\n(.*?)\n```", readme, re.S).group(1)
    python = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert python.returncode == 0 and python.stdout.strip(), python.stderr[-2000:]

    # recipes/quickstart-dpo.yaml on the same SFT: its sft stage has the quickstart's stage hash, so the finished
    # stage is copied over and skipped, as the same recipe would skip it in one run folder (saves its 7 minutes)
    dpo_run = tmp_path / "runs" / "quickstart-dpo"
    shutil.copytree(run / "adapters" / "sft", dpo_run / "adapters" / "sft")
    (dpo_run / "stages").mkdir()
    shutil.copy(run / "stages" / "sft.json", dpo_run / "stages" / "sft.json")
    (dpo_run / "metrics.jsonl").write_text("".join(line + "\n" for line in (run / "metrics.jsonl").read_text().splitlines()
                                                   if json.loads(line)["stage"] == "sft"))
    done = subprocess.run(lorahf + ["run", "recipes/quickstart-dpo.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft: done already (same recipe), skipped" in done.stderr + done.stdout
    assert "✗" not in done.stdout, done.stdout
    dpo = json.loads((dpo_run / "stages" / "dpo.json").read_text())["metrics"]
    evaluate = json.loads((dpo_run / "stages" / "evaluate.json").read_text())["metrics"]
    assert dpo["eval_accuracy"] > 0.7 and dpo["eval_loss"] < dpo["eval_loss_start"] and not dpo["alarms"]
    assert evaluate["adapters"] == ["sft", "policy"] and evaluate["win_rate_ci.gold"][0] > 0.5, evaluate
    report = (dpo_run / "report.md").read_text()
    assert "| evaluate | ✓ | the gold judge prefers policy to sft |" in report and "## dpo" in report


def test_causal_quickstart_end_to_end(tmp_path):
    """recipes/quickstart-causal.yaml, as the README gives it: the same pipeline on a tiny Llama built locally, the same
    check table, then its policy merged into the base and checked to answer exactly like the adapter."""
    for folder in ("recipes", "examples"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    lorahf = [sys.executable, "-m", "lorahf"]
    done = subprocess.run(lorahf + ["run", "recipes/quickstart-causal.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "✗" not in done.stdout, done.stdout
    assert json.loads((tmp_path / "models" / "tiny-llama" / "config.json").read_text())["model_type"] == "llama"

    run = tmp_path / "runs" / "quickstart-causal"
    sft = json.loads((run / "stages" / "sft.json").read_text())["metrics"]
    reward = json.loads((run / "stages" / "reward.json").read_text())["metrics"]
    ppo = json.loads((run / "stages" / "ppo.json").read_text())["metrics"]
    evaluate = json.loads((run / "stages" / "evaluate.json").read_text())["metrics"]
    assert sft["train_loss_last"] < 0.3 * sft["train_loss_first"] and sft["eval_loss"] < 0.3 * sft["eval_loss_untrained"]
    assert reward["gate"] == "pass" and reward["eval_accuracy"] >= 0.7
    assert ppo["gold_win_rate_vs_sft"] > 0.5 and 0 < ppo["kl"] < ppo["kl_limit"]
    assert evaluate["win_rate_ci.gold"][0] > 0.5, evaluate  # the gold judge prefers PPO to sft, interval above 0.5

    merged = subprocess.run(lorahf + ["merge", "runs/quickstart-causal", "--adapter", "policy", "--out",
                                      "merged/causal"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert "16 of 16 held-out greedy answers identical" in " ".join(merged.stdout.split())
    card = (tmp_path / "merged" / "causal" / "README.md").read_text()
    assert "AutoModelForCausalLM" in card and "Seq2Seq" not in card


def test_encoder_reward_quickstart_trains_its_reward_model(tmp_path):
    """recipes/quickstart-encoder-reward.yaml's reward stage, as shipped: the tiny BERT built locally, a reward model
    on it that passes its gate, merged into a plain classifier. (Its ppo stage is the quickstart's, scoring with this
    model; the whole run and its comparison with the shared adapter: benchmarks/reward_models.py, BENCHMARKS.md.)"""
    for folder in ("recipes", "examples"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    lorahf = [sys.executable, "-m", "lorahf"]
    done = subprocess.run(lorahf + ["run", "recipes/quickstart-encoder-reward.yaml", "--stage", "reward"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "✗" not in done.stdout, done.stdout
    assert json.loads((tmp_path / "models" / "tiny-bert" / "config.json").read_text())["model_type"] == "bert"
    run = tmp_path / "runs" / "quickstart-encoder-reward"
    reward = json.loads((run / "stages" / "reward.json").read_text())["metrics"]
    assert reward["model"] == "encoder" and reward["gate"] == "pass" and reward["eval_accuracy"] >= 0.7, reward
    assert reward["eval_pairs"] == 250

    merged = subprocess.run(lorahf + ["merge", "runs/quickstart-encoder-reward", "--adapter", "reward", "--out",
                                      "merged/reward"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert "32 of 32 held-out scores equal to the run's" in " ".join(merged.stdout.split())
