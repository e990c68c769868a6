"""Loop helpers: step plans and batch orders."""

from __future__ import annotations

import math

import pytest
import torch

from lorahf.errors import LorahfError
from lorahf.training import index_batches, step_plan


def test_step_plan():
    assert step_plan(100, 16, 1.0, None) == 7
    assert step_plan(100, 16, 2.5, None) == math.ceil(2.5 * 7)
    assert step_plan(100, 16, 3.0, 5) == 5


def test_batches_cover_every_row_once_per_epoch_and_repeat_from_the_seed():
    epoch = [b for _, b in index_batches(100, 16, 7, seed=3)]
    assert sorted(i for b in epoch for i in b) == list(range(100))
    assert epoch == [b for _, b in index_batches(100, 16, 7, seed=3)]
    assert epoch != [b for _, b in index_batches(100, 16, 7, seed=4)]
    two = [b for _, b in index_batches(100, 16, 14, seed=3)]
    assert two[:7] == epoch and two[7:] != epoch


def test_length_buckets_pad_less_and_keep_every_row():
    lengths = [int(x) for x in torch.randint(5, 100, (2000,), generator=torch.Generator().manual_seed(0))]
    plain = [b for _, b in index_batches(2000, 16, 125, seed=0)]
    bucketed = [b for _, b in index_batches(2000, 16, 125, seed=0, lengths=lengths)]
    assert sorted(i for b in bucketed for i in b) == list(range(2000))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert padding(bucketed) < 0.2 * padding(plain)
    assert bucketed == [b for _, b in index_batches(2000, 16, 125, seed=0, lengths=lengths)]


def test_update_refuses_a_nan_loss_and_leaves_weights_alone():
    from lorahf.training import update

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loss = (weight * float("nan")).sum()
    try:
        update(loss, optimizer, scheduler, [weight], 1.0, "sft", step=7)
    except LorahfError as error:
        assert "step 7" in str(error) and "nan" in str(error)
    else:
        raise AssertionError("a NaN loss was accepted")
    assert torch.equal(weight.detach(), torch.ones(3))


def test_update_refuses_an_infinite_gradient_and_leaves_weights_alone():
    from lorahf.training import update

    weight = torch.nn.Parameter(torch.ones(3))
    weight.register_hook(lambda grad: grad * float("inf"))  # a finite loss whose gradient overflows
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    with pytest.raises(LorahfError, match="sft: the gradient norm is inf at step 3"):
        update((weight * 2).sum(), optimizer, scheduler, [weight], 1.0, "sft", step=3)
    assert torch.equal(weight.detach(), torch.ones(3)) and weight.grad is None


class _OneWeight:
    """A stand-in for the Backbone with one trainable weight: what train_adapter asks of it, nothing more."""

    def __init__(self):
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.model = torch.nn.Module()
        self.loaded_from = []

    def parameters(self, role):
        return [self.weight]

    def write_adapter(self, role, folder):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.weight.detach().clone(), folder / "w.pt")

    save_adapter = write_adapter

    def load_adapter(self, role, folder):
        self.loaded_from.append(folder)
        self.weight = torch.nn.Parameter(torch.load(folder / "w.pt"))

    def set_trainable(self, *roles):
        pass

    def use(self, role):
        return self


def _loop(tmp_path, scripted: list[float], patience=3, checkpoint_every=100, max_steps=20, stop_at=None):
    """train_adapter on the stand-in: the loss pulls the weight up by a noisy step, each held-out check returns the
    next scripted number (lower is better); `stop_at` raises inside that step's update, as a kill would."""
    from types import SimpleNamespace

    from lorahf import training
    from lorahf.progress import RecordingProgress
    from lorahf.recipe import SFTStage
    from lorahf.runs import RunFolder

    spec = SFTStage(data={"files": ["unused.jsonl"]}, batch_size=2, max_steps=max_steps, eval_every=2,
                    patience=patience, checkpoint_every=checkpoint_every, learning_rate=0.1, lr_schedule="linear")
    recipe = SimpleNamespace(seed=0, stage_hash=lambda stage: "hash")
    backbone, folder, progress = _OneWeight(), RunFolder(tmp_path / "run"), RecordingProgress()
    checks = iter(scripted)

    def loss(indices):
        if stop_at is not None and training_step[0] + 1 == stop_at:
            raise KeyboardInterrupt
        training_step[0] += 1
        noise = torch.rand(())  # the random state a checkpoint must carry
        return (backbone.weight - 1 - noise) ** 2, len(indices)

    training_step = [0]
    torch.manual_seed(0)  # as a stage seeds before it adds its adapter
    state = training.train_adapter("sft", spec, recipe, backbone, folder, progress, rows=40, lengths=None,
                                   loss=loss, check=lambda step: {"loss": next(checks)}, criterion="loss")
    return state, backbone, folder, progress


def test_the_loop_stops_after_patience_checks_without_a_better_one_and_keeps_the_best(tmp_path):
    # checks at steps 0, 2, 4, ...: best at step 4, then three worse ones -> stop at step 10 of 20
    state, backbone, folder, progress = _loop(tmp_path, [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 9.0])
    assert (state.step, state.best_step, state.best["loss"], state.stopped_early) == (10, 4, 3.0, True)
    assert state.start == {"loss": 5.0} and len(state.losses) == 10
    assert torch.equal(backbone.weight.detach(), torch.load(folder.adapter_dir("sft") / "w.pt"))  # the best, reloaded
    assert any("stopped at step 10 of 20" in note for note in progress.notes)
    logged = [row["step"] for row in folder.read_metrics("sft") if "eval_loss" in row]
    assert logged == [0, 2, 4, 6, 8, 10]

    state, *_ = _loop(tmp_path / "patient", [5.0, 4.0, 3.0, 3.5, 3.2, 3.1] + [3.05] * 5, patience=None)
    assert (state.step, state.stopped_early) == (20, False)


def test_a_loop_stopped_mid_way_resumes_from_its_checkpoint_and_ends_as_an_unbroken_one(tmp_path):
    scripted = [5.0, 4.0, 3.0, 2.5, 2.6, 2.0, 2.1, 2.2, 2.3, 1.9, 1.8]
    unbroken, whole, _, _ = _loop(tmp_path / "whole", scripted, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        _loop(tmp_path / "cut", scripted, checkpoint_every=3, stop_at=14)
    # the second start sees the checks the first did not reach: those after the checkpoint at step 12
    resumed, again, folder, progress = _loop(tmp_path / "cut", scripted[7:], checkpoint_every=3)
    assert any("resuming after step 12" in note for note in progress.notes)
    assert (unbroken.step, unbroken.best_step, unbroken.stopped_early) == (16, 10, True)  # patience: 3 checks
    assert resumed.losses == unbroken.losses and resumed.best == unbroken.best and resumed.step == 16
    assert resumed.best_step == unbroken.best_step and torch.equal(again.weight, whole.weight)
    assert [row["step"] for row in folder.read_metrics("sft") if "loss" in row] == [10, 16]  # each step logged once
