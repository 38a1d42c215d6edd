"""Augmentations of training instances, built from the config's ``data.augment`` list.

They are reproducible: the training loop calls :func:`reseed_augment` before every step with the run's seed and
the step number, so a step's augmentations depend on nothing else and ``--resume`` continues exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

from pathoucc.errors import PathouccError

__all__ = ["augment_images", "build_augment", "reseed_augment", "step_seed"]


def step_seed(seed: int, step: int) -> int:
    """A 32-bit seed for ``step`` of a run seeded ``seed`` (independent streams per step)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step)]).generate_state(1)[0])


def reseed_augment(augment, seed: int, step: int) -> None:
    """Seed every transform of ``augment`` (a ``Compose``; None is a no-op) for ``step`` of a run seeded ``seed``."""
    if augment is not None:
        augment.set_random_seed(step_seed(seed, step))


def augment_images(images: np.ndarray, augment) -> np.ndarray:
    """``augment`` (already seeded; None: no change) applied to each image of ``(n, H, W, C)`` uint8; contiguous."""
    if augment is not None:
        images = np.stack([augment(image=im)["image"] for im in images])
    return np.ascontiguousarray(images)


def build_augment(specs: list[dict[str, Any]], seed: int = 0):
    """An albumentations ``Compose`` from ``[{"name": "HorizontalFlip", "p": 0.5}, …]`` (None if empty), seeded
    with ``seed`` (see :func:`reseed_augment` for per-step seeds)."""
    if not specs:
        return None
    import albumentations as A  # heavy and only needed with augmentations: imported on use

    transforms = []
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name", None)
        cls = getattr(A, str(name), None)
        if not isinstance(cls, type):
            raise PathouccError(f"data.augment: unknown albumentations transform {name!r}")
        try:
            transforms.append(cls(**spec))
        except (TypeError, ValueError) as exc:
            raise PathouccError(f"data.augment: {name}: {exc}") from None
    return A.Compose(transforms, seed=step_seed(seed, 0))
