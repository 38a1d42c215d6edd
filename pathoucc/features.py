"""Features of instances: a trained model's ``extract_features`` over an instance pool or a tile file, batched.

One extractor serves both: an :class:`~pathoucc.data.pool.InstancePool` (in memory) and an open
:class:`~pathoucc.slides.tilefile.TileFile` (read ``batch_size`` patches at a time, so memory does not grow
with the slide).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pathoucc.config import Config
from pathoucc.data.pool import InstancePool
from pathoucc.errors import PathouccError
from pathoucc.slides.tilefile import TileFile

__all__ = ["check_tiles_fit_model", "default_batch_size", "extract_features", "iter_features"]


def _inputs(source: InstancePool | TileFile, index: np.ndarray | slice) -> torch.Tensor:
    """Instances ``index`` of ``source`` as ``(n, C, H, W)`` float in [0, 1]."""
    if isinstance(source, InstancePool):
        return source.tensor(index)
    return torch.from_numpy(source.read_patches(index)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def iter_features(model: torch.nn.Module, source: InstancePool | TileFile, batch_size: int = 256,
                  device: torch.device | str = "cpu",
                  index: np.ndarray | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Stream features: yields ``(positions, features (n, J) float32)``, ``batch_size`` instances at a time.

    ``model`` has ``extract_features((n, C, H, W) float in [0, 1]) -> (n, J)`` and is put in eval mode.
    ``index`` (sorted) restricts to those instances; ``positions`` index into it (or into all instances).
    """
    model.eval()
    n = len(source) if isinstance(source, InstancePool) else source.num_patches
    n = n if index is None else len(index)
    for a in range(0, n, batch_size):
        where = slice(a, min(n, a + batch_size))
        x = _inputs(source, where if index is None else index[where]).to(device)
        yield where, model.extract_features(x).float().cpu().numpy()


def extract_features(model: torch.nn.Module, source: InstancePool | TileFile, batch_size: int = 1024,
                     device: torch.device | str = "cpu", index: np.ndarray | None = None) -> np.ndarray:
    """Features ``(N, J)`` float32 of every instance of ``source`` (or of ``index``)."""
    parts = [f for _, f in iter_features(model, source, batch_size, device, index)]
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
