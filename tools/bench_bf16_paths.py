"""Inference paths for resnet18@224 on the CPU, side by side: where is the 3x over fp32?

    python tools/bench_bf16_paths.py --out docs/results/bf16-paths.json

timm resnet18 (random weights, no head), a batch of 64 random 224-px images, ``torch.inference_mode``, one
warm-up then ``--repeats`` timed batches per path: fp32; bf16 autocast + channels-last (what ``pathoucc segment``
does on a CPU with bf16); the whole model cast to bf16 (no autocast); and TorchScript trace + freeze (oneDNN
fusions; ``torch.jit`` is deprecated) in fp32 and bf16. Prints one JSON line per path (images/s).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command, machine  # noqa: E402


def images_per_s(fn, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        fn(x)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
    return repeats * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    x = torch.rand(args.batch, 3, 224, 224)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    bf = copy.deepcopy(cl).to(torch.bfloat16)
    xb = xc.to(torch.bfloat16)

    def autocast_bf16(t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cl(t)

    with torch.inference_mode():
        frozen_fp32 = torch.jit.freeze(torch.jit.trace(cl, xc))
        frozen_bf16 = torch.jit.freeze(torch.jit.trace(bf, xb))
    paths = [("fp32", model, x), ("bf16 autocast, channels-last (pathoucc segment)", autocast_bf16, xc),
             ("model cast to bf16, channels-last", bf, xb), ("TorchScript frozen fp32, channels-last", frozen_fp32, xc),
             ("TorchScript frozen bf16, channels-last", frozen_bf16, xb)]
    rows = []
    for name, fn, inp in paths:
        rows.append({"path": name, "images_per_s": round(images_per_s(fn, inp, args.repeats), 1)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["vs_fp32"] = round(r["images_per_s"] / base, 2)
    if args.out:
        args.out.write_text(json.dumps({"date": date.today().isoformat(),
                                        "command": command("bench_bf16_paths.py", sys.argv[1:]),
                                        "machine": machine(),
                                        "batch": args.batch, "repeats": args.repeats, "paths": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
