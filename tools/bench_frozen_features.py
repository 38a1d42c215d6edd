"""Frozen features on the held-out digit slides: a stand-in encoder trained without labels or counts on the
training slide, `pathoucc features` for the training, validation and test slides, and what those features hold.

    python tools/bench_frozen_features.py --work bench/frozen --out docs/results/frozen-features.json

1. The slides of ``tools/bench_slide_heldout.py`` (same generator and seeds): a TRAIN slide of MNIST training digits
   (320 x 320 cells, seed 1), a VALIDATION slide of other training digits (96 x 96, seed 3) and a TEST slide of the
   official MNIST test digits (96 x 96, seed 2), tiled at 32 px with their count-only GeoJSON regions.
2. Each stand-in encoder of ``--methods`` (``tools/train_standin_encoder.py``, on the training tiles only; a
   weights file already there is reused) encodes the three slides with ``pathoucc features`` (the command, timed:
   its patches/s on the training slide is the throughput reported).
3. Scores, patch labels read from each slide's ground-truth mask (the patch centre's cell):
   - k-means (k = 10) fitted on the training slide's features and applied to the test slide (as ``pathoucc
     segment`` uses k-means), and fitted on the test slide's own features (transductive, as ``pathoucc evaluate``),
     on the features as written and L2-normalised; Hungarian-matched patch accuracy;
   - the ceiling: a linear probe (logistic regression on standardised features) fitted with the TRAINING slide's
     patch labels, scored on the validation and test slides. A diagnostic only: no product path uses patch labels.
   The encoder is chosen on the VALIDATION slide (linear probe); the test slide is reported for every encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command, machine, relative  # noqa: E402

SLIDES = {"train": ("train", 1, 320), "val": ("train", 3, 96), "test": ("test", 2, 96)}  # split, seed, grid
MACHINE = "2 vCPU x86_64, no GPU, 24 GB"


def make_tiles(work: Path, data_dir: str) -> dict[str, Path]:
    from make_digit_slide import make_blob_digit_slide

    from pathoucc.slides.tiler import tile_slides

    out = {}
    for name, (split, seed, grid) in SLIDES.items():
        slide = work / f"{name}.tif"
        if not slide.exists():
            make_blob_digit_slide(slide, grid=(grid, grid), split=split, seed=seed, region_cells=10.0,
                                  min_region_patches=32, data_dir=data_dir)
        report = tile_slides([slide], work / "tiles", annotations=work / f"{name}_regions.geojson",
                             annotation_kind="geojson", classes=[str(c) for c in range(10)], patch_size=32,
                             stride=32, level=0)
        if report.failed:
            sys.exit(f"tiling failed: {report.failed}")
        out[name] = work / "tiles" / f"{name}.h5"
    return out


def mask_labels(mask: Path, coords: np.ndarray, patch: int = 32) -> np.ndarray:
    """Each patch's class: the ground-truth mask (class + 1, 0 = none) at the patch centre."""
    Image.MAX_IMAGE_PIXELS = None  # the generator's own mask of a 10 496-px slide (110 M pixels)
    m = np.asarray(Image.open(mask))
    return m[coords[:, 1] + patch // 2, coords[:, 0] + patch // 2].astype(np.int64) - 1


def read_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["features"][()], f["coords"][()]


def kmeans_scores(train: np.ndarray, test: np.ndarray, y_test: np.ndarray, seed: int = 0) -> dict:
    from sklearn.cluster import KMeans

    from pathoucc.cluster.metrics import clustering_scores

    out = {}
    for norm in ("raw", "l2"):
        a, b = (train, test) if norm == "raw" else (_l2(train), _l2(test))
        fit = KMeans(10, n_init=3, random_state=seed).fit(a)
        own = KMeans(10, n_init=3, random_state=seed).fit(b)
        out[norm] = {"fit_on_train": clustering_scores(y_test, fit.predict(b)),
                     "fit_on_test": clustering_scores(y_test, own.labels_)}
    return out


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def linear_probe(train: np.ndarray, y_train: np.ndarray, evals: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = y_train >= 0
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(train[keep], y_train[keep])
    return {name: round(float((probe.predict(x[y >= 0]) == y[y >= 0]).mean()), 4) for name, (x, y) in evals.items()}


def encode(weights: Path, tiles: Path, index: np.ndarray | None, batch: int = 512) -> np.ndarray:
    """In process, the code path of ``pathoucc features`` (encoder, preprocessing, fp32 on the CPU), on the patches
    ``index`` of a tile file (all when None); nothing is written."""
    import torch

    from pathoucc.embed import load_encoder
    from pathoucc.embed.extract import preprocess
    from pathoucc.slides.tilefile import open_tiles

    enc = load_encoder("resnet18", weights)
    with open_tiles(tiles) as t, torch.inference_mode():
        index = np.arange(len(t)) if index is None else index
        parts = [enc.model(preprocess(torch.from_numpy(t.read(index[i:i + batch])), enc)).numpy()
                 for i in range(0, len(index), batch)]
    return np.concatenate(parts)


def quick(work: Path, methods: list[str], subset: int, out: Path) -> None:
    """The scores on a seeded subset of ``subset`` training-slide patches (k-means fit, probe) and the whole
    validation and test slides, encoded in process: for a machine too busy for the full run."""
    import torch

    from pathoucc.slides.tilefile import open_tiles

    torch.set_num_threads(1)
    tiles = {name: work / "tiles" / f"{name}.h5" for name in SLIDES}
    labels = {}
    for name, path in tiles.items():
        with open_tiles(path) as t:
            labels[name] = mask_labels(work / f"{name}_mask.png", t.coords)
    pick = np.sort(np.random.default_rng(0).choice(len(labels["train"]), subset, replace=False))
    result = {"date": date.today().isoformat(), "command": command("bench_frozen_features.py", sys.argv[1:]),
              "machine": MACHINE, "train_subset": subset, "encoders": {}}
    for method in methods:
        weights = work / f"standin-{method}.pt"
        start = time.perf_counter()
        feats = {"train": encode(weights, tiles["train"], pick), "val": encode(weights, tiles["val"], None),
                 "test": encode(weights, tiles["test"], None)}
        y = {"train": labels["train"][pick], "val": labels["val"], "test": labels["test"]}
        result["encoders"][method] = {
            "encode_s": round(time.perf_counter() - start, 1),
            "test": {"kmeans": kmeans_scores(feats["train"], feats["test"], y["test"])},
            "val": {"kmeans": kmeans_scores(feats["train"], feats["val"], y["val"])},
            "linear_probe": linear_probe(feats["train"], y["train"], {n: (feats[n], y[n]) for n in ("val", "test")}),
        }
        out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        e = result["encoders"][method]
        print(method, json.dumps({"probe": e["linear_probe"],
                                  "kmeans_test_train_fit": {k: v["fit_on_train"]["accuracy"]
                                                            for k, v in e["test"]["kmeans"].items()}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/frozen"))
    parser.add_argument("--data-dir", default="data", help="MNIST cache folder")
    parser.add_argument("--methods", nargs="+", default=["simclr", "autoencoder"])
    parser.add_argument("--steps", type=int, default=400, help="stand-in training steps (when trained here)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default <work>/results.json)")
    parser.add_argument("--merge", action="store_true", help="keep the other encoders already in --out")
    parser.add_argument("--quick", type=int, default=None, metavar="N",
                        help="score only, in process: N training patches, the whole validation and test slides")
    args = parser.parse_args()
    out = args.out or args.work / "results.json"
    if args.quick:
        quick(args.work, args.methods, args.quick, out)
        return

    tiles = make_tiles(args.work, args.data_dir)
    labels = {}
    for name, path in tiles.items():
        from pathoucc.slides.tilefile import open_tiles

        with open_tiles(path) as t:
            labels[name] = mask_labels(args.work / f"{name}_mask.png", t.coords)
    result = {"date": date.today().isoformat(), "command": command("bench_frozen_features.py", sys.argv[1:]),
              "machine": MACHINE, "machine_detail": machine(),
              "slides": {name: {"mnist_split": s, "seed": seed, "grid": g, "patches": len(labels[name])}
                         for name, (s, seed, g) in SLIDES.items()},
              "encoders": {}}
    for method in args.methods:
        weights = args.work / f"standin-{method}.pt"
        if not weights.exists():
            subprocess.run([sys.executable, str(ROOT / "tools" / "train_standin_encoder.py"), str(tiles["train"]),
                            "--method", method, "--steps", str(args.steps), "--threads", "1", "--out",
                            str(weights)], check=True)
        from pathoucc.files import read_torch

        training = read_torch(weights).get("training", {})
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pathoucc.cli", "features", *map(str, tiles.values()),
                               "--out", str(args.work / "features"), "--model", "resnet18", "--weights",
                               str(weights), "--overwrite"], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        load = [round(load_before, 1), round(os.getloadavg()[0], 1)]  # 1-min load average: others' work too
        match = re.search(r"\((\d+) patches, (\d+) patches/s\)", proc.stdout)
        folder = args.work / "features" / f"features_standin-{method}"
        feats = {name: read_features(folder / f"{name}.h5")[0] for name in tiles}
        scores = kmeans_scores(feats["train"], feats["test"], labels["test"])
        val_scores = kmeans_scores(feats["train"], feats["val"], labels["val"])
        probe = linear_probe(feats["train"], labels["train"], {n: (feats[n], labels[n]) for n in ("val", "test")})
        result["encoders"][method] = {
            "weights": relative(weights), "training": training, "dim": int(feats["train"].shape[1]),
            "features_command": " ".join(["pathoucc", "features", *map(relative, map(str, tiles.values())),
                                          "--out", relative(args.work / "features"), "--model", "resnet18",
                                          "--weights", relative(weights), "--overwrite"]),
            "features_patches": int(match[1]) if match else None,
            "features_patches_per_s": int(match[2]) if match else None, "features_command_wall_s": round(wall, 1),
            "load_average_before_after": load,
            "test": {"kmeans": scores, "linear_probe": probe["test"]},
            "val": {"kmeans": val_scores, "linear_probe": probe["val"]},
        }
        e = result["encoders"][method]
        print(f"{method}: probe val {probe['val']:.4f} test {probe['test']:.4f} | k-means test (train fit) raw "
              f"{scores['raw']['fit_on_train']['accuracy']:.4f} l2 {scores['l2']['fit_on_train']['accuracy']:.4f} "
              f"| {e['features_patches_per_s']} patches/s", flush=True)
    if args.merge and out.exists():
        earlier = json.loads(out.read_text())
        result["encoders"] = {**earlier["encoders"], **result["encoders"]}
        result["command"] = [*([earlier["command"]] if isinstance(earlier["command"], str) else earlier["command"]),
                             result["command"]]
    chosen = max(result["encoders"], key=lambda m: result["encoders"][m]["val"]["linear_probe"])
    result["chosen_on_validation"] = chosen
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"chosen on the validation slide: {chosen} -> {out}")


if __name__ == "__main__":
    main()
