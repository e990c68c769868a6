"""Loop helpers every training stage shares: steps over epochs, the optimizer, a guarded update.

The stage-specific parts (what a batch is, what the loss is) stay visible in each stage file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from lorahf import distributed
from lorahf.data import batches
from lorahf.errors import LorahfError


def step_plan(rows: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    """How many optimizer steps a stage takes: `epochs` passes over `rows`, capped by `max_steps`."""
    steps = max(1, math.ceil(epochs * math.ceil(rows / batch_size)))
    return min(steps, max_steps) if max_steps else steps


def index_batches(rows: int, batch_size: int, steps: int, seed: int,
                  lengths: list[int] | None = None) -> Iterator[tuple[int, list[int]]]:
    """(step, row indices) for `steps` steps, reshuffled every epoch, deterministically from the seed.

    With `lengths`, rows of similar length share a batch (less padding, same rows per epoch): each epoch's
    shuffled order is cut into windows of BUCKET_BATCHES batches, each window is sorted by length and cut
    into batches, and the batches are shuffled again."""
    step, epoch = 0, 0
    while True:
        for indices in _epoch_batches(rows, batch_size, seed, epoch, lengths):
            if step == steps:
                return
            step += 1
            yield step, indices
        epoch += 1


BUCKET_BATCHES = 32  # batches per length-sorting window: big enough to pad little, small enough to stay random


def _epoch_batches(rows: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None) -> list[list[int]]:
    if lengths is None:
        return list(batches(rows, batch_size, seed=seed, epoch=epoch))
    shuffled = [i for batch in batches(rows, batch_size, seed=seed, epoch=epoch) for i in batch]
    window = batch_size * BUCKET_BATCHES
    grouped: list[list[int]] = []
    for start in range(0, rows, window):
        chunk = sorted(shuffled[start:start + window], key=lambda i: lengths[i])
        grouped += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(grouped))
    return [grouped[i] for i in order]


def make_optimizer(parameters: list[torch.nn.Parameter], spec, total_steps: int):
    """AdamW over the adapter (and head) and the schedule the recipe names, via transformers."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(parameters, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    scheduler = get_scheduler(spec.lr_schedule, optimizer, num_warmup_steps=spec.warmup_steps,
                              num_training_steps=total_steps)
    return optimizer, scheduler


def update(loss: torch.Tensor, optimizer, scheduler, parameters, max_grad_norm: float | None,
           stage: str, step: int) -> float:
    """Backward, clip, step. A NaN or infinite loss or gradient stops the stage before it corrupts the adapter."""
    if not torch.isfinite(loss):
        raise LorahfError(f"{stage}: the loss is {loss.item()} at step {step}; the last saved adapter is kept",
                          hint="lower the learning rate or check the data")
    loss.backward()
    distributed.sum_gradients(parameters)  # data parallelism: each process's loss is its share of the batch's
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm or float("inf"))
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise LorahfError(f"{stage}: the gradient norm is {norm.item()} at step {step}; the last saved adapter "
                          "is kept", hint="lower the learning rate or set max_grad_norm")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


@dataclass
class Throughput:
    """Tokens per second over the steps since the last reading."""

    tokens: int = 0
    started: float = 0.0

    def add(self, tokens: int) -> None:
        if not self.started:
            self.started = time.perf_counter()
        self.tokens += tokens

    def per_second(self) -> float:
        elapsed = time.perf_counter() - self.started if self.started else 0.0
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        self.tokens, self.started = 0, time.perf_counter()
        return rate


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities of `targets` under `logits`, zero where `mask` is 0: [B, R]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logprobs * mask


def mean(values) -> float:
    """The mean of a list of floats; NaN for an empty one (a metric with nothing to average)."""
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def load_stage_data(spec, shape: str, seed: int):
    """A stage's (train, held-out) rows: its files, checked, split from the seed or from eval_files."""
    from lorahf.data import load_rows, split

    rows = load_rows(spec.files, shape, spec.columns, also=spec.eval_files)
    if spec.max_rows:
        rows = rows.select(range(min(spec.max_rows, len(rows))))
    if spec.eval_files:
        return rows, load_rows(spec.eval_files, shape, spec.columns, also=spec.files)
    return split(rows, spec.eval_fraction, seed)


def held_out_rows(recipe, or_sft: bool = False):
    """Rows to ask held-out questions of: evaluate.data's held-out split, else the ppo stage's (else sft's, with
    `or_sft`); all of a source's rows when it holds none out. None when the recipe has no such data."""
    sources = [(recipe.evaluate.data if recipe.evaluate else None, "prompts"),
               (recipe.ppo.data if recipe.ppo else None, "prompts")]
    if or_sft:
        sources.append((recipe.sft.data if recipe.sft else None, "sft"))
    for data, shape in sources:
        if data is not None:
            train_rows, eval_rows = load_stage_data(data, shape, recipe.seed)
            return eval_rows if len(eval_rows) else train_rows
    return None


def ensure_adapter(backbone, folder, role: str, needed_by: str) -> None:
    """Load a finished stage's adapter from the run folder when this process has not trained it."""
    if backbone.has_adapter(role):
        return
    if not folder.adapter_dir(role).is_dir():
        stage = {"policy": "ppo", "value": "ppo"}.get(role, role)
        raise LorahfError(f"{needed_by} needs the '{role}' adapter, but {folder.adapter_dir(role)} does not exist",
                          hint=f"the {stage} stage writes it: lorahf run RECIPE --stage {stage}"
                          if stage in ("sft", "reward", "ppo") else "name an adapter this run has trained")
    backbone.load_adapter(role, folder.adapter_dir(role))
