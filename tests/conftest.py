"""Shared fixtures: tiny real data (scikit-learn's 8×8 digits) written in the formats pathoucc reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pathoucc.data.idx import write_idx

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as ``(images (1797, 8, 8) uint8 in 0..255, labels (1797,) int64)``."""
    d = load_digits()
    images = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


@pytest.fixture(scope="session")
def digits_idx(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    """A folder of IDX files (train 1497 / t10k 300) made from the 8×8 digits."""
    folder = tmp_path_factory.mktemp("digits_idx")
    images, labels = digits
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:1497])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:1497].astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", images[1497:])
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[1497:].astype(np.uint8))
    return folder


@pytest.fixture()
def tiny_config(digits_idx: Path) -> dict:
    """A raw config dict that trains in a few seconds on the 8×8 digits."""
    return {
        "name": "tiny",
        "seed": 3,
        "data": {"source": "idx", "root": str(digits_idx), "val_fraction": 0.2},
        "bags": {"bag_size": 8, "bags_per_batch": 4, "ucc_min": 1, "ucc_max": 3},
        "model": {"backbone": "conv", "widths": [8, 16], "input_size": 8, "num_features": 4, "mlp": [16],
                  "decoder_widths": [16, 8]},
        "train": {"steps": 6, "val_every": 3, "checkpoint_every": 2, "log_every": 1, "val_bags": 8, "lr": 1e-3},
        "eval": {"n_init": 2, "batch_size": 256},
    }


@pytest.fixture(scope="session")
def digit_slide(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 1024 x 1024 px digit slide of :func:`slide_fixtures.make_digit_fixture`, built once per session (tests
    read it and write elsewhere; one that changes it works on a copy)."""
    from slide_fixtures import make_digit_fixture

    return make_digit_fixture(tmp_path_factory.mktemp("digits"))
