"""Memory of lorahf's four RLHF roles on ONE 8-bit base vs four separate 8-bit models.

    python benchmarks/memory.py --sizes tiny,base

For each size, fresh subprocesses (so that none sees another's allocations), alternated --repeats times:
  ours      `Backbone.load(..., "8bit")` once; adapters sft, policy (copied from sft), reward (+ scalar
            head), value (copied from reward); LoRA as `lorahf.recipe.LoraSpec()` (r16 on every T5 linear).
  separate  the same model loaded four times with plain transformers + peft (BitsAndBytesConfig 8-bit),
            each with its own LoRA adapter of the same shape, and a scalar head for reward and value.
            (lorahf's Backbone refuses a second base in one process, by design; this is what it avoids.)
  ours-fp32 like `ours` with `quantization="none"`, for reference: what 8-bit saves on the base itself.
Each reports parameter + buffer bytes (int8 weights as stored, plus bitsandbytes' row scales) and memory
growth over what the process held after its imports: RSS once every weight has been read (as a forward
pass would), then after `malloc_trim(0)` (glibc keeps heap that loading freed; trimming returns it), split
into anonymous memory (the heap) and file-backed pages (transformers keeps the safetensors checkpoint
memory-mapped; every read page counts in RSS, once per mapping), and PSS (each page counted once).

Sizes: `tiny` is the quickstart's model, built by `lorahf make-tiny --data examples/summaries/data`;
`base` is a randomly initialised T5 with google/flan-t5-base's dimensions (no hub is reachable here),
saved into a temporary folder with save_pretrained and deleted afterwards. Memory does not depend on
the weights' values, so random weights measure the same thing as the real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO / "examples" / "summaries" / "data"
ROLES = ("sft", "policy", "reward", "value")
HEADED = ("reward", "value")

# google/flan-t5-base's config.json, minus what only matters for its tokenizer and generation.
FLAN_T5_BASE = dict(vocab_size=32128, d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12,
                    num_decoder_layers=12, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6,
                    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


# ------------------------------------------------------------------------------------------ the parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated: tiny, base")
    parser.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per setup, alternating "
                        "ours, separate and ours-fp32; the table shows medians")
    parser.add_argument("--workdir", default=None, help="where to build the models (default: a temp folder)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, model = args.worker
        workers = {"ours": measure_ours, "ours-fp32": lambda folder: measure_ours(folder, quantization="none"),
                   "separate": measure_separate, "build-base": build_base}
        print(json.dumps(workers[kind](model)))
        return

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = set(sizes) - {"tiny", "base"}
    if unknown:
        parser.error(f"unknown size(s) {', '.join(sorted(unknown))}; use tiny and/or base")
    results = {}
    workdir = Path(tempfile.mkdtemp(prefix="lorahf-memory-", dir=args.workdir))
    try:
        for size in sizes:
            folder = workdir / size
            started = time.perf_counter()
            if size == "tiny":
                run([sys.executable, "-m", "lorahf.cli", "make-tiny", "--data", str(EXAMPLE_DATA),
                     "--out", str(folder)])
                built = {}
            else:
                built = worker("build-base", folder)
            log(f"{size}: built in {time.perf_counter() - started:.0f} s")
            runs = [(worker("ours", folder), worker("separate", folder), worker("ours-fp32", folder))
                    for _ in range(args.repeats)]
            results[size] = {"built": built, "ours": [r[0] for r in runs], "separate": [r[1] for r in runs],
                             "ours_fp32": [r[2] for r in runs]}
            log(f"{size}: measured in {time.perf_counter() - started:.0f} s")
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(results))
    print("\n<!-- raw: " + json.dumps(results, sort_keys=True) + " -->")


def worker(kind: str, model: Path) -> dict:
    output = run([sys.executable, __file__, "--worker", kind, str(model)])
    return json.loads(output.strip().splitlines()[-1])


def run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr}")
    return done.stdout


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


MEASURES = (("tensor_bytes", "parameter + buffer bytes"),
            ("rss_growth", "RSS growth after loading (every weight read once)"),
            ("trimmed_rss_growth", "RSS growth after `malloc_trim(0)`"),
            ("trimmed_anonymous_growth", "… of which anonymous (heap)"),
            ("trimmed_file_backed_growth", "… of which file-backed (the checkpoint, memory-mapped)"),
            ("trimmed_pss_growth", "PSS growth after `malloc_trim(0)` (a page mapped 4 times counts once)"))


def markdown(results: dict) -> str:
    lines = ["| model | measure | lorahf: one 8-bit base, 4 adapters | 4 separate 8-bit models "
             "| lorahf / separate | for reference: lorahf, one fp32 base, 4 adapters |",
             "|---|---|---|---|---|---|"]
    for size, result in results.items():
        ours, separate, fp32 = result["ours"], result["separate"], result["ours_fp32"]
        label = f"{size} ({ours[0]['parameters'] / 1e6:.1f}M params, d_model {ours[0]['d_model']})"
        for key, name in MEASURES:
            mine, theirs = median([r[key] for r in ours]), median([r[key] for r in separate])
            lines.append(f"| {label} | {name} | {spread([r[key] for r in ours])} "
                         f"| {spread([r[key] for r in separate])} | {mine / theirs:.2f} "
                         f"| {spread([r[key] for r in fp32])} |")
    lines += ["", "| model | one 8-bit base | one LoRA adapter (r16, 7 linears) | one scalar head "
                  "| lorahf's own estimate of 4 separate models (`MemoryReport.separate_models_bytes`) |",
              "|---|---|---|---|---|"]
    for size, result in results.items():
        report = result["ours"][0]["report"]
        lines.append(f"| {size} | {mib(report['base_bytes'])} | {mib(report['adapter_bytes']['sft'])} "
                     f"| {report['head_bytes']['reward']:,} B | {mib(report['separate_models_bytes'])} |")
    return "\n".join(lines)


def median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def spread(values: list[int]) -> str:
    """The median, and the range when the runs differ by more than 1 %."""
    low, high = min(values), max(values)
    if high - low <= 0.01 * high:
        return mib(median(values))
    return f"{mib(median(values))} ({low / 2**20:,.0f}–{high / 2**20:,.0f})"


# ----------------------------------------------------------------------------------------- the workers
def build_base(folder: str) -> dict:
    """A random T5 with flan-t5-base's shape and an untied head, saved like a hub checkpoint."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, logging

    from lorahf.tiny import train_tokenizer

    logging.disable_progress_bar()
    config = T5Config(**FLAN_T5_BASE)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    # transformers 5.x ties T5's head to the embeddings whatever the config says; Flan-T5's is untied.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model) * config.d_model ** -0.5)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    model.save_pretrained(folder)
    # A tokenizer only so that the folder loads like a model folder; no text is encoded here.
    train_tokenizer(["a tokenizer is needed to load the folder, not to measure it"], 300).save_pretrained(folder)
    on_disk = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    return {"parameters": sum(p.numel() for p in model.parameters()), "safetensors_bytes": on_disk}


def measure_ours(folder: str, quantization: str = "8bit") -> dict:
    before = _memory_after_imports()
    from lorahf.backbone import Backbone
    from lorahf.recipe import LoraSpec

    backbone = Backbone.load(folder, quantization=quantization, device="cpu")
    backbone.add_adapter("sft", LoraSpec())
    backbone.copy_adapter("sft", "policy")
    backbone.add_adapter("reward", LoraSpec(), head=True)
    backbone.copy_adapter("reward", "value")
    report = backbone.memory_report()
    base_parameters = sum(p.numel() for name, p in backbone.model.named_parameters() if "lora_" not in name)
    _read_every_weight([backbone.model, *backbone.heads.values()])
    return _result(before, report.total_bytes, base_parameters, backbone.d_model, report=report.as_dict(),
                   int8_layers=_int8_layers(backbone.model))


def measure_separate(folder: str) -> dict:
    before = _memory_after_imports()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, BitsAndBytesConfig

    from lorahf.backbone import ScalarHead
    from lorahf.recipe import LoraSpec

    lora = LoraSpec()
    models, heads = [], []
    for role in ROLES:
        base = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32, device_map={"": "cpu"},
                                                     quantization_config=BitsAndBytesConfig(load_in_8bit=True))
        config = LoraConfig(task_type="SEQ_2_SEQ_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules)
        models.append(get_peft_model(base, config, adapter_name=role))
        if role in HEADED:
            heads.append(ScalarHead(base.config.d_model))
    tensor_bytes = sum(_tensor_bytes(m) for m in models + heads)
    _read_every_weight(models + heads)
    base_parameters = sum(p.numel() for name, p in models[0].named_parameters() if "lora_" not in name)
    return _result(before, tensor_bytes, base_parameters, models[0].config.d_model,
                   int8_layers=_int8_layers(models[0]))


def _memory_after_imports() -> dict:
    """Import everything either side needs first, so that the growth measured is what loading costs."""
    import gc

    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers

    import lorahf.backbone  # noqa: F401
    import lorahf.recipe  # noqa: F401

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    gc.collect()
    return _memory()


def _memory() -> dict:
    """This process's resident memory: all of it (RSS), split into anonymous (heap) and file-backed pages,
    and PSS (a page mapped n times counts 1/n each time, so a checkpoint mapped 4 times counts once)."""
    import psutil

    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = {key: int(status[key].split()[0]) * 1024 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    return {"rss": kib["VmRSS"], "anonymous": kib["RssAnon"], "file_backed": kib["RssFile"], "peak": kib["VmHWM"],
            "pss": psutil.Process().memory_full_info().pss}


def _result(before: dict, tensor_bytes: int, parameters: int, d_model: int, **extra) -> dict:
    import ctypes
    import gc

    gc.collect()
    loaded = _memory()
    # Loading frees the fp32 weights it quantized, but glibc keeps much of that heap rather than giving it
    # back; malloc_trim(0) returns it, so what stays is what the loaded models hold.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = _memory()
    return {"tensor_bytes": tensor_bytes, "rss_growth": loaded["rss"] - before["rss"],
            "peak_rss_growth": loaded["peak"] - before["rss"],
            "trimmed_rss_growth": trimmed["rss"] - before["rss"],
            "trimmed_anonymous_growth": trimmed["anonymous"] - before["anonymous"],
            "trimmed_file_backed_growth": trimmed["file_backed"] - before["file_backed"],
            "trimmed_pss_growth": trimmed["pss"] - before["pss"],
            "parameters": parameters, "d_model": d_model, **extra}


def _read_every_weight(modules) -> None:
    """Read each weight once, as a forward pass would: unquantized weights can stay memory-mapped from the
    checkpoint file after loading, and such pages only count in RSS once they have been read."""
    import torch

    with torch.no_grad():
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                tensor.sum()


def _tensor_bytes(module) -> int:
    """Parameters and buffers as stored, plus bitsandbytes' int8 row scales (as Backbone.memory_report counts)."""
    from lorahf.backbone import _quant_state_bytes

    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() + _quant_state_bytes(t) for t in tensors)


def _int8_layers(model) -> int:
    """bitsandbytes' own int8 linears (peft's LoRA wrappers around them share the class name)."""
    return sum(type(m).__module__.startswith("bitsandbytes") and type(m).__name__ == "Linear8bitLt"
               for m in model.modules())


if __name__ == "__main__":
    main()
