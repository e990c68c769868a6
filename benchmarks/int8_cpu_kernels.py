"""bitsandbytes' two int8 kernels on the CPU, per layer shape: which one should an 8-bit lorahf base run?

    python benchmarks/int8_cpu_kernels.py [--calls 50] [--json FILE]

bitsandbytes picks the kernel of a `Linear8bitLt` from its `training` flag. In eval mode it runs LLM.int8
(`MatMul8bitLt`: each input row quantized to int8 as well, the outlier check, an int8 matmul, dequantization);
in training, on a CPU, `MatMul8bitFp` (the int8 weight dequantized, then a plain float matmul). lorahf runs the
second everywhere on a CPU (`lorahf.backbone._dequantize_int8_on_cpu`). This times one call of each, for the linear
shapes of the tiny T5, the 10M T5 of BENCHMARKS.md, and Flan-T5 base, large and xl, with 16 input rows (a
generation step of 16 answers) and 256 (a training minibatch), and measures each kernel's error against the float
layer it was quantized from (mean |error| / mean |output|). fp32, `torch.set_num_threads(2)`, inference mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings

SHAPES = {  # (in_features, out_features) of a model's q/k/v/o and wi layers
    "tiny T5 (d 128, ff 512)": [(128, 128), (128, 512)],
    "10M T5 (d 256, ff 1024)": [(256, 256), (256, 1024)],
    "Flan-T5-base (d 768, ff 2048)": [(768, 768), (768, 2048)],
    "Flan-T5-large (d 1024, ff 2816)": [(1024, 1024), (1024, 2816)],
    "Flan-T5-xl (d 2048, ff 5120)": [(2048, 2048), (2048, 5120)],
}
ROWS = (16, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="timed calls per kernel and shape (after one warm-up)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import torch

    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = []
    for model, shapes in SHAPES.items():
        for in_features, out_features in shapes:
            for batch in ROWS:
                rows.append({"model": model, "shape": [in_features, out_features], "rows": batch,
                             **_compare(in_features, out_features, batch, args.calls)})
    print("| model | layer (in x out) | input rows | LLM.int8 (eval) ms | dequantize (training) ms | ratio "
          "| LLM.int8 error | dequantize error |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['shape'][0]} x {row['shape'][1]} | {row['rows']} | {row['int8_ms']:.3f} "
              f"| {row['dequantize_ms']:.3f} | {row['dequantize_ms'] / row['int8_ms']:.2f} "
              f"| {row['int8_error']:.4f} | {row['dequantize_error']:.4f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
                       "calls": args.calls, "rows": rows}, handle, indent=1)


def _compare(in_features: int, out_features: int, batch: int, calls: int) -> dict:
    """Milliseconds per call and relative error of each kernel on one int8 layer."""
    import bitsandbytes as bnb
    import torch

    dense = torch.nn.Linear(in_features, out_features, bias=False)
    layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(dense.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu")  # quantizes the weight
    inputs = torch.randn(batch, in_features)
    figures = {}
    with torch.inference_mode():
        exact = dense(inputs)
        for name, training in (("int8", False), ("dequantize", True)):
            layer.train(training)  # the flag bitsandbytes picks its CPU kernel by
            error = ((layer(inputs) - exact).abs().mean() / exact.abs().mean()).item()
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                layer(inputs)
                times.append(time.perf_counter() - started)
            figures[f"{name}_ms"] = statistics.median(times) * 1e3
            figures[f"{name}_error"] = error
    return figures


if __name__ == "__main__":
    main()
