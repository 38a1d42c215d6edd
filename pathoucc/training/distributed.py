"""Many GPUs (or CPU processes): ``torchrun --nproc_per_node N pathoucc train CONFIG`` trains with torch's
DistributedDataParallel. Everything distributed is here; the training loop makes a few calls.

- The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``):
  NCCL when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU.
- Each rank draws its own bags: sampler and augmentation seed ``seed + 1000 * rank`` (:func:`rank_seed`; rank 0
  draws what a single process draws). ``bags.bags_per_batch`` is per rank: the global batch is
  ``world_size * bags_per_batch`` bags, and DDP averages the gradients.
- On CUDA, batch-norm layers become ``SyncBatchNorm`` (statistics over the global batch); on the CPU each rank
  normalises with its own bags' statistics and DDP broadcasts rank 0's running statistics.
- Only rank 0 writes the run folder; metrics are averaged over the ranks at each log step; all ranks stop at the
  same step (a stop signal on any rank, or the time budget as measured by the slowest).
- A checkpoint records the world size; resuming with another is an error.
- The refinement (:mod:`pathoucc.cluster.refine`) runs through the same loop: each rank fine-tunes on its own
  patches (seed ``seed + 1000 * rank``), DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pathoucc.errors import PathouccError

__all__ = ["RANK_SEED_STRIDE", "World", "check_world_size", "is_main_process", "joined", "rank_seed", "world"]

RANK_SEED_STRIDE = 1000


def rank_seed(seed: int, rank: int) -> int:
    """The bag and augmentation seed of ``rank`` in a run seeded ``seed``."""
    return seed + RANK_SEED_STRIDE * rank


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process not started by torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class World:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` on CUDA."""
        if not self.active or device.type != "cuda":
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def wrap(self, model: nn.Module, device: torch.device, find_unused: bool) -> tuple[nn.Module, nn.Module]:
        """``(model, net)``: the model to save (with SyncBatchNorm on CUDA) and the module to train with (DDP)."""
        if not self.active:
            return model, model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        return model, nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def agree(self, stop: bool, elapsed: float, device: torch.device) -> tuple[bool, float]:
        """Whether any rank wants to stop, and the largest elapsed time (one all-reduce; no-op alone)."""
        if not self.active:
            return stop, elapsed
        t = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0].item()), float(t[1].item())

    def mean(self, record: dict[str, float], device: torch.device) -> dict[str, float]:
        """``record``'s values averaged over the ranks (every rank calls it at the same step)."""
        if not self.active or not record:
            return record
        t = torch.tensor(list(record.values()), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return dict(zip(record, (t / self.size).tolist(), strict=True))

    def barrier(self) -> None:
        """Wait until every rank is here (e.g. until rank 0 has written a file the others read; no-op alone)."""
        if self.active:
            dist.barrier()

    def finish(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def world(device_name: str = "auto") -> World:
    """This process's :class:`World`, joining torchrun's process group on first call (NCCL for CUDA training,
    gloo otherwise); a single process without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    w = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return w


@contextlib.contextmanager
def joined(device_name: str = "auto") -> Iterator[World]:
    """This process's :class:`World` for the block; a process group this call joined is left at its end (one
    joined by an enclosing block stays, so train -> refine -> evaluate share one)."""
    created = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    w = world(device_name)
    try:
        yield w
    finally:
        if created:
            w.finish()


def check_world_size(state: dict[str, Any], w: World, path: str | Path) -> None:
    """Refuse to resume a checkpoint written by a different number of processes (its bags would differ)."""
    saved = int(state.get("world_size", 1))
    if saved != w.size:
        raise PathouccError(f"the checkpoint was written by {saved} training process(es) but this job has {w.size}; "
                            f"resume with the same number (torchrun --nnodes x --nproc_per_node = {saved})", path)
