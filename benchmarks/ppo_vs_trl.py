"""Speed and memory of one PPO iteration: lorahf's PPO vs TRL 0.11.4's classic PPOTrainer.

    python benchmarks/ppo_vs_trl.py --rounds 3 --iterations 5

Two workers, each in its own fresh subprocess, run alternately A B A B (--rounds times) from this one
process tree, with OMP_NUM_THREADS=MKL_NUM_THREADS=2 and `torch.set_num_threads(2)`:
  ours  benchmarks/ppo_ours_worker.py, run by this interpreter (the repository's .venv): lorahf's PPO
        iteration on one 8-bit base with its adapters; its reward is a reward-model adapter's forward pass.
  trl   benchmarks/ppo_trl_worker.py, run by benchmarks/.venv-trl/bin/python: TRL 0.11.4's PPOTrainer with
        `AutoModelForSeq2SeqLMWithValueHead` (0.11.4 is the last release that has both). That virtual
        environment is created on the first run and reused afterwards: trl==0.11.4, rich and tyro (trl
        imports rich without declaring it), and transformers, peft, accelerate and bitsandbytes pinned to
        the versions installed beside this script; torch is held at this interpreter's version by a pip
        constraint (otherwise pip pulls a CUDA build of gigabytes). It is re-installed when those differ.
Both sides use the same shape: the same tiny T5 (`lorahf make-tiny --data examples/summaries/data`, built
if missing), an 8-bit base (`BitsAndBytesConfig(load_in_8bit=True)`, on the CPU), LoRA r16, alpha 32,
dropout 0 on q, k, v, o, wi_0, wi_1, wo; 16 answers an iteration to prompts of "summarize: {document}" cut to
exactly 48 tokens (47 and EOS); 32 new tokens sampled at temperature 1, top_k 0, top_p 1; then PPO epochs of
minibatch 4 (gradient accumulation 1). TRL: its PPO (a value head), 16 prompts, 4 epochs. lorahf: its defaults
(rloo: 4 prompts answered 4 times, no value model, 2 epochs), or what --ours-args sets, e.g.
`--ours-args="--advantage gae"` for TRL's own shape (16 prompts once, a value adapter, 4 epochs). The TRL side
disables gradient checkpointing, which peft's `prepare_model_for_kbit_training` would otherwise turn on for an
8-bit base (it doubles generation time);
its reward is a rule on the decoded text (+1 per word "the"), so ours, which runs a reward model, does
strictly more work per iteration. TRL's reference is the policy with its adapter disabled (ref_model=None).

Each worker runs --warmup iterations (not timed), then --iterations timed ones, and prints one line of
JSON: seconds per iteration and per phase (e.g. generate, update), the mean response length in tokens and
its process's peak RSS (`ru_maxrss`: imports, model and training together). The table shows, per side, the
median and minimum seconds per iteration over every timed iteration of every round, the median of each
phase, the largest peak RSS, and the ratios ours / TRL. The target is ours <= 0.5x TRL's time and
<= 1.0x its peak memory. This machine is noisy: compare medians and minimums, never one run. Run it on
an otherwise idle machine: with 2 threads on 2 cores, one other busy process made TRL's iteration ~20x
slower (about 40 s instead of 2; each of torch's parallel regions waits for the thread that lost its
core), so the table records how busy the CPUs were just before each worker, and the script warns.

    python benchmarks/ppo_vs_trl.py --only trl --rounds 1 --iterations 2     # one side, e.g. to test it
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
EXAMPLE_DATA = REPO / "examples" / "summaries" / "data"
DEFAULT_MODEL = REPO / "models" / "tiny-t5"
DEFAULT_DATA = EXAMPLE_DATA / "prompts.jsonl"
TRL_VENV = HERE / ".venv-trl"
TRL_VERSION = "0.11.4"
PINNED = ("transformers", "peft", "accelerate", "bitsandbytes")  # at this interpreter's versions
UNPINNED = ("rich", "tyro")
THREADS = "2"
SIDES = ("ours", "trl")
WORKERS = {"ours": HERE / "ppo_ours_worker.py", "trl": HERE / "ppo_trl_worker.py"}
LABELS = {"ours": "lorahf", "trl": f"TRL {TRL_VERSION}"}
TARGETS = {"time": 0.5, "memory": 1.0}
BUSY = 0.25  # warn when more than this fraction of the CPUs is busy just before a worker starts
PHASES = ("generate", "reward", "update")  # shown first, in this order; then any other phase a worker times


# ------------------------------------------------------------------------------------------ the parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of [ours, trl], each worker a fresh process")
    parser.add_argument("--iterations", type=int, default=5, help="timed PPO iterations per worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed PPO iterations per worker, first")
    parser.add_argument("--only", choices=SIDES, help="run one side only (no ratios)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="tiny T5 folder (built if the default "
                        "is missing)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL of prompts, column 'document'")
    parser.add_argument("--seed", type=int, default=0, help="passed to every worker")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every worker's result here")
    parser.add_argument("--ours-args", default="", help="extra flags for ours, e.g. --train-encoder")
    args = parser.parse_args()
    if args.rounds < 1 or args.iterations < 1 or args.warmup < 0:
        parser.error("--rounds and --iterations must be >= 1, --warmup >= 0")
    sides = (args.only,) if args.only else SIDES
    model, data = args.model.resolve(), args.data.resolve()
    if not data.is_file():
        parser.error(f"--data {data} is not a file")
    missing = [str(WORKERS[side]) for side in sides if not WORKERS[side].is_file()]
    if missing:
        parser.error(f"missing worker(s): {', '.join(missing)}")

    if not (model / "config.json").is_file():
        if model != DEFAULT_MODEL.resolve():
            parser.error(f"--model {model} is not a model folder")
        log(f"building the tiny T5 into {model}")
        run([sys.executable, "-m", "lorahf.cli", "make-tiny", "--data", str(EXAMPLE_DATA), "--out", str(model)])
    pythons = {"ours": sys.executable}
    if "trl" in sides:
        pythons["trl"] = str(ensure_trl_venv())

    started = time.perf_counter()
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(1, args.rounds + 1):
        for side in sides:
            result = worker(side, pythons[side], model, data, args)
            results[side].append(result)
            log(f"round {round_}/{args.rounds} {side}: " + ", ".join(f"{s:.2f}" for s in result["seconds"])
                + f" s/iteration, peak RSS {result['peak_rss_mb']:.0f} MB ({result['process_seconds']:.0f} s "
                "with start-up)")
    log(f"measured in {time.perf_counter() - started:.0f} s")

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    summary = summarize(results)
    print(markdown(summary, results, command))
    report = {"command": command, "machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()},
              "summary": summary, "results": results}
    print("\n<!-- raw: " + json.dumps(report, sort_keys=True) + " -->")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        log(f"wrote {args.json}")


def worker(side: str, python: str, model: Path, data: Path, args: argparse.Namespace) -> dict:
    command = [python, str(WORKERS[side]), "--model", str(model), "--data", str(data),
               "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    if side == "ours":
        command += shlex.split(args.ours_args)
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if side == "trl":  # nothing of this interpreter's environment may leak into the other one
        for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
            env.pop(key, None)
        env["VIRTUAL_ENV"] = str(TRL_VENV)
    busy = cpu_busy()
    if busy > BUSY:
        log(f"warning: {busy:.0%} of the CPUs were busy just before this {side} worker. It runs {THREADS} threads on "
            f"{os.cpu_count()} cores; another busy process makes them wait on each other (seen here: one iteration "
            "20x slower), so numbers from a busy machine mean little")
    started = time.perf_counter()
    output = run(command, env=env)
    seconds = time.perf_counter() - started
    try:
        result = json.loads(output.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        sys.exit(f"{side} worker printed no JSON on its last line:\n{output[-2000:]}")
    for key in ("name", "seconds", "mean_response_tokens", "peak_rss_mb", "versions"):
        if key not in result:
            sys.exit(f"{side} worker's JSON lacks {key!r}: {result}")
    if len(result["seconds"]) != args.iterations:
        sys.exit(f"{side} worker timed {len(result['seconds'])} iterations, not {args.iterations}")
    result["process_seconds"] = seconds
    result["cpu_busy_before"] = busy
    return result


def run(command: list[str], env: dict | None = None) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-6000:]}")
    return done.stdout


def cpu_busy(seconds: float = 1.0) -> float:
    """The fraction of all CPUs' time that was not idle over the next `seconds` (Linux /proc/stat)."""

    def times() -> list[int]:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]

    try:
        before = times()
        time.sleep(seconds)
        after = times()
    except (OSError, ValueError):
        return 0.0
    delta = [b - a for a, b in zip(before, after)]
    idle = delta[3] + delta[4]  # idle and iowait
    return 1 - idle / max(sum(delta[:8]), 1)  # user..steal (guest time is already counted in user)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- TRL's virtual environment
def trl_requirements() -> tuple[list[str], list[str]]:
    """What the TRL venv gets: requirements, and constraints (torch at this interpreter's version)."""
    requirements = [f"trl=={TRL_VERSION}", *(f"{name}=={metadata.version(name)}" for name in PINNED), *UNPINNED]
    torch = metadata.version("torch").split("+")[0]  # "2.13.0+cpu" -> "2.13.0": pip then picks the CPU wheel here
    return requirements, [f"torch=={torch}"]


def ensure_trl_venv() -> Path:
    """benchmarks/.venv-trl's python, creating or updating the environment only when its pins changed."""
    python = TRL_VENV / "bin" / "python"
    requirements, constraints = trl_requirements()
    wanted = json.dumps({"requirements": requirements, "constraints": constraints}, sort_keys=True)
    stamp = TRL_VENV / "lorahf-benchmark.json"  # written last: a half-done install is redone
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    started = time.perf_counter()
    if not python.exists():
        log(f"creating {os.path.relpath(TRL_VENV, REPO)}")
        run([sys.executable, "-m", "venv", str(TRL_VENV)])
    digest = hashlib.sha1(wanted.encode()).hexdigest()[:8]
    constraint_file = TRL_VENV / f"constraints-{digest}.txt"
    constraint_file.write_text("\n".join(constraints) + "\n")
    log(f"installing into {os.path.relpath(TRL_VENV, REPO)}: {' '.join(requirements)} (constraint "
        f"{' '.join(constraints)}); a few minutes the first time")
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", str(constraint_file),
         *requirements])
    stamp.write_text(wanted)
    log(f"installed in {time.perf_counter() - started:.0f} s")
    return python


# ----------------------------------------------------------------------------------------- the report
def summarize(results: dict[str, list[dict]]) -> dict:
    summary = {}
    for side, runs in results.items():
        seconds = [s for r in runs for s in r["seconds"]]
        phases = sorted({key for r in runs for key, value in r.items()  # any list "<phase>_seconds" a worker gives
                         if key.endswith("_seconds") and key != "process_seconds" and isinstance(value, list)})
        summary[side] = {
            "median_seconds": statistics.median(seconds), "min_seconds": min(seconds),
            "max_seconds": max(seconds), "timed_iterations": len(seconds), "processes": len(runs),
            "phases": {key[: -len("_seconds")]: statistics.median([s for r in runs for s in r.get(key, [])])
                       for key in phases},
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "mean_response_tokens": statistics.fmean(r["mean_response_tokens"] for r in runs),
            "versions": runs[0]["versions"],
        }
    if set(SIDES) <= set(summary):
        ours, trl = summary["ours"], summary["trl"]
        summary["ratios"] = {"median_seconds": ours["median_seconds"] / trl["median_seconds"],
                             "min_seconds": ours["min_seconds"] / trl["min_seconds"],
                             "peak_rss_mb": ours["peak_rss_mb"] / trl["peak_rss_mb"]}
    return summary


def markdown(summary: dict, results: dict[str, list[dict]], command: str) -> str:
    sides = [side for side in SIDES if side in summary]
    ratios = summary.get("ratios")
    header = "| measure | " + " | ".join(LABELS[s] for s in sides) + (" | lorahf / TRL | target |" if ratios else " |")
    lines = [header, "|---" * (len(sides) + 1 + (2 if ratios else 0)) + "|"]

    def values(key: str) -> list:
        return [summary[s][key] for s in sides]

    def row(name: str, values: list[str], ratio: float | None = None, target: float | None = None) -> None:
        cells = [name, *values]
        if ratios:
            cells.append("" if ratio is None else f"{ratio:.2f}")
            cells.append("" if target is None else f"<= {target:.1f} ({'met' if ratio <= target else 'missed'})")
        lines.append("| " + " | ".join(cells) + " |")

    row("seconds / iteration, median", [f"{v:.3f}" for v in values("median_seconds")],
        ratios and ratios["median_seconds"], TARGETS["time"])
    row("seconds / iteration, minimum", [f"{v:.3f}" for v in values("min_seconds")],
        ratios and ratios["min_seconds"], TARGETS["time"])
    row("seconds / iteration, maximum", [f"{v:.3f}" for v in values("max_seconds")])
    named = {p for s in sides for p in summary[s]["phases"]}
    for phase in [p for p in PHASES if p in named] + sorted(named - set(PHASES)):
        medians = [summary[s]["phases"].get(phase) for s in sides]
        row(f"… {phase}, median s", ["–" if v is None else f"{v:.3f}" for v in medians],
            medians[0] / medians[1] if ratios and None not in medians and medians[1] else None)
    row("peak RSS (MB, largest of the processes)", [f"{v:,.0f}" for v in values("peak_rss_mb")],
        ratios and ratios["peak_rss_mb"], TARGETS["memory"])
    row("mean response tokens", [f"{v:.1f}" for v in values("mean_response_tokens")])
    row("CPU busy in the second before a worker, largest", [f"{max(r['cpu_busy_before'] for r in results[s]):.0%}"
                                                            for s in sides])
    row("timed iterations (processes)", [f"{summary[s]['timed_iterations']} ({summary[s]['processes']})"
                                         for s in sides])

    info = machine()
    versions = {name: v for s in sides for name, v in summary[s]["versions"].items()}
    per_side = "; ".join(f"{LABELS[s]}: " + ", ".join(f"{k} {v}" for k, v in sorted(summary[s]["versions"].items()))
                         for s in sides)
    lines += ["", f"**Command** (from the repository root): `{command}`", "",
              (f"**Machine**: {info['nproc']} CPU cores ({info['cpu']}), {info['memory']}; {info['os']}; "
               f"Python {info['python']}, torch {versions.get('torch', info['torch'])}, "
               f"{THREADS} threads. **Date**: {time.strftime('%Y-%m-%d')}."), "",
              f"**Versions**: {per_side}."]
    return "\n".join(lines)


def machine() -> dict:
    cpu = "unknown CPU"
    memory = "unknown memory"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GB RAM"
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip() or str(os.cpu_count())
    except OSError:
        nproc = str(os.cpu_count())
    return {"nproc": nproc, "cpu": cpu, "memory": memory, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "torch": metadata.version("torch")}


if __name__ == "__main__":
    main()
