"""Augmentations of training instances, built from the config's ``data.augment`` list."""

from __future__ import annotations

from typing import Any

from pathoucc.errors import PathouccError

__all__ = ["build_augment"]


def build_augment(specs: list[dict[str, Any]]):
    """An albumentations ``Compose`` from ``[{"name": "HorizontalFlip", "p": 0.5}, …]`` (None if empty)."""
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
    return A.Compose(transforms)
