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
