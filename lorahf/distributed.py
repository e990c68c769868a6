"""Data parallelism: `accelerate launch -m lorahf run RECIPE` runs one process per device, each holding the one
quantized base. Every process runs the same stage code on the same data order; each takes its share of every
global batch, and the trainable adapters' gradients are summed across processes before each optimizer step
(losses are normalised by the global batch, so the sum is the one-process gradient). Only the first process
writes to the run folder; the others wait for it where they read what it wrote.

In one process (the default) every function here is a no-op.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _started() -> bool:
    """Join the process group that `accelerate launch` (or torchrun) described in the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def world() -> int:
    return torch.distributed.get_world_size() if _started() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _started() else 0


def is_main() -> bool:
    return rank() == 0


def device() -> str:
    """The device this process trains on ('auto' outside data parallelism)."""
    if _started() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "auto"


def barrier() -> None:
    if _started():
        torch.distributed.barrier()


def share(indices: list[int]) -> list[int]:
    """This process's rows of a global batch (every process sees the same global batch)."""
    return indices[rank()::world()] if _started() else indices


def total(value: torch.Tensor) -> torch.Tensor:
    """The sum over processes of a number (e.g. the tokens in each one's share of a batch); in one process,
    the value itself."""
    if not _started():
        return value
    tensor = value.detach().to(torch.float64).clone()
    torch.distributed.all_reduce(tensor)
    return tensor.to(value.dtype if value.is_floating_point() else torch.float32)


def sum_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum every process's gradients of `parameters` in place, as one flat buffer (one all-reduce)."""
    if not _started():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def share_of_mean(loss: torch.Tensor, count: int) -> torch.Tensor:
    """A mean over this process's `count` items, rescaled to its share of the mean over every process's items,
    so that the summed gradients are those of the whole batch's mean; in one process, `loss` itself."""
    if not _started():
        return loss
    return loss * (count / total(torch.tensor(float(count))).item())
