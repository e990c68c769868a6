"""The reward model as an adapter on the shared base against a separate encoder (reward.model), on the bundled
example: same data, seed and SFT; what each reward model knows, what PPO makes of it, what each costs.

    python benchmarks/reward_models.py                    # recipes/quickstart.yaml vs quickstart-encoder-reward.yaml
    python benchmarks/reward_models.py --out benchmarks/results/reward-models-cpu.json

Three run folders. The shared-adapter run does sft -> reward -> ppo; the encoder run copies its finished sft stage
(the recipes' sft settings are the same, so is the stage hash: checked) and does reward -> ppo; a third copies the
adapter run's sft and reward and reruns ppo with `ppo.value_init: sft` (the encoder run's value model cannot start
from its reward model: does that start matter?). Each stage runs in
its own process (benchmarks/ppo_vs_dpo.run_stage: wall time, peak resident memory on a CPU). Per reward model:

  held-out accuracy      the reward stage's, on its 250 held-out pairs (10 % of all labels are flipped: ~0.90 at best)
  winner-swap accuracy   on the 200 test reports: the reference summary against the same summary with the winner's
                         and the loser's names swapped; both teams are in the report, so only reading it (who won?)
                         tells them apart. 0.5 is a reward model blind to it
  PPO gold win rate      ppo's final comparison of its best policy with sft on 200 held-out reports, 95 % interval
  s per PPO iteration    the ppo marker's median
  peak memory            the ppo stage's process (MiB), and the reward model's own weights

Prints a Markdown table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples" / "summaries"))
RECIPES = {"adapter": "recipes/quickstart.yaml", "encoder": "recipes/quickstart-encoder-reward.yaml",
           "adapter, value from sft": "recipes/quickstart.yaml"}  # the third: does the value's start matter?


def write_recipe(source: str, name: str, output_dir: str, stages: list[str], value_init: str = "auto") -> Path:
    raw = yaml.safe_load((REPO / source).read_text())
    raw.update(name=name, output_dir=output_dir, stages=stages)
    raw["ppo"]["value_init"] = value_init
    path = REPO / output_dir / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def share(stages: tuple[str, ...], source: Path, target: Path, source_recipe: Path, target_recipe: Path) -> None:
    """Finished stages (their adapters and markers) copied into another run folder, where their stage hashes are
    the same."""
    from lorahf.recipe import load

    for stage in stages:
        if load(source_recipe).stage_hash(stage) != load(target_recipe).stage_hash(stage):
            raise SystemExit(f"the two recipes' {stage} stages differ: they cannot share one")
        shutil.copytree(source / "adapters" / stage, target / "adapters" / stage, dirs_exist_ok=True)
        (target / "stages").mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "stages" / f"{stage}.json", target / "stages" / f"{stage}.json")


def swapped_pairs() -> tuple[list[str], list[str], list[str]]:
    """(report, right summary, the same with winner and loser swapped) for each test report whose reference names
    both teams."""
    import gold

    rows = [json.loads(line) for line in (REPO / "examples/summaries/data/test.jsonl").read_text().splitlines()]
    reports, right, wrong = [], [], []
    for row in rows:
        facts = gold.facts(row["document"])
        winner, loser, text = facts["winner"], facts["loser"], row["reference"]
        if winner in text and loser in text:
            reports.append(row["document"])
            right.append(text)
            wrong.append(text.replace(winner, "\0").replace(loser, winner).replace("\0", loser))
    return reports, right, wrong


def winner_swap_accuracy(recipe_path: Path) -> dict:
    """How often the run's reward model scores the right summary above the swapped one (ties count half)."""
    from lorahf.backbone import Backbone
    from lorahf.recipe import load
    from lorahf.reward_model import of_run
    from lorahf.runs import RunFolder

    recipe = load(recipe_path)
    backbone = Backbone.load(recipe.model.name, recipe.model.quantization, recipe.model.device)
    try:
        reward = of_run(recipe, backbone, RunFolder(recipe.run_dir))
        reports, right, wrong = swapped_pairs()
        good, bad = reward.score(reports, right), reward.score(reports, wrong)
    finally:
        backbone.close()
    wins = sum((g > b) + 0.5 * (g == b) for g, b in zip(good, bad))
    return {"winner_swap_accuracy": wins / len(good), "winner_swap_pairs": len(good)}


def main(argv: list[str] | None = None) -> dict:
    from ppo_vs_dpo import run_stage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)

    recipes, results, costs = {}, {}, {kind: {} for kind in RECIPES}
    names = {kind: "reward-models-" + kind.replace(", ", "-").replace(" ", "-") for kind in RECIPES}
    for kind, source in RECIPES.items():
        recipes[kind] = write_recipe(source, names[kind], args.output_dir, ["sft", "reward", "ppo"],
                                     "sft" if "value from sft" in kind else "auto")
    runs = {kind: REPO / args.output_dir / names[kind] for kind in RECIPES}
    costs["adapter"]["sft"] = run_stage(recipes["adapter"], "sft")
    share(("sft",), runs["adapter"], runs["encoder"], recipes["adapter"], recipes["encoder"])
    for kind in RECIPES:
        if kind == "adapter, value from sft":  # the adapter run's reward model, only ppo's value starts elsewhere
            share(("sft", "reward"), runs["adapter"], runs[kind], recipes["adapter"], recipes[kind])
            costs[kind]["reward"] = costs["adapter"]["reward"]
        for stage in ("reward", "ppo"):
            if stage not in costs[kind]:
                costs[kind][stage] = run_stage(recipes[kind], stage)
        markers = {stage: json.loads((runs[kind] / "stages" / f"{stage}.json").read_text())["metrics"]
                   for stage in ("reward", "ppo")}
        reward, ppo = markers["reward"], markers["ppo"]
        results[kind] = {"held_out_accuracy": reward["eval_accuracy"], **winner_swap_accuracy(recipes[kind]),
                         "gold_win_rate": ppo["gold_win_rate_vs_sft"],
                         "interval": [ppo["gold_win_rate_low"], ppo["gold_win_rate_high"]],
                         "kl": ppo["kl"], "value_init": ppo["value_init"],
                         "s_per_iteration": ppo["seconds_per_iteration"],
                         "reward_s": costs[kind]["reward"]["wall_s"], "ppo_s": costs[kind]["ppo"]["wall_s"],
                         "ppo_peak_rss_mib": costs[kind]["ppo"]["peak_rss_mib"],
                         "reward_model_mib": reward.get("memory_bytes", 0) / 2 ** 20}
    print("| reward model | held-out accuracy | winner-swap accuracy | PPO gold win rate over sft | KL | "
          "s / PPO iteration | reward stage s | ppo stage s | ppo peak RSS MiB | its own weights MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, row in results.items():
        print(f"| {kind} | {row['held_out_accuracy']:.3f} | {row['winner_swap_accuracy']:.3f} "
              f"({row['winner_swap_pairs']}) | {row['gold_win_rate']:.2f} [{row['interval'][0]:.2f}, "
              f"{row['interval'][1]:.2f}] | {row['kl']:.2f} | {row['s_per_iteration']:.2f} | {row['reward_s']:.0f} | "
              f"{row['ppo_s']:.0f} | {row['ppo_peak_rss_mib']:.0f} | {row['reward_model_mib']:.1f} |")
    found = {"results": results, "costs": costs}
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=2) + "\n")
    return found


if __name__ == "__main__":
    main()
