"""Features of instances: a trained model's ``extract_features`` over an instance pool or a tile file, batched.

One extractor serves all: an :class:`~pathoucc.data.pool.InstancePool` (in memory), a
:class:`~pathoucc.data.stream.StreamingPool` and an open :class:`~pathoucc.slides.tilefile.TileFile` (read
``batch_size`` patches at a time, so memory does not grow with the slide or the cohort).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pathoucc.config import Config
from pathoucc.data.loader import to_model_input
from pathoucc.data.pool import InstancePool
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError
from pathoucc.models.encoders import TimmEncoder
from pathoucc.runtime import autocast, autocast_dtype
from pathoucc.slides.tilefile import TileFile

__all__ = ["check_tiles_fit_model", "default_batch_size", "extract_features", "inference_dtype", "iter_features"]


def _pixels(source: InstancePool | StreamingPool | TileFile, index: np.ndarray | slice) -> torch.Tensor:
    """Instances ``index`` of ``source`` as ``(n, H, W, C)`` uint8."""
    images = source.read(index) if isinstance(source, (InstancePool, StreamingPool)) else source.read_patches(index)
    return torch.from_numpy(np.ascontiguousarray(images))


@torch.no_grad()
def iter_features(model: torch.nn.Module, source: InstancePool | StreamingPool | TileFile, batch_size: int = 256,
                  device: torch.device | str = "cpu", index: np.ndarray | None = None,
                  dtype: torch.dtype | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Stream features: yields ``(positions, features (n, J) float32)``, ``batch_size`` instances at a time.

    ``model`` has ``extract_features((n, C, H, W) float in [0, 1]) -> (n, J)`` and is put in eval mode.
    ``index`` (sorted) restricts to those instances; ``positions`` index into it (or into all instances).
    Pixels go to the device as uint8; ``dtype`` (e.g. ``runtime.autocast_dtype(device)``) runs the model under
    autocast in that precision (bf16 on CPUs with AMX/AVX512-BF16 is several times faster than fp32). timm
    backbones run channels-last on the CPU.
    """
    device = torch.device(device)
    model.eval()
    if device.type == "cpu" and isinstance(getattr(model, "encoder", None), TimmEncoder):
        model.to(memory_format=torch.channels_last)  # the pixels arrive channels-last already
    n = len(source) if isinstance(source, (InstancePool, StreamingPool)) else source.num_patches
    n = n if index is None else len(index)
    for a in range(0, n, batch_size):
        where = slice(a, min(n, a + batch_size))
        x = to_model_input(_pixels(source, where if index is None else index[where]), device)
        with autocast(device, dtype):
            features = model.extract_features(x)
        yield where, features.float().cpu().numpy()


def extract_features(model: torch.nn.Module, source: InstancePool | StreamingPool | TileFile,
                     batch_size: int = 1024, device: torch.device | str = "cpu", index: np.ndarray | None = None,
                     dtype: torch.dtype | None = None) -> np.ndarray:
    """Features ``(N, J)`` float32 of every instance of ``source`` (or of ``index``), under autocast ``dtype``."""
    parts = [f for _, f in iter_features(model, source, batch_size, device, index, dtype)]
    if not parts:
        return np.zeros((0, int(getattr(model, "num_features", 0))), np.float32)
    return np.concatenate(parts)


def check_tiles_fit_model(tiles: TileFile, cfg: Config) -> None:
    """Raise :class:`PathouccError` naming the tile file unless its patches are what the model takes."""
    if cfg.model.in_chans != 3:
        raise PathouccError(f"tile patches are RGB (3 channels) but the run's model expects "
                            f"{cfg.model.in_chans}-channel inputs (model.in_chans)", tiles.path)
    if tiles.patch_size != cfg.model.input_size:
        raise PathouccError(f"patch size {tiles.patch_size} px differs from the model's input size "
                            f"{cfg.model.input_size} px (model.input_size); tile the slide with "
                            f"--patch-size {cfg.model.input_size}", tiles.path)


def default_batch_size(cfg: Config) -> int:
    """Instances per forward pass: ``eval.batch_size`` capped at about 8 M input pixels (at least 16)."""
    return max(16, min(cfg.eval.batch_size, 2**23 // cfg.model.input_size**2))


def inference_dtype(cfg: Config, device: torch.device | str, amp: bool | None = None) -> torch.dtype | None:
    """The autocast type of feature extraction: ``amp`` (default ``eval.amp``) on ``device`` (bf16 on CPUs with
    native bf16 and bf16 GPUs, fp16 on other GPUs, else fp32 = None)."""
    return autocast_dtype(torch.device(device), cfg.eval.amp if amp is None else amp)
