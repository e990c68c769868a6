"""The README's quickstart, run as a user runs it: `lorahf run recipes/quickstart.yaml` (about 12 minutes)."""

from __future__ import annotations

import json
import re
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

    again = subprocess.run(lorahf + run_part.split()[1:], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skipped" in again.stderr + again.stdout
