"""Peak GPU memory and seconds per step of SFT, reward and PPO on Flan-T5-shaped bases, per quantization.

    python benchmarks/gpu.py --budget 330 --out runs/gpu           # on a machine with a CUDA GPU

No hub is reachable here, so each size is a randomly initialised T5 with the public dimensions of
google/flan-t5-{small,base,large,xl,xxl} (d_kv 64, vocab 32128, gated-GELU, untied head), written once
as a bf16 checkpoint with save_pretrained and then loaded the way a user's run loads the real one:
`Backbone.load(folder, quantization, "cuda")`. Memory and time do not depend on the weights' values;
response lengths do, and a random model almost never samples EOS, so every response runs to its limit
(the worst case for time and the KV cache). The tokenizer is the tiny quickstart model's (its ids are a
subset of the vocabulary).

Per (size, quantization), in a fresh subprocess so that every peak is its own:
  load    the base, then the four roles (sft; reward + head; policy = copy of sft; value = copy of reward),
          LoRA r16 on every linear layer (`LoraSpec()`): bytes allocated after each, and the ratio of one
          base + 4 adapters to 4 separate models (4 x the base as loaded + the same adapters and heads).
  sft     one optimizer step on --sft-batch (prompt, response) pairs, prompt 512 tokens, response 64.
  reward  one step of the pairwise loss on --reward-batch pairs (2 x that many sequences).
  ppo     one `lorahf.stages.ppo.iterate`: --ppo-batch prompts of 512 tokens, 64 sampled tokens each,
          scored by the reward adapter, 4 epochs of minibatch --ppo-minibatch (`PPOStage` defaults; --advantage
          rloo or grpo: --ppo-batch answers, 4 to a prompt, no value pass; --rollout-weights merged: sampled from
          an unquantized copy of the base with the policy folded in, its memory in the peak).
Each phase: --warmup untimed steps, then --steps timed ones (CUDA synchronised); the peak is
`torch.cuda.max_memory_allocated` over that phase, reset before it (weights included). With
`--checkpointing`, sft and reward run a second time with gradient checkpointing on.

The configurations run in the order given by --runs, each with what is left of --budget seconds; one
that fails (out of memory, time out) is recorded as such and the next one starts. Results go to
OUT/gpu.jsonl as they come and a table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny-t5"
EXAMPLE_DATA = REPO / "examples" / "summaries" / "data"

TOY = (64, 256, 2, 4)  # (d_model, d_ff, layers per stack, heads), to test this script on a CPU; the real sizes
# are google/flan-t5-*'s dimensions, `lorahf.plan.FLAN_T5`
DEFAULT_RUNS = ("base:8bit,xl:8bit,xxl:4bit,small:8bit,small:none,base:4bit,base:none,large:8bit,"
                "xl:4bit,large:4bit,small:4bit,large:none,xl:none")
PROMPT_TOKENS = 512
RESPONSE_TOKENS = 64
PHASES = ("sft", "reward", "ppo")


# ------------------------------------------------------------------------------------------ the parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="size:quantization, comma-separated, in order")
    parser.add_argument("--budget", type=float, default=600, help="seconds for all runs (checkpoints included)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu", help="results folder")
    parser.add_argument("--models", type=Path, default=None, help="where the random checkpoints go "
                        "(default: a folder under /tmp, deleted at the end)")
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--reward-batch", type=int, default=4)
    parser.add_argument("--ppo-batch", type=int, default=16)
    parser.add_argument("--ppo-minibatch", type=int, default=4)
    parser.add_argument("--advantage", choices=("gae", "rloo", "grpo"), default="gae",
                        help="ppo.advantage (rloo, grpo: --ppo-batch answers, 4 to a prompt, no value adapter)")
    parser.add_argument("--rollout-weights", choices=("quantized", "merged"), default="quantized",
                        help="ppo.rollout_weights (merged: sample from an unquantized copy with the policy folded in)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase (PPO: iterations)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true", help="also time sft and reward with gradient "
                        "checkpointing")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to test this script on tiny shapes")
    parser.add_argument("--worker", nargs=3, metavar=("SIZE", "QUANTIZATION", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(*args.build, device=args.device)
        return
    if args.worker:
        measure(*args.worker, args)
        return

    deadline = time.monotonic() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    models = args.models or Path("/tmp/lorahf-gpu-models")
    results_file = args.out / "gpu.jsonl"
    results = []
    built: dict[str, Path] = {}
    try:
        for run in args.runs.split(","):
            size, quantization = run.split(":")
            left = deadline - time.monotonic()
            if left < 20:
                results.append({"size": size, "quantization": quantization, "error": "skipped: budget spent"})
                continue
            if size not in built:
                folder = models / f"flan-t5-{size}-random"
                started = time.monotonic()
                error = _child(["--build", size, str(folder)], left, args)
                if isinstance(error, str):
                    results.append({"size": size, "quantization": quantization, "error": f"build: {error}"})
                    print(f"{run}: build failed: {error}", flush=True)
                    continue
                built[size] = folder
                print(f"{size}: checkpoint written in {time.monotonic() - started:.0f} s", flush=True)
            outcome = _child(["--worker", size, quantization, str(built[size])], deadline - time.monotonic(), args)
            row = {"size": size, "quantization": quantization}
            row.update(outcome if isinstance(outcome, dict) else {"error": outcome})
            results.append(row)
            with open(results_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            print(_line(row), flush=True)
    finally:
        if args.models is None:
            shutil.rmtree(models, ignore_errors=True)
    print()
    print(table(results, args))


def _child(extra: list[str], seconds: float, args) -> dict | str | None:
    """Run this script as a subprocess: its RESULT line, None when it printed none, or an error line."""
    command = [sys.executable, __file__, *extra, "--device", args.device,
               "--sft-batch", str(args.sft_batch), "--reward-batch", str(args.reward_batch),
               "--ppo-batch", str(args.ppo_batch), "--ppo-minibatch", str(args.ppo_minibatch),
               "--advantage", args.advantage, "--rollout-weights", args.rollout_weights,
               "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--checkpointing"] if args.checkpointing
                                                                            else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(seconds, 1))
    except subprocess.TimeoutExpired as timeout:  # keep the phases it finished
        output = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else (timeout.stdout or "")
        partial = _last_result(output)
        if partial is None:
            return f"timed out after {seconds:.0f} s"
        return {**partial, "error": f"timed out after {seconds:.0f} s"}
    result = _last_result(done.stdout)
    if result is not None:
        if done.returncode != 0:
            tail = [line for line in done.stderr.strip().splitlines() if line.strip()]
            result["error"] = f"exit {done.returncode}: {tail[-1] if tail else 'no output'}"
        return result
    if done.returncode != 0:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return f"exit {done.returncode}: {tail[-1] if tail else 'no output'}"
    return None


def _last_result(output: str) -> dict | None:
    """The worker prints its results so far after every phase; the last such line."""
    for line in reversed(output.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def _line(row: dict) -> str:
    if "load" not in row:
        return f"{row['size']}:{row['quantization']}: {row['error']}"
    parts = [f"{row['size']}:{row['quantization']}", f"load {row['load']['seconds']:.0f} s",
             f"4 roles/4 models {row['load']['ratio']:.2f}"]
    for phase in PHASES:
        numbers = row.get(phase, {})
        if "error" in numbers:
            parts.append(f"{phase} {numbers['error']}")
        elif numbers:
            parts.append(f"{phase} {numbers['median_seconds']:.2f} s {numbers['peak_gib']:.2f} GiB")
    if "error" in row:
        parts.append(row["error"])
    return "  ".join(parts)


def table(results: list[dict], args) -> str:
    lines = [f"prompt {PROMPT_TOKENS} tokens, response {RESPONSE_TOKENS}; sft batch {args.sft_batch}, reward batch "
             f"{args.reward_batch} pairs, ppo batch {args.ppo_batch} (4 epochs x minibatch {args.ppo_minibatch}); "
             "seconds = median per step (ppo: per iteration); GiB = peak allocated",
             "| size | quantization | base GiB | 4 roles / 4 models | sft s | sft GiB | reward s | reward GiB "
             "| ppo s | ppo GiB |" + (" sft+ckpt GiB | reward+ckpt GiB |" if args.checkpointing else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.checkpointing else "")]
    for row in results:
        if "load" not in row:
            lines.append(f"| {row['size']} | {row['quantization']} | {row['error']} |")
            continue
        cells = [row["size"], row["quantization"], f"{row['load']['base_gib']:.2f}", f"{row['load']['ratio']:.2f}"]
        for phase in PHASES + (("sft_checkpointing", "reward_checkpointing") if args.checkpointing else ()):
            numbers = row.get(phase) or {}
            if "error" in numbers:
                cells += [numbers["error"], ""] if not phase.endswith("checkpointing") else [numbers["error"]]
            elif not phase.endswith("checkpointing"):
                cells += [f"{numbers['median_seconds']:.2f}", f"{numbers['peak_gib']:.2f}"] if numbers else ["", ""]
            else:
                cells += [f"{numbers['peak_gib']:.2f}" if numbers else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the builder
def build(size: str, folder: str, device: str) -> None:
    """Write a random T5 with flan-t5-`size`'s dimensions (bf16) and the tiny model's tokenizer to `folder`."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return
    if not (TINY / "tokenizer.json").is_file():
        from lorahf.tiny import make_tiny
        make_tiny(EXAMPLE_DATA, TINY)
    from lorahf.plan import FLAN_T5

    d_model, d_ff, layers, heads = TOY if size == "toy" else FLAN_T5[size]
    config = T5Config(vocab_size=32128, d_model=d_model, d_ff=d_ff, d_kv=64, num_heads=heads, num_layers=layers,
                      num_decoder_layers=layers, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = T5ForConditionalGeneration(config).to(torch.bfloat16)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(TINY).save_pretrained(partial)
    partial.rename(folder)


# ------------------------------------------------------------------------------------------ the worker
def measure(size: str, quantization: str, model: str, args) -> dict:
    import torch

    from lorahf.backbone import Backbone
    from lorahf.recipe import LoraSpec

    cuda = args.device == "cuda"

    def allocated() -> int:
        return torch.cuda.memory_allocated() if cuda else 0

    started = time.perf_counter()
    backbone = Backbone.load(model, quantization=quantization, device=args.device)
    seconds = time.perf_counter() - started
    base = allocated()
    lora = LoraSpec()
    backbone.add_adapter("sft", lora)
    backbone.add_adapter("reward", lora, head=True)
    backbone.copy_adapter("sft", "policy")
    backbone.copy_adapter("reward", "value")
    roles = allocated() - base
    report = backbone.memory_report()
    result = {"load": {"seconds": seconds, "base_gib": base / 2**30, "roles_mib": roles / 2**20,
                       # 4 separate models: each the base as loaded, plus its own adapter (and head)
                       "ratio": (base + roles) / (4 * base + roles) if cuda else report.ratio,
                       "tensor_ratio": report.ratio, "parameters": sum(p.numel() for p in backbone.model.parameters())},
              "device": torch.cuda.get_device_name() if cuda else "cpu",
              "ppo_settings": {"advantage": args.advantage, "rollout_weights": args.rollout_weights},
              "versions": _versions()}
    print("RESULT " + json.dumps(result), flush=True)
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocab = len(backbone.tokenizer)

    def tokens(rows: int, length: int) -> list[list[int]]:
        ids = torch.randint(3, vocab, (rows, length - 1), generator=generator).tolist()
        return [row + [backbone.tokenizer.eos_token_id] for row in ids]

    phases = [("sft", lambda: _sft(backbone, tokens, args.sft_batch)),
              ("reward", lambda: _reward(backbone, tokens, args.reward_batch)),
              ("ppo", lambda: _ppo(backbone, tokens, args))]
    if args.checkpointing:
        phases += [("sft_checkpointing", lambda: _checkpointed(backbone, _sft, tokens, args.sft_batch)),
                   ("reward_checkpointing", lambda: _checkpointed(backbone, _reward, tokens, args.reward_batch))]
    for name, make_step in phases:
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            step = make_step()
            times = []
            for i in range(args.warmup + args.steps):
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                step(i)
                if cuda:
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    times.append(time.perf_counter() - started)
            result[name] = {"median_seconds": statistics.median(times), "min_seconds": min(times), "steps": len(times),
                            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
                            "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0}
            if hasattr(step, "lengths"):
                result[name]["response_length"] = statistics.mean(step.lengths)
        except torch.OutOfMemoryError:
            result[name] = {"error": "out of memory"}
        except Exception as error:  # noqa: BLE001 - one phase's failure is a result; the next phase still runs
            result[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
        finally:
            print("RESULT " + json.dumps(result), flush=True)
            step = None
            for parameter in backbone.model.parameters():
                parameter.grad = None
    return result


def _sft(backbone, tokens, batch_size: int):
    import torch

    from lorahf.data import collate
    from lorahf.stages.sft import response_loss

    backbone.use("sft")
    backbone.set_trainable("sft")
    parameters = backbone.parameters("sft")
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    backbone.model.train()

    def step(i: int) -> None:
        batch = collate(tokens(batch_size, PROMPT_TOKENS), tokens(batch_size, RESPONSE_TOKENS),
                        backbone.tokenizer.pad_token_id).to(backbone.device)
        response_loss(backbone, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _reward(backbone, tokens, pairs: int):
    import torch

    from lorahf.data import collate
    from lorahf.stages.reward import pairwise_loss

    backbone.use("reward")
    backbone.set_trainable("reward")
    parameters = backbone.parameters("reward") + backbone.head("reward").trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    backbone.model.train()

    def step(i: int) -> None:
        prompts = tokens(pairs, PROMPT_TOKENS)
        batch = collate(prompts + prompts, tokens(2 * pairs, RESPONSE_TOKENS),
                        backbone.tokenizer.pad_token_id).to(backbone.device)
        scores = backbone.sequence_scores(batch)
        pairwise_loss(scores[:pairs], scores[pairs:]).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _ppo(backbone, tokens, args):
    import torch

    from lorahf.reward_model import SharedReward
    from lorahf.ppo.rollout_weights import MergedPolicy
    from lorahf.ppo.update import make_optimizer
    from lorahf.recipe import DataSpec, PPOStage
    from lorahf.stages.ppo import iterate

    backbone.model.eval()
    spec = PPOStage(data=DataSpec(files=["unused.jsonl"]), batch_size=args.ppo_batch,
                    minibatch_size=args.ppo_minibatch, advantage=args.advantage, rollout_weights=args.rollout_weights)
    backbone.set_trainable(*spec.trained_roles)  # the value adapter stays, unused, without gae
    optimizer = make_optimizer(backbone, spec)
    scorer = SharedReward(backbone, None)  # the reward adapter (its __call__ needs no recipe)
    sampler = MergedPolicy(backbone) if args.rollout_weights == "merged" else None  # its memory counts in the peak

    def step(i: int) -> None:
        prompts = [ids for ids in tokens(args.ppo_batch // spec.answers, PROMPT_TOKENS) for _ in range(spec.answers)]
        numbers = iterate(backbone, prompts, [""] * len(prompts), scorer, spec, spec.beta, optimizer,
                          torch.Generator().manual_seed(i), RESPONSE_TOKENS, i + 1, sampler=sampler)
        step.lengths.append(numbers["response_length"])
    step.lengths = []
    return step


def _checkpointed(backbone, make, tokens, batch_size: int):
    backbone.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return make(backbone, tokens, batch_size)


def _versions() -> dict:
    from importlib import metadata

    names = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
