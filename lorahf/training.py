"""The loop every adapter-training stage shares, and its helpers.

    state = train_adapter("sft", spec, recipe, backbone, folder, progress, rows=len(train),
                          loss=lambda indices: ..., check=lambda step: {"loss": ...}, criterion="loss")

`train_adapter` steps over epochs, checks the held-out data every `eval_every` steps and keeps the best
adapter, stops by itself after `patience` checks without a new best, and every `checkpoint_every` steps
writes a checkpoint that the same `lorahf run` resumes from. The stage-specific parts (what a batch is,
what the loss is, what the held-out check measures) stay visible in each stage file.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from lorahf import distributed
from lorahf.data import batches
from lorahf.errors import LorahfError
from lorahf.runs import atomic_path

LOG_EVERY = 10  # steps between lines in metrics.jsonl
CHECKPOINT_STATE = "state.pt"


@dataclass
class LoopState:
    """Where an adapter-training loop stands: what a checkpoint holds besides the adapter, the optimizer,
    the learning-rate schedule and the random state."""

    step: int = 0  # optimizer steps done
    start: dict = field(default_factory=dict)  # the held-out check before the first step
    best: dict = field(default_factory=dict)  # the held-out check of the kept adapter
    best_step: int = 0
    checks_since_best: int = 0  # held-out checks in a row without a new best (patience)
    stopped_early: bool = False
    finished: bool = False  # the loop is over; what is left is the stage's own work on the best adapter
    losses: list = field(default_factory=list)  # the training loss of every step


def train_adapter(stage: str, spec, recipe, backbone, folder, progress, *, rows: int, lengths: list[int] | None,
                  loss: Callable[[list[int]], tuple], check: Callable[[int], dict],
                  criterion: str, maximize: bool = False, role: str | None = None, dropout: bool = True) -> LoopState:
    """Train the adapter `role` (default: named as the stage; already added, trainable and in use) and leave the
    best one in use.

    `loss(indices)` -> (the loss of these rows, their tokens) or (loss, tokens, {name: number}), numbers logged
    as their mean over the steps of each log line; `check(step)` -> the held-out numbers (logged as eval_*), of
    which `criterion` picks the best adapter (lower is better unless `maximize`). The best adapter is written to
    the run folder at once, so a kill never loses it. `dropout`: False trains with every dropout at 0."""
    role = role or stage
    stage_hash = recipe.stage_hash(stage)
    saved = read_checkpoint(stage, backbone, folder, stage_hash, progress, (role,))  # its adapter is loaded, if any
    if saved is not None:
        backbone.set_trainable(role)
        backbone.use(role)
    parameters = backbone.parameters(role)
    steps = step_plan(rows, spec.batch_size, spec.epochs, spec.max_steps)
    optimizer, scheduler = make_optimizer(parameters, spec, steps)
    state = resume(saved, optimizer, scheduler)

    def better(found: dict) -> bool:
        return found[criterion] > state.best[criterion] if maximize else found[criterion] < state.best[criterion]

    if state.step == 0 and not state.finished:
        state.start = state.best = _checked(check, folder, stage, 0)
        backbone.save_adapter(role, folder.adapter_dir(role))
    throughput = Throughput()
    tokens_per_s = 0.0
    logged: list[dict] = []  # each step's own numbers since the last log line
    with progress.task(stage, total=steps) as bar, nullcontext() if dropout else without_dropout(backbone.model):
        bar.advance(state.step)
        for step, indices in index_batches(rows, spec.batch_size, steps, recipe.seed, lengths):
            if state.finished:
                break
            if step <= state.step:
                continue  # done before the checkpoint this run resumed from
            backbone.model.train()
            step_loss, tokens, *numbers = loss(distributed.share(indices))  # this process's rows (all in one)
            update(step_loss, optimizer, scheduler, parameters, spec.max_grad_norm, stage, step)
            logged.append(numbers[0] if numbers else {})
            state.step = step
            state.losses.append(distributed.total(step_loss.detach()).item())
            throughput.add(tokens)
            if step % spec.eval_every == 0 or step == steps:
                found = _checked(check, folder, stage, step)
                if better(found):
                    state.best, state.best_step, state.checks_since_best = found, step, 0
                    backbone.save_adapter(role, folder.adapter_dir(role))
                else:
                    state.checks_since_best += 1
                    state.stopped_early = spec.patience is not None and state.checks_since_best >= spec.patience
            state.finished = state.stopped_early or step == steps
            if step % LOG_EVERY == 0 or state.finished:
                tokens_per_s = throughput.per_second()
                folder.log_metrics(stage, step, {"loss": mean(state.losses[-LOG_EVERY:]),
                                                 "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s,
                                                 **{name: mean(n[name] for n in logged) for name in logged[-1]}})
                logged = []
            if state.finished or step % spec.checkpoint_every == 0:
                save_checkpoint(stage, backbone, folder, stage_hash, (role,), state, optimizer, scheduler)
            bar.advance(loss=state.losses[-1], best=state.best[criterion], tok_s=round(tokens_per_s))
    if state.stopped_early:
        progress.note(f"{stage}: stopped at step {state.step} of {steps}: no better held-out {criterion} in "
                      f"{spec.patience} checks (best at step {state.best_step})")
    backbone.load_adapter(role, folder.adapter_dir(role))
    backbone.set_trainable()
    backbone.use(role)
    return state


@contextmanager
def without_dropout(model) -> Iterator[None]:
    """Inside, every dropout layer of the model (the base's and LoRA's) drops nothing; train mode stays on, so
    gradient checkpointing still applies."""
    layers = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    rates = [layer.p for layer in layers]
    for layer in layers:
        layer.p = 0.0
    try:
        yield
    finally:
        for layer, rate in zip(layers, rates):
            layer.p = rate


def _checked(check: Callable[[int], dict], folder, stage: str, step: int) -> dict:
    found = check(step)
    folder.log_metrics(stage, step, {f"eval_{k}": v for k, v in found.items()})
    return found


def save_checkpoint(stage: str, backbone, folder, stage_hash: str, roles: tuple[str, ...], state, optimizer,
                    scheduler=None) -> None:
    """The adapters being trained (and their heads), the optimizer, the schedule (if any), the random state and the
    loop's state (a dataclass), in one atomic folder (written by the first process; every process calls this)."""
    def write() -> None:
        with atomic_path(folder.checkpoint_dir(stage)) as temp:
            temp.mkdir()
            for role in roles:
                backbone.write_adapter(role, temp / role)
            torch.save({"stage_hash": stage_hash, "state": asdict(state), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                       temp / CHECKPOINT_STATE)

    distributed.first_writes(write)


def read_checkpoint(stage: str, backbone, folder, stage_hash: str, progress, roles: tuple[str, ...],
                    unit: str = "step") -> dict | None:
    """The last checkpoint of this same stage (same hash), its adapters loaded in place of the fresh ones; None
    when there is none. `unit`: the loop state's counter (step, iteration), for the note and the metrics log (the
    steps after the checkpoint's run, and log, again)."""
    path = folder.checkpoint_dir(stage)
    if not (path / CHECKPOINT_STATE).is_file():
        return None
    saved = torch.load(path / CHECKPOINT_STATE, weights_only=True)
    if saved["stage_hash"] != stage_hash:
        progress.note(f"[yellow]{stage}: the checkpoint was made with another recipe; starting over[/yellow]")
        folder.drop_metrics(stage)
        return None
    for role in roles:
        backbone.load_adapter(role, path / role)
    folder.drop_metrics(stage, after_step=saved["state"][unit])
    progress.note(f"{stage}: resuming after {unit} {saved['state'][unit]} from {path}")
    return saved


def resume(saved: dict | None, optimizer, scheduler) -> LoopState:
    """The loop state of a checkpoint, with its optimizer, schedule and random state restored; a fresh state
    without one."""
    if saved is None:
        return LoopState()
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return LoopState(**saved["state"])


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


def mean(values) -> float:
    """The mean of a list of floats; NaN for an empty one (a metric with nothing to average)."""
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def describe_training(spec) -> str:
    """A training stage's settings in one line (lorahf plan)."""
    return (f"lr {spec.learning_rate:g}, batch {spec.batch_size}, epochs {spec.epochs:g}"
            + (f", max {spec.max_steps} steps" if spec.max_steps else ""))


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
        from lorahf.stages.registry import STAGES

        writers = [stage.name for stage in STAGES if role in stage.creates]
        raise LorahfError(f"{needed_by} needs the '{role}' adapter, but {folder.adapter_dir(role)} does not exist",
                          hint=f"the {' or '.join(writers)} stage writes it: lorahf run RECIPE --stage {writers[0]}"
                          if writers else "name an adapter this run has trained")
    backbone.load_adapter(role, folder.adapter_dir(role))
