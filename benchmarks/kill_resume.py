"""Kill a run with SIGKILL at random moments, resume it with the same command each time, and check the result.

    python benchmarks/kill_resume.py --kills 20                     # the quickstart recipe
    python benchmarks/kill_resume.py --recipe R.yaml --kills 3 --set sft.max_steps=40
    python benchmarks/kill_resume.py --recipe R.yaml --kills 20 --mode saves    # every kill inside a save
    python benchmarks/kill_resume.py --kills 5 --mode steps     # at random steps of sft and reward

1. An uninterrupted reference run (`<name>-reference`) gives the duration to spread the kills over and the
   final metrics to compare with.
2. The killed run (`<name>-killed`) is started with `lorahf run RECIPE --set name=...` (through
   kill_at_save.py); after a random delay (uniform over the reference's duration, so every stage gets its
   share) it is SIGKILLed, or, with `--mode saves`, it kills itself at a random one of the reference's
   save renames, just before it or just after it (`--mode mixed`: alternately); then it is started again;
   after --kills kills it runs to the end. A random moment falls inside a save only by chance; `saves`
   aims there, including the moment a replaced folder has been moved aside and its new version is not yet
   in place (the next run puts the old version back: `RunFolder.finish_interrupted_saves`). With `--mode
   steps`, each kill comes just after a random optimizer step of sft or reward (drawn from the reference's
   steps, in order), and the next start must resume that stage from its last checkpoint (its first step is
   the checkpoint's + 1), not start it over.
3. Checks: the run completed (every stage's marker done); `lorahf.runs.verify` finds nothing (every JSON,
   JSONL, YAML and safetensors file parses, adapters have their config, no temporary file is left,
   metrics.jsonl logs each step once); each stage logged the same steps as the reference; the final metrics
   equal the reference's within --tolerance (SFT, reward and PPO resume from their last checkpoint, which
   holds the random state, so they end bit-identical on the CPU; evaluation reruns; wall times and peak memory
   are not compared).

Prints one JSON line: kills made (and in which stage each landed), restarts, and every problem found.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
NOT_COMPARED = ("wall_s", "seconds", "peak_memory", "finished_at", "seconds_per_iteration")


def lorahf_run(recipe: str, name: str, sets: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`lorahf run` in a child process, through kill_at_save.py (which only counts renames unless told to kill)."""
    command = [sys.executable, str(HERE / "kill_at_save.py"), "run", recipe, "--set", f"name={name}"]
    for item in sets:
        command += ["--set", item]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def stage_running(run_dir: Path, stages: list[str]) -> str:
    """The first stage without a done marker: where a kill landed."""
    for stage in stages:
        if not (run_dir / "stages" / f"{stage}.json").is_file():
            return stage
    return "end"


def kill_steps(recipe, reference: Path, kills: int, rng: random.Random) -> list[tuple[str, int]]:
    """`kills` distinct (stage, step) points among the steps the reference took in the training stages after the
    stage's first checkpoint, the stages taking turns (so 2 kills land one in each), in the order a run meets them."""
    from lorahf.recipe import TrainingSpec

    stages = recipe.stages
    steps = {stage: json.loads((reference / "stages" / f"{stage}.json").read_text())["metrics"]["steps"]
             for stage in stages if isinstance(getattr(recipe, stage), TrainingSpec)}  # lorahf.training.train_adapter's
    share = {stage: len(range(i, kills, len(steps))) for i, stage in enumerate(steps)}
    chosen = [(stage, step) for stage in steps
              for step in rng.sample(range(getattr(recipe, stage).checkpoint_every + 1, steps[stage]), share[stage])]
    return sorted(chosen, key=lambda point: (stages.index(point[0]), point[1]))


def checkpoint_step(run_dir: Path, stage: str) -> int:
    """The step of a stage's last checkpoint (0: none)."""
    import torch

    path = run_dir / "checkpoints" / stage / "state.pt"
    return torch.load(path, weights_only=True)["state"]["step"] if path.is_file() else 0


def run_with_step_kills(recipe: str, name: str, sets: list[str], points: list[tuple[str, int]], cwd: Path,
                        output_dir: Path) -> dict:
    """Kill the run just after each of these steps, each followed by the same command; every start after a kill
    must take up the killed stage at its last checkpoint's next step."""
    run_dir = output_dir / name
    steps_log = output_dir / f".{name}-steps"
    landed, resumed, problems = [], [], []
    expected = None  # (stage, first step) the next start must take
    for stage, step in [*points, (None, None)]:
        steps_log.unlink(missing_ok=True)
        env = {"LORAHF_STEPS_LOG": str(steps_log), **({"LORAHF_KILL_AT_STEP": f"{stage}:{step}"} if stage else {})}
        process = lorahf_run(recipe, name, sets, cwd, env=env)
        _, stderr = process.communicate()
        first = dict(line.split() for line in steps_log.read_text().splitlines()) if steps_log.is_file() else {}
        if expected is not None:
            took = int(first.get(expected[0], 0))
            resumed.append(f"{expected[0]} {took}")
            if took != expected[1]:
                problems.append(f"{expected[0]} started at step {took} after the kill, not {expected[1]} "
                                "(its last checkpoint's next step)")
        if stage is None:
            steps_log.unlink(missing_ok=True)
            return {"landed": landed, "resumed_at": resumed, "problems": problems,
                    "failed": stderr[-2000:] if process.returncode else None}
        if process.returncode != -signal.SIGKILL:
            return {"landed": landed, "resumed_at": resumed, "problems": problems,
                    "failed": f"not killed at {stage} step {step} (exit {process.returncode}): {stderr[-2000:]}"}
        landed.append(f"{stage} step {step}")
        expected = (stage, checkpoint_step(run_dir, stage) + 1)


def run_with_kills(recipe: str, name: str, sets: list[str], kills: int, duration: float, saves: int, seed: int,
                   cwd: Path, stages: list[str], output_dir: Path, mode: str) -> dict:
    """Kill the run `kills` times, each followed by the same command. Mode `time`: at a random moment;
    `saves`: at a random save (just before or just after one of its renames); `mixed`: alternately."""
    rng = random.Random(seed)
    run_dir = output_dir / name
    landed, restarts = [], 0
    while len(landed) < kills:
        at_save = mode == "saves" or (mode == "mixed" and len(landed) % 2 == 1)
        if at_save:
            event = f"{rng.randint(1, saves)}:{rng.choice(['before', 'between'])}"
            process = lorahf_run(recipe, name, sets, cwd, env={"LORAHF_KILL_AT": event})
            process.wait()
        else:
            process = lorahf_run(recipe, name, sets, cwd)
            time.sleep(rng.uniform(0.05, 1.0) * duration)
        if process.poll() is not None and process.returncode != -signal.SIGKILL:
            # it finished before the kill: a clean run of what was left
            restarts += 1
            _, stderr = process.communicate()
            if process.returncode != 0:
                return {"landed": landed, "restarts": restarts, "failed": stderr[-2000:]}
            shutil.rmtree(run_dir)  # start over, so that the remaining kills still land somewhere
            continue
        where = stage_running(run_dir, stages)
        landed.append(f"{where} (save {event})" if at_save else where)
        if not at_save:
            process.send_signal(signal.SIGKILL)
            process.wait()
    process = lorahf_run(recipe, name, sets, cwd)
    _, stderr = process.communicate()
    return {"landed": landed, "restarts": restarts, "failed": stderr[-2000:] if process.returncode else None}


def compare(reference: Path, killed: Path, stages: list[str], tolerance: float) -> list[str]:
    from lorahf.runs import RunFolder, verify

    problems = [f"killed run: {p}" for p in verify(killed)]
    for stage in stages:
        marker = killed / "stages" / f"{stage}.json"
        if not marker.is_file():
            problems.append(f"{stage}: not done")
            continue
        ours, theirs = json.loads(marker.read_text())["metrics"], json.loads(
            (reference / "stages" / f"{stage}.json").read_text())["metrics"]
        problems += [f"{stage}.{key}: {a} vs reference {b}" for key, a, b in _leaves(ours, theirs)
                     if not any(word in key for word in NOT_COMPARED) and not _close(a, b, tolerance)]
        steps = lambda root: sorted({(r["step"], k) for r in RunFolder(root).read_metrics(stage)  # noqa: E731
                                     for k in r if k not in ("stage", "step") and not k.startswith("seconds")})
        if steps(killed) != steps(reference):
            problems.append(f"{stage}: metrics.jsonl logged other steps than the reference")
    return problems


def _leaves(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _leaves(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, a, b


def _close(a, b, tolerance: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(_close(x, y, tolerance) for x, y in zip(a, b))
    return a == b


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a recipe override, repeatable")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--mode", choices=("time", "saves", "mixed", "steps"), default="time",
                        help="kill at random moments, inside random saves, alternately, or at random sft/reward steps")
    parser.add_argument("--cwd", type=Path, default=Path.cwd(), help="where relative recipe paths start")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from lorahf import recipe as recipes

    loaded = recipes.load(args.cwd / args.recipe if not Path(args.recipe).is_absolute() else args.recipe, args.sets)
    output_dir = args.cwd / loaded.output_dir
    for suffix in ("reference", "killed"):
        shutil.rmtree(output_dir / f"{loaded.name}-{suffix}", ignore_errors=True)
    started = time.perf_counter()
    count_file = output_dir / f".{loaded.name}-saves"
    reference = lorahf_run(args.recipe, f"{loaded.name}-reference", args.sets, args.cwd,
                           env={"LORAHF_COUNT_SAVES": str(count_file)})
    _, stderr = reference.communicate()
    if reference.returncode:
        raise SystemExit(f"the reference run failed:\n{stderr[-2000:]}")
    duration = time.perf_counter() - started
    saves = int(count_file.read_text())
    count_file.unlink()
    if args.mode == "steps":
        points = kill_steps(loaded, output_dir / f"{loaded.name}-reference", args.kills, random.Random(args.seed))
        outcome = run_with_step_kills(args.recipe, f"{loaded.name}-killed", args.sets, points, args.cwd, output_dir)
    else:
        outcome = run_with_kills(args.recipe, f"{loaded.name}-killed", args.sets, args.kills, duration, saves,
                                 args.seed, args.cwd, loaded.stages, output_dir, args.mode)
    problems = [f"the killed run failed: {outcome['failed']}"] if outcome["failed"] else [*outcome.get(
        "problems", []), *compare(output_dir / f"{loaded.name}-reference", output_dir / f"{loaded.name}-killed",
                                  loaded.stages, args.tolerance)]
    result = {"recipe": args.recipe, "kills": len(outcome["landed"]), "landed_in": outcome["landed"],
              "resumed_at": outcome.get("resumed_at"),
              "clean_runs_restarted": outcome.get("restarts", 0), "reference_seconds": round(duration, 1),
              "reference_save_renames": saves, "mode": args.mode,
              "problems": problems, "ok": not problems}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
