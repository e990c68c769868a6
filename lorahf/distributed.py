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
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # where NCCL's object collectives go
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


def first_writes(write) -> None:
    """`write()` in the first process only; every process returns once it has written."""
    if not is_main():
        barrier()
        return
    try:
        write()
    finally:
        barrier()


def share(indices: list[int]) -> list[int]:
    """This process's rows of a global batch (every process sees the same global batch)."""
    return indices[rank()::world()] if _started() else indices


def total(value: torch.Tensor) -> torch.Tensor:
    """The sum over processes of a number (e.g. the tokens in each one's share of a batch); in one process,
    the value itself."""
    if not _started():
        return value
    # NCCL reduces only tensors on this process's GPU: a count made on the CPU goes there and comes back
    where = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tensor = value.detach().to(where, torch.float64, copy=True)
    torch.distributed.all_reduce(tensor)
    return tensor.to(value.device, value.dtype if value.is_floating_point() else torch.float32)


def gather(value: torch.Tensor, pad: float = 0) -> torch.Tensor:
    """Every process's rows of `value` stacked in rank order (dimensions past the first padded with `pad` to the
    widest process's); in one process, `value` itself. Rows may differ in number between processes."""
    if not _started():
        return value
    shapes = [None] * world()
    torch.distributed.all_gather_object(shapes, tuple(value.shape))
    widest = tuple(max(shape[d] for shape in shapes) for d in range(value.dim()))
    padded = value.new_full(widest, pad)
    padded[tuple(slice(0, n) for n in value.shape)] = value
    parts = [torch.empty_like(padded) for _ in shapes]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:shape[0]] for part, shape in zip(parts, shapes)])


def my_rows(count: int) -> slice:
    """Where this process's `count` rows sit among every process's rows stacked in rank order (as `gather`)."""
    if not _started():
        return slice(0, count)
    counts = [None] * world()
    torch.distributed.all_gather_object(counts, count)
    start = sum(counts[:rank()])
    return slice(start, start + count)


def merge_shares(lists: dict[str, list], items: int) -> dict[str, list]:
    """Per-item lists that each process computed for its `share` of `items` items, merged back into item
    order on every process; in one process, `lists` themselves."""
    if not _started():
        return lists
    parts = [None] * world()
    torch.distributed.all_gather_object(parts, lists)
    merged = {key: [None] * items if any(part[key] for part in parts) else [] for key in lists}
    for process, part in enumerate(parts):
        for key, values in part.items():
            if merged[key]:
                merged[key][process::world()] = values
    return merged


def add_up(numbers: dict[str, float]) -> dict[str, float]:
    """The sum over processes of each number (e.g. each process's share of a mean); in one process, the numbers."""
    if not _started() or not numbers:
        return numbers
    return dict(zip(numbers, total(torch.tensor(list(numbers.values()), dtype=torch.float64)).tolist()))


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
