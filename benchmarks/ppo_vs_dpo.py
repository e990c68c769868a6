"""PPO against DPO on the bundled example: the same base, data, seed and SFT; which policy the gold judge prefers,
how far each moved from sft, and what each cost.

    python benchmarks/ppo_vs_dpo.py                       # recipes/quickstart.yaml + quickstart-dpo.yaml's dpo
    python benchmarks/ppo_vs_dpo.py --out benchmarks/results/ppo-vs-dpo-cpu.json

One run folder, one recipe: sft -> reward -> ppo -> dpo -> evaluate, where ppo writes `policy` and dpo writes
`dpo` (dpo.adapter), so evaluate answers the 200 held-out reports with sft, policy and dpo from one seed and
judges both against sft. Each stage runs in its own process (`lorahf run RECIPE --stage S`), so its wall time
and peak memory are its own: peak resident memory of the process on a CPU (os.wait4's ru_maxrss), peak GPU memory
allocated on a GPU (the stage's logged peak_memory_mb, where it logs one, else not measured). PPO's cost is its
reward stage's plus its own: DPO needs neither a reward model nor rollouts.

Prints a Markdown table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def combined_recipe(ppo_recipe: Path, dpo_recipe: Path, name: str, output_dir: str) -> dict:
    """The PPO recipe with the DPO recipe's dpo section added (writing adapters/dpo) and evaluate comparing both."""
    raw = yaml.safe_load(ppo_recipe.read_text())
    dpo = yaml.safe_load(dpo_recipe.read_text())["dpo"]
    raw.update(name=name, output_dir=output_dir, stages=["sft", "reward", "ppo", "dpo", "evaluate"],
               dpo={**dpo, "adapter": "dpo"})
    raw["evaluate"] = {**raw.get("evaluate", {}), "adapters": ["sft", "policy", "dpo"]}
    return raw


def run_stage(recipe: Path, stage: str) -> dict:
    """One stage in its own process: wall seconds and the process's peak resident memory."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "lorahf", "run", str(recipe), "--stage", stage],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{stage} failed (exit {os.waitstatus_to_exitcode(status)})")
    return {"wall_s": time.perf_counter() - started, "peak_rss_mib": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppo-recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--dpo-recipe", default="recipes/quickstart-dpo.yaml")
    parser.add_argument("--name", default="ppo-vs-dpo")
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    parser.add_argument("--only", default=None, help="rerun only these stages (comma-separated), e.g. dpo,evaluate "
                        "after changing dpo's settings; the others' costs come from --previous")
    parser.add_argument("--previous", default=None, help="the JSON of an earlier run of this script (with --only)")
    args = parser.parse_args(argv)

    raw = combined_recipe(REPO / args.ppo_recipe, REPO / args.dpo_recipe, args.name, args.output_dir)
    recipe = REPO / args.output_dir / f"{args.name}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    only = args.only.split(",") if args.only else raw["stages"]
    costs = json.loads(Path(args.previous).read_text())["costs"] if args.previous else {}
    costs.update({stage: run_stage(recipe, stage) for stage in raw["stages"] if stage in only})
    run_dir = REPO / args.output_dir / args.name
    markers = {stage: json.loads((run_dir / "stages" / f"{stage}.json").read_text())["metrics"]
               for stage in raw["stages"]}
    evaluate = markers["evaluate"]
    rows = {}
    for adapter, stages in (("policy", ("reward", "ppo")), ("dpo", ("dpo",))):
        key = "gold" if adapter == "policy" else "gold.dpo"
        rows[adapter] = {"gold_win_rate": evaluate[f"win_rate.{key}"], "interval": evaluate[f"win_rate_ci.{key}"],
                         "kl_to_sft": evaluate[f"kl.{adapter}"], "length": evaluate[f"length.{adapter}"],
                         "rouge_l": evaluate.get(f"rouge_l.{adapter}"),
                         "wall_s": sum(costs[s]["wall_s"] for s in stages),
                         "peak_rss_mib": max(costs[s]["peak_rss_mib"] for s in stages), "stages": list(stages)}
    result = {"costs": costs, "policies": rows, "sft": {"rouge_l": evaluate.get("rouge_l.sft"),
                                                        "length": evaluate["length.sft"]}}
    print("| policy | gold win rate over sft [95 % interval] | KL to sft (nats) | ROUGE-L | wall time | peak memory |")
    print("|---|---|---|---|---|---|")
    for adapter, row in rows.items():
        low, high = row["interval"]
        print(f"| {'PPO (reward + ppo)' if adapter == 'policy' else 'DPO'} | {row['gold_win_rate']:.3f} "
              f"[{low:.3f}, {high:.3f}] | {row['kl_to_sft']:.2f} | {row['rouge_l']:.3f} | {row['wall_s']:.0f} s | "
              f"{row['peak_rss_mib']:.0f} MiB |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
