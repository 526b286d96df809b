"""Data-parallel training across processes started by `torchrun` (torch.distributed).

When WORLD_SIZE > 1 (torchrun sets it, with RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT),
`setup` joins the process group: gloo on CPU, NCCL on CUDA (one GPU per process, picked by
LOCAL_RANK). Every rank builds the same model from the same seed and draws the same epoch
order; `shard` hands rank r the batches r, r + N, r + 2N, ... of that order, so the ranks
split each epoch between them (the last round padded with the epoch's first batches). The
training loop wraps each trainer's step in DistributedDataParallel (runtime/loop.py), which
averages the gradients during backward, so the weights stay identical on every rank.
Validation runs on every rank (the same weights, the same number),
so every rank takes the same early-stopping decision; only rank 0 writes checkpoints and
artifacts, and only rank 0 prints.

Without torchrun (WORLD_SIZE unset or 1) every function is a no-op and rank() is 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import distributed as dist


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; the device this rank trains on."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def shard(batches: Iterable[Any]) -> Iterator[Any]:
    """This rank's share of an epoch's batches: every world()-th one, from rank()'s. Every rank
    draws the same order, so every rank knows when the epoch ends without talking to the
    others. The last round is filled up from the epoch's first batches (as torch's
    DistributedSampler pads), so that every rank steps the same number of times."""
    n, r = world(), rank()
    if n == 1:
        yield from batches
        return
    it = iter(batches)
    first: list[Any] = []
    while True:
        round_ = [b for b in (next(it, None) for _ in range(n)) if b is not None]
        if not round_:
            return
        if len(first) < n:
            first += round_[: n - len(first)]
        if len(round_) < n:
            round_ += [first[i % len(first)] for i in range(n - len(round_))]
        yield round_[r]
