"""The command line both PPO benchmark workers share (ppo_ours_worker.py, ppo_trl_worker.py).

Standard library only: the TRL worker runs in its own virtual environment, without lorahf."""

from __future__ import annotations

import argparse


def worker_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="T5 folder (save_pretrained, with its tokenizer)")
    parser.add_argument("--data", required=True, help="JSONL of prompts, column 'document'")
    parser.add_argument("--iterations", type=int, required=True, help="timed PPO iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed PPO iterations first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (2 threads, 8-bit base in fp32) or cuda (bf16)")
    parser.add_argument("--quantization", default="8bit", choices=("8bit", "4bit", "none"), help="of the base")
    parser.add_argument("--prompt-tokens", type=int, default=48, help="a longer prompt keeps its first N-1 and EOS")
    parser.add_argument("--new-tokens", type=int, default=32, help="most tokens generated per response")
    return parser
