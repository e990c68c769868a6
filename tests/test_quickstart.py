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

    label_round(tmp_path, readme, run)


def label_round(tmp_path: Path, readme: str, run: Path) -> None:
    """The README's labelling loop on the quickstart's run: its `lorahf label` line samples pairs of the policy's
    answers, a scripted annotator who follows the gold judge labels them through the page's HTTP calls, and a reward
    round with those labels added agrees with the gold judge on held-out pairs of the policy's answers more often than
    the round before it. Both rounds train on 200 of the bundled preference rows for 6 epochs at lr 3e-4, without the
    likelihood term, so that what the reward model knows of the policy's answers comes from the labels (with it, the
    SFT's own likelihood already ranks them and the held-out check kept the untrained step both times: see the
    README)."""
    import contextlib

    sys.path[:0] = [str(REPO / "tests"), str(REPO / "examples" / "summaries")]
    import gold
    from annotator import label_all, reward_accuracy, serving

    from lorahf.label import sample_items

    block = re.search(r"<!-- label-commands -->\n```bash\n(.*?)\n```", readme, re.S).group(1)
    install, label, rerun = block.splitlines()
    assert install == "pip install -e '.[web]'"  # the test extra has it already
    base, token, stop = serving(*shlex.split(label)[1:], cwd=tmp_path, timeout=300)
    labelled = label_all(base, token, gold.compare)
    out = stop()
    files = re.search(r"reward\.data\.files=\[(.*)\]", rerun).group(1).split(", ")
    labels = tmp_path / files[1]
    assert labels.parent == run / "labels" and len(labels.read_text().splitlines()) == labelled > 300
    assert f"{labelled} of {labelled} labelled in" in " ".join(out.split())

    small = tmp_path / "preferences-200.jsonl"
    small.write_text("".join((tmp_path / files[0]).read_text().splitlines(keepends=True)[:200]))
    held_out = [json.loads(line)["document"] for line in (tmp_path / "examples/summaries/data/test.jsonl").open()]
    with contextlib.chdir(tmp_path):  # the recipe names its base as models/tiny-t5, from where it was run
        pairs = sample_items(run, held_out, "policy", 3, temperature=1.5, seed=7)
    agreement = []
    for data in ([small], [small, labels]):
        step = ["run", "recipes/quickstart.yaml", "--stage", "reward", "--set", "reward.epochs=6",
                "--set", "reward.learning_rate=3e-4", "--set", "reward.likelihood_term=false",
                "--set", f"reward.data.files=[{', '.join(map(str, data))}]"]
        done = subprocess.run([sys.executable, "-m", "lorahf", *step], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        with contextlib.chdir(tmp_path):
            agreement.append(reward_accuracy(run, pairs, gold.compare))
    (before, counted), (after, _) = agreement
    print(f"label round: {labelled} labels; agreement with the gold judge on {counted} held-out pairs of the policy's "
          f"answers: {before:.3f} before, {after:.3f} after")
    assert after > before + 0.03
