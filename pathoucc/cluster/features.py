"""Features of instances: a trained model's ``extract_features`` over anything that reads instances, batched.

One extractor serves every :class:`~pathoucc.data.pool.Instances`: an in-memory or streamed pool (of patches or of
feature vectors) and an open tile, coords or feature file (read ``batch_size`` instances at a time, so memory does
not grow with the slide or the cohort).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pathoucc.config import Config
from pathoucc.data.loader import to_model_input
from pathoucc.data.pool import Instances
from pathoucc.errors import PathouccError
from pathoucc.models import input_shape
from pathoucc.models.encoders import TimmEncoder
from pathoucc.runtime import autocast, autocast_dtype, select_device

__all__ = ["check_fits_model", "default_batch_size", "extract_features", "inference_dtype", "iter_features",
           "resolve_device"]


@torch.no_grad()
def iter_features(model: torch.nn.Module, source: Instances, batch_size: int = 256,
                  device: torch.device | str = "cpu", index: np.ndarray | None = None,
                  dtype: torch.dtype | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Stream features: yields ``(positions, features (n, J) float32)``, ``batch_size`` instances at a time.

    ``model`` has ``extract_features((n, C, H, W) float in [0, 1], or (n, D) feature vectors) -> (n, J)`` and is
    put in eval mode.
    ``index`` (sorted) restricts to those instances; ``positions`` index into it (or into all instances).
    Pixels go to the device as uint8; ``dtype`` (e.g. ``runtime.autocast_dtype(device)``) runs the model under
    autocast in that precision (bf16 on CPUs with AMX/AVX512-BF16 is several times faster than fp32). timm
    backbones run channels-last on the CPU.
    """
    device = torch.device(device)
    model.eval()
    if device.type == "cpu" and isinstance(getattr(model, "encoder", None), TimmEncoder):
        model.to(memory_format=torch.channels_last)  # the pixels arrive channels-last already
    n = len(source) if index is None else len(index)
    for a in range(0, n, batch_size):
        where = slice(a, min(n, a + batch_size))
        pixels = source.read(where if index is None else index[where])
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(pixels)), device)
        with autocast(device, dtype):
            features = model.extract_features(x)
        yield where, features.float().cpu().numpy()


def extract_features(model: torch.nn.Module, source: Instances,
                     batch_size: int = 1024, device: torch.device | str = "cpu", index: np.ndarray | None = None,
                     dtype: torch.dtype | None = None) -> np.ndarray:
    """Features ``(N, J)`` float32 of every instance of ``source`` (or of ``index``), under autocast ``dtype``."""
    parts = [f for _, f in iter_features(model, source, batch_size, device, index, dtype)]
    if not parts:
        return np.zeros((0, int(getattr(model, "num_features", 0))), np.float32)
    return np.concatenate(parts)


def check_fits_model(source: Instances, cfg: Config, path: str | Path) -> None:
    """Raise :class:`PathouccError` naming ``path`` (the tile or feature file) unless the instances of ``source``
    (shape (C, H, W), or (D,)) are what the run's model takes."""
    expected = input_shape(cfg.model)
    if len(expected) == 1 or len(source.shape) == 1:
        if tuple(source.shape) != expected:
            have = f"{source.shape[0]}-dimensional feature vectors" if len(source.shape) == 1 else "image patches"
            want = (f"{expected[0]}-dimensional feature vectors (model.input_dim)" if len(expected) == 1
                    else "image patches (a pixel model)")
            raise PathouccError(f"the file holds {have} but the run's model takes {want}", path)
        return
    channels, height, width = source.shape
    if channels != cfg.model.in_chans:
        kind = "RGB (3 channels)" if channels == 3 else f"{channels}-channel"
        raise PathouccError(f"tile patches are {kind} but the run's model expects "
                            f"{cfg.model.in_chans}-channel inputs (model.in_chans)", path)
    if (height, width) != (cfg.model.input_size, cfg.model.input_size):
        raise PathouccError(f"patch size {height} px differs from the model's input size "
                            f"{cfg.model.input_size} px (model.input_size); tile the slide with "
                            f"--patch-size {cfg.model.input_size}", path)


def default_batch_size(cfg: Config) -> int:
    """Instances per forward pass: ``eval.batch_size`` capped at about 8 M input values (at least 16)."""
    size = input_shape(cfg.model)
    return max(16, min(cfg.eval.batch_size, 2**23 // (size[0] if len(size) == 1 else cfg.model.input_size**2)))


def inference_dtype(cfg: Config, device: torch.device | str, amp: bool | None = None) -> torch.dtype | None:
    """The autocast type of feature extraction: ``amp`` (default ``eval.amp``) on ``device`` (bf16 on CPUs with
    native bf16 and bf16 GPUs, fp16 on other GPUs, else fp32 = None)."""
    return autocast_dtype(torch.device(device), cfg.eval.amp if amp is None else amp)


def resolve_device(device: torch.device | str) -> torch.device:
    """A torch device as given, or the device named ``auto``, ``cpu`` or ``cuda`` (:func:`runtime.select_device`)."""
    return torch.device(device) if not isinstance(device, str) else select_device(device)
