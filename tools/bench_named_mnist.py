"""MNIST test accuracy with a few labels (0.1 / 0.5 / 1 % of each class of the train split), with and without counts.

    python tools/bench_named_mnist.py --run runs/mnist-bag32 --data data --out docs/results/named-mnist.json

* **with counts**: the features of a trained UCC run (``--run``), then the ``examples`` fit (constrained k-means of
  the 10 000 test features, centres from the labelled train instances' means, labelled ones fixed), scored by the
  clusters' *names* (``named_accuracy``, no matching) and, for reference, Hungarian-matched accuracy;
* **without counts**: the same constrained k-means on the raw pixels (``pathoucc baseline --set
  data.labelled_fraction=F``), no model at all.

Labels are a seeded, stratified subset of the 50 000 train-split images (``pathoucc.data.labelled``); no test image
is ever labelled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command, machine  # noqa: E402

FRACTIONS = (0.001, 0.005, 0.01)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained MNIST UCC run folder")
    parser.add_argument("--data", default="data", help="data.root of the MNIST cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from pathoucc.cluster import evaluate_raw_pixels, evaluate_run
    from pathoucc.config import load_config

    rows = []
    for fraction in FRACTIONS:
        start = time.perf_counter()
        counts = evaluate_run(args.run, "test", "cpu", labelled_fraction=fraction)
        raw_cfg = load_config(ROOT / "configs" / "mnist.yaml", [f"data.root={args.data}",
                                                                f"data.labelled_fraction={fraction}"])
        raw = evaluate_raw_pixels(raw_cfg, "test")
        rows.append({"labelled_fraction": fraction, "num_examples": counts["num_examples"],
                     "with_counts": {k: counts[k] for k in ("named_accuracy", "accuracy", "nmi", "ari")},
                     "without_counts_raw_pixels": {k: raw[k] for k in ("named_accuracy", "accuracy", "nmi", "ari")},
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]))
    result = {"date": date.today().isoformat(), "command": command("bench_named_mnist.py", sys.argv[1:]),
              "machine": {"summary": "2 vCPU x86_64, no GPU, 24 GB"} | machine(), "run": str(args.run), "rows": rows,
              "clusternet": {"0.005": 0.9684, "0.01": 0.9813, "0.1": 0.9896}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
