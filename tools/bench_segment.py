"""Benchmark `pathoucc segment`: inference throughput (patches/s) and peak memory for two slide sizes.

(a) the MNIST-style conv model (widths 32-64-128, 10 features) on 32-px digit-slide patches;
(b) a timm ``resnet18`` (random weights) on 224-px RGB patches of a slide made from the H&E image
    ``shared/data/he_tile_1000.png`` (overlapping patches, stride 56);
(c) peak resident memory (VmHWM, see :func:`peak_rss_mib`) of segmenting a small and a 16x larger digit slide,
    each in a fresh process: the whole pipeline (features, map, CSV/HDF5, overlay, GeoJSON), to show that it
    does not grow with the pixels.

    nice -n 10 python tools/bench_segment.py --work /tmp/bench_segment

Needs ``tifffile`` (the ``test`` extra) for the slides it writes. Prints a markdown table. Models have random
weights: throughput does not depend on training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import relative  # noqa: E402

HE_IMAGE = ROOT.parent / "shared" / "data" / "he_tile_1000.png"


def _model(backbone: str, size: int, widths: list[int] | None = None):
    from pathoucc.config import config_from_dict
    from pathoucc.models import create_model

    model_cfg = {"backbone": backbone, "in_chans": 3, "input_size": size, "num_features": 10, "decoder": False}
    if widths:
        model_cfg["widths"] = widths
    cfg = config_from_dict({"model": model_cfg})
    torch.manual_seed(0)
    return create_model(cfg.model, 4).eval()


def _cluster_model(model, tiles, k: int = 10):
    """k-means on the features of the first patches (only so that assignments have real centres)."""
    from pathoucc.cluster.features import iter_features
    from pathoucc.cluster.kmeans import ClusterModel, fit_kmeans

    feats = np.concatenate([f for _, f in iter_features(model, tiles, 64, "cpu",
                                                             np.arange(min(tiles.num_patches, 256)))])
    km = fit_kmeans(feats, k, 0, 1)
    return ClusterModel(km.cluster_centers_.astype(np.float32), 0, max(km.inertia_ / len(feats), 1e-8))


def digit_tiles(work: Path, grid: int) -> Path:
    from make_digit_slide import make_digit_slide

    from pathoucc.slides.tiler import tile_slide

    folder = work / f"digits{grid}"
    slide, mask = make_digit_slide(folder / f"digits{grid}.tif", grid=(grid, grid), cell=32, region_cells=8,
                                   source="digits", seed=0)
    return tile_slide(slide, folder / "tiles", patch_size=32, level=0, region_size=256, annotations=mask,
                      workers=2)


def he_tiles(work: Path) -> Path:
    from PIL import Image
    from pyramid import write_array_pyramid  # tools/pyramid.py (needs tifffile: the test extra)

    from pathoucc.slides.tiler import tile_slide

    he = np.asarray(Image.open(HE_IMAGE).convert("RGB"))
    slide = write_array_pyramid(work / "he.tif", he, mpp=0.25)
    return tile_slide(slide, work / "he_tiles", patch_size=224, stride=56, level=0, tissue_threshold=0.0,
                      workers=2)


def throughput(model, h5: Path, batch_size: int, repeats: int = 2) -> tuple[int, float]:
    """(patches, best patches/s) of feature extraction + cluster assignment over the whole tile file."""
    from pathoucc.segment import segment_tiles
    from pathoucc.slides.tilefile import open_tiles

    with open_tiles(h5) as tiles:
        cm = _cluster_model(model, tiles)
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            segment_tiles(model, cm, tiles, batch_size)
            best = max(best, tiles.num_patches / (time.perf_counter() - start))
        return tiles.num_patches, best


def child_memory(h5: Path, out: Path) -> None:
    """Run in a fresh process: the whole per-slide pipeline, then print ru_maxrss (MiB) and timings as JSON."""
    from pathoucc.segment import segment_tiles, write_segmentation
    from pathoucc.segment.maps import cluster_colors
    from pathoucc.slides.tilefile import open_tiles

    torch.set_num_threads(2)
    model = _model("conv", 32, [32, 64, 128])
    start = time.perf_counter()
    with open_tiles(h5) as tiles:
        cm = _cluster_model(model, tiles)
        seg = segment_tiles(model, cm, tiles, 512)
        write_segmentation(seg, tiles, out, cluster_colors(cm.k))
        n, dims = tiles.num_patches, tiles.slide_dimensions
    print(json.dumps({"patches": n, "slide": list(dims), "rss_mib": peak_rss_mib(),
                      "seconds": time.perf_counter() - start}))


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB: ``VmHWM`` from /proc (Linux), else ``ru_maxrss``.

    ``ru_maxrss`` of a child started by fork + exec also counts the parent's pages from before the exec, so it
    would report the benchmark parent's peak; ``VmHWM`` belongs to the child's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_segment"))
    parser.add_argument("--small", type=int, default=32, help="digit grid side of the small slide (cells)")
    parser.add_argument("--large", type=int, default=128, help="digit grid side of the large slide (cells)")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(*args.child)
        return
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    small = digit_tiles(args.work, args.small)
    n, rate = throughput(_model("conv", 32, [32, 64, 128]), small, 512)
    rows.append(("(a) conv 32-64-128, digit slide", "32 px", n, f"{rate:.0f}"))
    if HE_IMAGE.is_file():
        he = he_tiles(args.work)
        n, rate = throughput(_model("resnet18", 224), he, 32)
        rows.append(("(b) timm resnet18 (random weights), H&E slide", "224 px", n, f"{rate:.1f}"))
    else:
        print(f"skipping (b): {HE_IMAGE} not found", file=sys.stderr)
    large = digit_tiles(args.work, args.large)
    memory = []
    for h5 in (small, large):
        res = subprocess.run([sys.executable, __file__, "--child", str(h5), str(args.work / "out")], check=True,
                             capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "2"})
        memory.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print("| model | patch | patches | patches/s (features + assignment) |")
    print("| --- | --- | ---: | ---: |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    print()
    print("| slide (level 0) | patches | whole pipeline, s | peak RSS (VmHWM), MiB |")
    print("| --- | ---: | ---: | ---: |")
    for m in memory:
        print(f"| {m['slide'][0]} x {m['slide'][1]} px | {m['patches']} | {m['seconds']:.1f} | {m['rss_mib']:.0f} |")
    print()
    print(f"command: nice -n 10 python tools/bench_segment.py --work {relative(args.work)} "
          f"--small {args.small} --large {args.large}; torch threads 2; nproc {os.cpu_count()}")


if __name__ == "__main__":
    main()
