"""Steps as a ``torch.utils.data`` dataset: item ``s`` is everything step ``s`` trains on, as uint8 pixels (or
float32 feature vectors, read from feature files).

Bag sampling and augmentation are pure functions of ``(seed, step)``, so a DataLoader over
``range(start_step, steps)`` with any number of workers yields exactly the batches the training loop would make
itself, and ``--resume`` continues exactly. Pixels stay uint8 until they are on the device (a quarter of the
bytes to copy); the training loop converts and the model normalises them there.
"""

from __future__ import annotations

import signal
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pathoucc.data.augment import augment_images, reseed_augment
from pathoucc.data.bags import BagBatch
from pathoucc.errors import PathouccError
from pathoucc.runtime import STOP_SIGNALS

__all__ = ["StepDataset", "batch_item", "step_loader", "to_model_input"]


def to_model_input(instances: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Instances as the model takes them, on ``device``: uint8 pixels ``(n, H, W, C)`` -> float ``(n, C, H, W)`` in
    [0, 1] (the uint8 is copied, the conversion runs there; the result keeps the channels-last layout), float
    feature vectors ``(n, D)`` -> float32 ``(n, D)`` as they are."""
    x = instances.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).float().div_(255.0)
    return x.float()


def batch_item(pool, batch: BagBatch, augment=None) -> dict[str, Any]:
    """A step's ``images`` ``(M, H, W, C)`` uint8 (or feature vectors ``(M, D)`` float32), ``members``/``mask``
    ``(B, N)``, ``ucc`` and ``low`` (the lowest count: ``ucc`` where exact) ``(B,)`` as tensors (``augment``,
    already seeded, applied to each image)."""
    images = augment_images(pool.read(batch.instances), augment)
    return {"images": torch.from_numpy(images), "members": torch.from_numpy(batch.members),
            "mask": torch.from_numpy(batch.mask), "ucc": torch.from_numpy(batch.ucc),
            "low": torch.from_numpy(batch.low_ucc)}


class StepDataset(Dataset):
    """Item ``step``: the ``num_bags`` bags of ``sampler`` at that step, their pixels read from ``pool`` and
    augmented with ``augment`` reseeded from ``(seed, step)``.

    A :class:`PathouccError` while reading (a corrupt tile file) comes back as ``{"error": message}`` rather than
    raised, so its one-line message reaches the training process intact from a DataLoader worker."""

    def __init__(self, sampler, pool, num_bags: int, augment=None, seed: int = 0) -> None:
        self.sampler, self.pool, self.num_bags, self.augment, self.seed = sampler, pool, num_bags, augment, seed

    def __getitem__(self, step: int) -> dict[str, Any]:
        try:
            reseed_augment(self.augment, self.seed, step)
            return batch_item(self.pool, self.sampler.sample(step, self.num_bags), self.augment) | {"step": step}
        except PathouccError as exc:
            return {"step": step, "error": str(exc)}


def _ignore_stop_signals(_worker: int) -> None:
    """Workers leave SIGUSR1 (SLURM's warning) and Ctrl-C to the training process, which stops at a step boundary
    and then shuts them down (a worker killed by the signal would abort the step instead). SIGTERM keeps its
    default: it is how a worker is ended when its loader is gone."""
    for sig in STOP_SIGNALS:
        if sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)


def step_loader(dataset: StepDataset, start: int, stop: int, num_workers: int = 0, pin_memory: bool = False,
                prefetch: int = 2) -> DataLoader:
    """Steps ``start .. stop - 1`` of ``dataset`` in order, prepared by ``num_workers`` processes (0: on demand in
    this one), pinned for a fast copy to a GPU. Its own generator leaves torch's global random state alone."""
    return DataLoader(dataset, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      prefetch_factor=prefetch if num_workers else None, worker_init_fn=_ignore_stop_signals,
                      generator=torch.Generator().manual_seed(0))
