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
    return parser
