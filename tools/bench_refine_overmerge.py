"""Experiment (issue: count-only learning that holds on other slides): the refinement's per-round k-means replaced
by **over-clustering then merging by agreement with the regions' counts**, on a cohort cell's trained UCC model.

    python tools/bench_refine_overmerge.py bench/cohorts/intermixed-r300-n200-p28 run-seed1 --over 2 \\
        --out docs/results/cohort-refine-overmerge.json

Each round: k-means with ``over * k`` clusters on the training region patches' features, then the pair of clusters
whose union keeps the regions' counts best (mean |clusters holding >= 5 % of a region - its count|; ties: the
smaller Ward cost) is merged, until ``k`` groups are left; a patch's distance to a group is its distance to the
nearest member centre. Then the count-consistent pseudo-labels and fine-tuning as in ``pathoucc refine``. Patch
labels (for scoring only) come from the cell's ``<slide>_mask.png`` at each patch centre. Scores: k-means
(k = 10, 10 inits, fitted on 50 000 training patches) on the refined features of the training, validation and test
slides. Writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image


def held_error(table: np.ndarray, count: np.ndarray, share: float = 0.05) -> float:
    """Mean |clusters holding >= ``share`` of a region - the region's count| over the regions with patches."""
    sizes = table.sum(1, keepdims=True)
    held = ((table > 0) & (table >= share * sizes)).sum(1)
    present = sizes[:, 0] > 0
    return float(np.abs(held - count)[present].mean())


def overmerge(features: np.ndarray, k: int, region: np.ndarray, count: np.ndarray, seed: int, n_init: int,
              over: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(over * k, J)`` and their group ``(over * k,)`` in ``[0, k)``, merged greedily by count agreement."""
    from pathoucc.cluster.kmeans import fit_kmeans

    kk = over * k
    km = fit_kmeans(features, kk, seed, n_init)
    centres, labels = km.cluster_centers_.astype(np.float32), km.labels_
    inside = region >= 0
    table = np.bincount(region[inside] * kk + labels[inside], minlength=len(count) * kk).reshape(len(count), kk)
    groups, cols = [[i] for i in range(kk)], [table[:, i] for i in range(kk)]
    cent, weight = list(centres), list(np.bincount(labels, minlength=kk).astype(float))
    while len(cols) > k:
        best = None
        for i in range(len(cols)):
            for j in range(i + 1, len(cols)):
                rest = [cols[a] for a in range(len(cols)) if a not in (i, j)]
                error = held_error(np.stack([*rest, cols[i] + cols[j]], 1), count)
                w = weight[i] + weight[j]
                ward = weight[i] * weight[j] / max(w, 1.0) * float(((cent[i] - cent[j]) ** 2).sum())
                if best is None or (round(error, 9), ward) < best[0]:
                    best = ((round(error, 9), ward), i, j)
        _, i, j = best
        keep = [a for a in range(len(cols)) if a not in (i, j)]
        w = weight[i] + weight[j]
        merged = (weight[i] * cent[i] + weight[j] * cent[j]) / max(w, 1.0)
        groups = [groups[a] for a in keep] + [groups[i] + groups[j]]
        cols = [cols[a] for a in keep] + [cols[i] + cols[j]]
        cent, weight = [cent[a] for a in keep] + [merged], [weight[a] for a in keep] + [w]
    group = np.zeros(kk, np.int64)
    for g, members in enumerate(groups):
        group[members] = g
    return centres, group


def group_distances(features: np.ndarray, centres: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """(N, k) squared distance of each row to the nearest centre of each group."""
    d = ((features[:, None, :] - centres[None]) ** 2).sum(-1)
    return np.stack([d[:, group == g].min(1) for g in range(k)], 1).astype(np.float32)


def mask_labels(cell: Path, names: list[str]) -> np.ndarray:
    """Each patch's class from ``<slide>_mask.png`` at its centre (0 = background -> -1)."""
    Image.MAX_IMAGE_PIXELS = None
    out = []
    for name in names:
        with h5py.File(cell / "tiles" / f"{name}.h5") as f:
            coords, size = f["coords"][:], int(f.attrs["patch_size"])
        mask = np.asarray(Image.open(cell / f"{name}_mask.png"))
        out.append(mask[coords[:, 1] + size // 2, coords[:, 0] + size // 2].astype(np.int64) - 1)
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cell", type=Path, help="a cohort cell folder of tools/bench_cohorts.py (tiles/, masks)")
    parser.add_argument("run", help="its run folder holding model-ucc.pt, e.g. run-seed1")
    parser.add_argument("--over", type=int, default=2, help="clusters per final cluster before merging")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch
    from sklearn.cluster import KMeans

    import pathoucc.cluster.refine as refine
    from pathoucc.cluster.features import extract_features, inference_dtype
    from pathoucc.cluster.metrics import clustering_accuracy, count_consistency
    from pathoucc.data.pool import subsample
    from pathoucc.data.sources import pool_from_tiles
    from pathoucc.run import load_run

    def cluster(model, pool, cfg, k, index, device):  # the variant of refine._cluster
        f = extract_features(model, pool, cfg.eval.batch_size, device, index=index, dtype=inference_dtype(cfg, device))
        fit = subsample(len(index), refine.MAX_FIT_PATCHES, cfg.seed)
        centres, group = overmerge(f[fit], k, pool.region[index][fit], pool.region_count, cfg.seed,
                                   cfg.eval.n_init, args.over)
        return group_distances(f, centres, group, k)

    refine._cluster = cluster
    tiles = args.cell / "tiles"
    trains = sorted(p.stem for p in tiles.glob("train*.h5"))
    pool = pool_from_tiles([str(tiles / f"{n}.h5") for n in trains], need_regions=True, streaming=True)
    cfg, model = load_run(args.cell / args.run, file="model-ucc.pt")
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    summary = refine.refine_model(model, cfg, pool, cfg.eval.k or 10, "cpu")
    pools = {"train": pool, "val": pool_from_tiles([str(tiles / "val.h5")], need_regions=False, streaming=True),
             "test": pool_from_tiles([str(tiles / "test.h5")], need_regions=False, streaming=True)}
    features = {n: extract_features(model, p, 1024) for n, p in pools.items()}
    km = KMeans(10, n_init=10, random_state=cfg.seed).fit(features["train"][subsample(len(pool), 50_000, cfg.seed)])
    labels = {"train": mask_labels(args.cell, trains), "val": mask_labels(args.cell, ["val"]),
              "test": mask_labels(args.cell, ["test"])}
    result = {"command": "python tools/bench_refine_overmerge.py " + " ".join(
                  [str(args.cell), args.run, "--over", str(args.over), "--out", str(args.out)]),
              "date": time.strftime("%Y-%m-%d"), "machine": "2 vCPU x86_64, no GPU, 24 GB (shared with other work)",
              "over": args.over, "rounds": summary["rounds"], "seconds": round(time.perf_counter() - start, 1),
              "accuracy": {n: clustering_accuracy(labels[n], km.predict(features[n])) for n in pools},
              "train_count_consistency": count_consistency(km.predict(features["train"]), pool.region,
                                                           pool.region_count, 10)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["accuracy"]))


if __name__ == "__main__":
    main()
