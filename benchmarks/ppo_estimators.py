"""PPO's advantage estimators on the bundled example: gae (a value model) against rloo and grpo (none), from one
SFT and one reward model; which policy the gold judge prefers to sft, how far each moved, and what each cost.

    python benchmarks/ppo_estimators.py --from-run runs/quickstart              # gae, rloo, grpo
    python benchmarks/ppo_estimators.py --from-run runs/quickstart --estimators rloo --set ppo.answers_per_prompt=2

`--from-run` is a finished `recipes/quickstart.yaml` run: its sft and reward adapters (and their stage markers)
are copied into one fresh run folder per estimator, so every policy starts from the same SFT and learns against
the same reward model; `lorahf run recipes/quickstart.yaml --set name=... --set ppo.advantage=E` then skips sft
and reward ("done already") and runs ppo and evaluate in its own process. The quickstart's ppo settings hold for
every estimator (60 iterations of 32 answers, its learning rates, seed 0); rloo and grpo answer 8 prompts 4 times
an iteration (ppo.answers_per_prompt's default), gae 32 prompts once. (Another seed would retrain sft and reward:
`seed` is part of every stage's hash.)

Per run: the iteration whose policy was kept (ppo.best_by, checked every 10), ppo's wall time and median seconds
per iteration, peak resident memory of the process, evaluate's gold
win rate over sft with its 95 % interval, the reward model's win rate and the KL to sft per answer. Prints a
Markdown table and writes the figures as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/quickstart.yaml"
COPIED = ("adapters/sft", "adapters/reward", "stages/sft.json", "stages/reward.json")


def fresh_run(source: Path, target: Path) -> None:
    """A run folder holding `source`'s sft and reward (adapters, markers, metrics lines), nothing after them."""
    if target.exists():
        shutil.rmtree(target)
    for part in COPIED:
        (target / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (source / part).is_dir() else shutil.copy)(source / part, target / part)
    lines = (source / "metrics.jsonl").read_text().splitlines()
    (target / "metrics.jsonl").write_text("".join(line + "\n" for line in lines
                                                  if json.loads(line)["stage"] in ("sft", "reward")))


def run(name: str, estimator: str, output_dir: str, overrides: list[str]) -> dict:
    """ppo and evaluate of one estimator in their own process: wall seconds and peak resident memory."""
    command = [sys.executable, "-m", "lorahf", "run", RECIPE, "--set", f"name={name}",
               "--set", f"output_dir={output_dir}", "--set", f"ppo.advantage={estimator}"]
    command += [part for override in overrides for part in ("--set", override)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: `{' '.join(command[2:])}` failed (exit {os.waitstatus_to_exitcode(status)})")
    return {"wall_s": time.perf_counter() - started, "peak_rss_mib": usage.ru_maxrss / 1024}


def figures(folder: Path, process: dict, estimator: str, overrides: list[str]) -> dict:
    ppo = json.loads((folder / "stages" / "ppo.json").read_text())
    evaluate = json.loads((folder / "stages" / "evaluate.json").read_text())["metrics"]
    assert "value" not in [p.name for p in (folder / "adapters").iterdir()] or estimator == "gae"
    return {"estimator": estimator, "overrides": overrides, "ppo_wall_s": ppo["wall_s"],
            "best_iteration": ppo["metrics"]["best_iteration"], "iterations": ppo["metrics"]["iterations"],
            "score_first": ppo["metrics"]["score_first"], "score_last": ppo["metrics"]["score_last"],
            "seconds_per_iteration": ppo["metrics"]["seconds_per_iteration"],
            "peak_rss_mib": process["peak_rss_mib"], "process_wall_s": process["wall_s"],
            "gold_win_rate": evaluate["win_rate.gold"], "gold_interval": evaluate["win_rate_ci.gold"],
            "reward_win_rate": evaluate["win_rate.reward"], "kl": evaluate["kl.policy"],
            "judged": evaluate["judged.gold"]}


def table(rows: list[dict]) -> str:
    lines = ["| estimator | gold win rate over sft [95 %] | reward win rate | KL (nats) | best at iteration | "
             "ppo wall s | s / iteration | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["gold_interval"]
        lines.append(f"| {' '.join([r['estimator'], *r['overrides']])} | {r['gold_win_rate']:.3f} [{low:.2f}, {high:.2f}] | "
                     f"{r['reward_win_rate']:.3f} | {r['kl']:.2f} | {r['best_iteration']} of {r['iterations']} | "
                     f"{r['ppo_wall_s']:.0f} | "
                     f"{r['seconds_per_iteration']:.2f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", type=Path, required=True, help="a finished quickstart run (sft and reward)")
    parser.add_argument("--estimators", nargs="+", default=["gae", "rloo", "grpo"], choices=["gae", "rloo", "grpo"])
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="another recipe override for every run, e.g. ppo.answers_per_prompt=2 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    rows = []
    for estimator in args.estimators:
        name = "-".join(["estimators", estimator, *(o.split(".")[-1].replace("=", "") for o in args.overrides)])
        folder = REPO / args.output_dir / name
        fresh_run(args.from_run.resolve(), folder)
        rows.append(figures(folder, run(name, estimator, args.output_dir, args.overrides), estimator, args.overrides))
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
