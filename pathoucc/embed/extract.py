"""Patch features of one patch file: uint8 patches -> the encoder's input size and normalisation -> (N, D)
float32, batched, on the device, under autocast where it has a fast low precision. The next batch is read from the
file (or the slide) while the encoder runs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from pathoucc.embed.encoder import FrozenEncoder
from pathoucc.errors import PathouccError
from pathoucc.runtime import autocast
from pathoucc.slides.patchfile import PatchFile

__all__ = ["embed_patches", "preprocess"]


def preprocess(pixels: torch.Tensor, encoder: FrozenEncoder) -> torch.Tensor:
    """(B, P, P, 3) uint8 on the device -> (B, 3, H, W) float32: resized to the encoder's ``input_size`` (with
    antialiasing when shrinking) and normalised with its mean and std."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[-2:]) != encoder.input_size:
        mode = encoder.interpolation
        x = F.interpolate(x, size=encoder.input_size, mode=mode,
                          **({} if mode == "nearest" else {"align_corners": False, "antialias": True}))
    mean = torch.tensor(encoder.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def embed_patches(patches: PatchFile, encoder: FrozenEncoder, device: torch.device, dtype: torch.dtype | None,
                  batch_size: int = 256, advance: Callable[[int], None] | None = None) -> np.ndarray:
    """The features of every patch of ``patches``, in file order: ``(N, D)`` float32. ``dtype``: the autocast
    type (None: fp32); ``advance(n)`` is called after each batch of ``n`` patches. Non-finite features (an
    overflow in low precision) are a :class:`PathouccError` naming the file."""
    n = len(patches)
    out = np.empty((n, encoder.num_features), np.float32)
    starts = list(range(0, n, batch_size))
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(patches.read, slice(0, min(batch_size, n))) if starts else None
        for i, start in enumerate(starts):
            pixels = pending.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                pending = reader.submit(patches.read, slice(nxt, min(nxt + batch_size, n)))
            x = preprocess(torch.from_numpy(pixels).to(device, non_blocking=True), encoder)
            with autocast(device, dtype):
                feats = encoder.model(x)
            out[start:start + len(pixels)] = feats.float().cpu().numpy()
            if advance is not None:
                advance(len(pixels))
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise PathouccError(f"the encoder gave non-finite features for {int(bad.sum())} of {n} patches "
                            f"(first: patch {int(np.argmax(bad))}); with low precision, try --fp32", patches.path)
    return out
