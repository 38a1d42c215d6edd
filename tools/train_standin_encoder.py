"""Train a stand-in "foundation" encoder WITHOUT labels or counts on the patches of training tile files, and save
it as a local weights file that ``pathoucc features --model resnet18 --weights FILE`` loads.

    python tools/train_standin_encoder.py bench/frozen/tiles/train.h5 --method simclr --steps 400 \\
        --out bench/frozen/standin-simclr.pt

The encoder is a timm ``resnet18`` made small (one basic block per stage, widths 16-32-64-128: 128-D pooled
features, 0.3 M parameters; the timm keyword arguments are saved as ``model_args``), fed the patches at their own
size (``input_size`` 32) normalised with the training patches' per-channel mean and std (saved as
``pretrained_cfg``). Two ways to train it, both blind to labels and counts:

- ``simclr``: contrastive (SimCLR's NT-Xent loss on a 2-layer projection head): two random views of every patch
  (affine crop: scale 0.7-1.1, rotation up to 12 degrees, shift up to 3 px; brightness/contrast jitter; noise)
  must find each other among the batch;
- ``autoencoder``: the pooled features, through a small transposed-conv decoder, reconstruct the patch (MSE).

Training stops after ``--steps`` steps or ``--minutes`` of wall clock, whichever comes first (the cosine learning
rate follows whichever is further along). Only tile files given on the command line are read: give the training
slides' only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command  # noqa: E402

ARCHITECTURE = "resnet18"
MODEL_ARGS = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16}


def build_encoder() -> nn.Module:
    import timm

    args = {k: tuple(v) if isinstance(v, list) else v for k, v in MODEL_ARGS.items()}
    return timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0, **args)


def load_patches(paths: list[Path], limit: int | None, seed: int) -> np.ndarray:
    """(N, P, P, 3) uint8 patches of the tile files (a seeded random ``limit`` of them when given)."""
    from pathoucc.slides.tilefile import open_tiles

    parts = []
    for path in paths:
        with open_tiles(path) as tiles:
            parts.append(tiles.read(slice(0, len(tiles))))
    patches = np.concatenate(parts)
    if limit is not None and limit < len(patches):
        patches = patches[np.random.default_rng(seed).choice(len(patches), limit, replace=False)]
    return patches


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random view of a batch (B, 3, P, P) of normalised patches: affine crop, jitter, noise."""
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    scale, angle = uniform(0.7, 1.1), uniform(-12, 12) * math.pi / 180
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (3 / x.shape[-1]) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast, bright = uniform(0.7, 1.3).view(b, 1, 1, 1), uniform(-0.3, 0.3).view(b, 1, 1, 1)
    out = (out - out.mean(dim=(1, 2, 3), keepdim=True)) * contrast + out.mean(dim=(1, 2, 3), keepdim=True) + bright
    return out + 0.1 * torch.randn(out.shape, generator=gen)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view's positive is the other view of the same patch among 2B - 1 candidates."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


class Decoder(nn.Module):
    """Pooled features (B, D) -> (B, 3, 32, 32)."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.fc = nn.Linear(dim, 64 * (size // 8) ** 2)
        self.body = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, 3, 4, 2, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(h).view(len(h), 64, self.size // 8, self.size // 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tiles", type=Path, nargs="+", help="training tile files (pathoucc tile)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    parser.add_argument("--method", choices=("simclr", "autoencoder"), default="simclr")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (at most)")
    parser.add_argument("--steps", type=int, default=400, help="steps (the budget on a machine not overloaded)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-patches", type=int, default=None, help="train on a seeded subset of this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared, busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pathoucc.files import write_torch

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    patches = load_patches(args.tiles, args.max_patches, args.seed)
    size = patches.shape[1]
    pixels = torch.from_numpy(patches).permute(0, 3, 1, 2)  # uint8; a batch at a time becomes float
    sample = pixels[torch.randperm(len(pixels), generator=gen)[:5000]].float().div_(255.0)
    mean, std = sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3))

    def normalised(index: torch.Tensor) -> torch.Tensor:
        return (pixels[index].float().div_(255.0) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    encoder = build_encoder()
    dim = encoder.num_features
    head = (nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 64))
            if args.method == "simclr" else Decoder(dim, size))
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    budget, start, step, losses = args.minutes * 60, time.perf_counter(), 0, []
    encoder.train()
    while step < args.steps and (elapsed := time.perf_counter() - start) < budget:
        for group in opt.param_groups:  # cosine over the clock (or the steps, if they end first)
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * max(elapsed / budget, step / args.steps)))
        batch = normalised(torch.randint(len(pixels), (args.batch_size,), generator=gen))
        if args.method == "simclr":
            loss = nt_xent(head(encoder(augment(batch, gen))), head(encoder(augment(batch, gen))), args.temperature)
        else:
            loss = F.mse_loss(head(encoder(batch)), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
        step += 1
        if step % 25 == 0:
            print(f"step {step} loss {np.mean(losses[-25:]):.4f} {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    encoder.eval()
    write_torch({
        "architecture": ARCHITECTURE, "model_args": MODEL_ARGS, "state_dict": encoder.state_dict(),
        "pretrained_cfg": {"input_size": [3, size, size], "mean": mean.tolist(), "std": std.tolist(),
                           "interpolation": "bilinear"},
        "training": {"method": args.method, "steps": step, "seconds": round(seconds, 1),
                     "patches": len(pixels), "batch_size": args.batch_size,
                     "final_loss": float(np.mean(losses[-25:])) if losses else None,
                     "command": command("train_standin_encoder.py", sys.argv[1:])},
    }, args.out)
    print(f"{args.method}: {step} steps in {seconds:.0f} s on {len(pixels)} patches -> {args.out}")


if __name__ == "__main__":
    main()
