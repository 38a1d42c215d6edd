"""The MNIST smoke config learns for real: real MNIST (fetched and cached under data/), about a minute."""

from __future__ import annotations

from pathlib import Path

from pathoucc.cluster.evaluate import evaluate_raw_pixels
from pathoucc.config import load_config
from pathoucc.pipeline import train_run

ROOT = Path(__file__).resolve().parents[2]


def test_mnist_smoke_clusters_far_better_than_raw_pixels(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "mnist-smoke.yaml", [f"data.root={ROOT / 'data'}"])
    result = train_run(cfg, tmp_path / "run").scores  # what `pathoucc train` prints
    raw = evaluate_raw_pixels(cfg)
    assert result["num_instances"] == raw["num_instances"] == 10_000  # the official test set
    assert raw["accuracy"] < 0.65
    assert result["accuracy"] > 0.8 and result["accuracy"] > raw["accuracy"] + 0.2
    assert result["nmi"] > raw["nmi"] + 0.2
