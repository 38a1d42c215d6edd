"""`pathoucc train` on feature files: TRIDENT and CLAM layouts with count-only GeoJSON train, refine and score;
the one step function takes feature vectors; resume is exact; bad cohorts are one-line errors before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    FEATURE_EXTENT,
    FEATURE_SIDE,
    count_regions_geojson,
    feature_cohort,
    one_line_error,
    run_cli,
    write_clam_features,
    write_trident_features,
)
from PIL import Image

from pathoucc.config import config_from_dict
from pathoucc.run import load_run
from pathoucc.training.train import train_ucc

SIDE, EXTENT = FEATURE_SIDE, FEATURE_EXTENT


def _cohort(tmp_path, layout: str) -> tuple[list[str], str]:
    """Three training slides with count-only GeoJSON and a test slide with a label mask, in ``layout``."""
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    paths = []
    for seed, name in enumerate(["s1", "s2", "s3", "test"]):
        features, coords, _, class_map = feature_cohort(seed, side=SIDE, extent=EXTENT)
        if layout == "trident":
            path = write_trident_features(tmp_path / "20x_8px_0px_overlap" / "features_uni_v1" / f"{name}.h5",
                                          features, coords, width=SIDE * EXTENT, height=SIDE * EXTENT)
        else:
            path = write_clam_features(tmp_path / "clam", name, features, coords)[1]  # the .pt files
        paths.append(str(path))
        if name == "test":
            Image.fromarray((class_map + 1).astype(np.uint8)).save(ann / "test_mask.png")
        else:
            count_regions_geojson(ann / f"{name}.geojson", class_map, 4, EXTENT)
    return paths, str(ann)


def _config(tmp_path, paths: list[str], ann: str, **over) -> dict:
    raw = {"name": "feat", "seed": 1,
           "data": {"source": "features", "features": paths[:3], "test_features": paths[3:], "annotations": ann,
                    "val_fraction": 0.1},
           "bags": {"bag_size": 16, "bags_per_batch": 8, "ucc_min": 1, "ucc_max": 3},
           "model": {"backbone": "mlp", "widths": [32], "num_features": 4, "mlp": [32], "decoder_widths": [16]},
           "train": {"steps": 40, "val_every": 20, "log_every": 10, "checkpoint_every": 20, "lr": 3e-3,
                     "device": "cpu", "val_bags": 4, "num_threads": 1},
           "eval": {"k": 3, "n_init": 2},
           "refine": {"steps": 20, "batch_size": 64}}
    for key, value in over.items():
        section, name = key.split("__")
        raw[section][name] = value
    path = tmp_path / "feat.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw


@pytest.mark.parametrize("layout", ["trident", "clam"])
def test_train_refine_and_score(layout, tmp_path, monkeypatch, capsys) -> None:
    paths, ann = _cohort(tmp_path, layout)
    _config(tmp_path, paths, ann)
    run = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "feat.yaml"), "--out", str(run))
    assert code == 0, err
    assert "refined: 1 round(s) of 20 steps" in out and "feat (test)" in out
    assert (run / "model-ucc.pt").is_file() and (run / "model.pt").is_file() and (run / "refine.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["num_labelled"] == SIDE * SIDE and metrics["accuracy"] >= 0.95, metrics  # labels: the mask
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["input_dim"] == 16  # the projection's input, taken from the files
    rounds = json.loads((run / "refine.json").read_text())["rounds"]
    assert rounds[0]["patches"] > 0 and np.isfinite(rounds[0]["final_loss"])
    # the refinement fine-tuned the projection (the encoder), and only the count head stayed as it was
    _, ucc = load_run(run, "cpu", "model-ucc.pt")
    _, refined = load_run(run)
    assert not torch.equal(ucc.encoder.body[0].weight, refined.encoder.body[0].weight)
    assert torch.equal(ucc.classifier[0].weight, refined.classifier[0].weight)
    # the baseline on feature files: k-means on the frozen features themselves
    code, _, err = run_cli(monkeypatch, capsys, "baseline", str(tmp_path / "feat.yaml"), "--out",
                           str(tmp_path / "baseline.json"))
    baseline = json.loads((tmp_path / "baseline.json").read_text())
    assert code == 0 and baseline["method"] == "kmeans-frozen-features" and baseline["num_instances"] == SIDE**2


def test_resume_is_exact(tmp_path) -> None:
    paths, ann = _cohort(tmp_path, "trident")
    raw = _config(tmp_path, paths, ann, refine__steps=0, train__steps=12, train__checkpoint_every=4,
                  train__val_every=100, train__schedule="constant")  # a 6-step run is the first half of 12
    whole = train_ucc(config_from_dict(raw), tmp_path / "whole")
    half = config_from_dict(raw | {"train": raw["train"] | {"steps": 6}})
    train_ucc(half, tmp_path / "part")
    train_ucc(config_from_dict(raw), tmp_path / "part", resume=True)  # input_dim is filled the same way
    a, b = (torch.load(p / "model.pt", weights_only=True)["model"] for p in (whole, tmp_path / "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_cohorts_are_one_line_errors(tmp_path, monkeypatch, capsys) -> None:
    paths, ann = _cohort(tmp_path, "trident")
    features, coords, _, _ = feature_cohort(9, side=SIDE, dim=8)
    odd = write_trident_features(tmp_path / "other" / "s4.h5", features, coords, width=192, height=192)
    _config(tmp_path, [*paths[:2], str(odd), paths[3]], ann)
    (tmp_path / "ann" / "s4.geojson").write_text((tmp_path / "ann" / "s1.geojson").read_text())
    run = tmp_path / "bad"
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "feat.yaml"), "--out", str(run))
    assert code != 0
    one_line_error(err, str(odd), "8-dimensional features")
    assert not (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    with h5py_file(paths[1]) as f:
        f["features"][3, 3] = np.nan
    _config(tmp_path, paths, ann)
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "feat.yaml"), "--out", str(run))
    assert code != 0
    one_line_error(err, paths[1], "feature row 3 holds NaN or inf")
    assert not (run / "checkpoint.pt").exists()


def h5py_file(path: str):
    import h5py

    return h5py.File(path, "a")


def test_presence_count_head_trains_and_clusters(tmp_path, monkeypatch, capsys) -> None:
    """The count of present latent clusters (no KDE, no count MLP) learns the counts and clusters the patches;
    the saved run loads back with its presence head."""
    paths, ann = _cohort(tmp_path, "trident")
    raw = _config(tmp_path, paths, ann, model__count_head="presence", model__presence_clusters=4, refine__steps=0,
                  train__steps=300, train__lr=1e-2)
    del raw["model"]["mlp"]
    (tmp_path / "feat.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tmp_path / "feat.yaml"), "--out", str(run))
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["train_ucc_accuracy"] >= 0.9 and metrics["test"]["val_ucc_accuracy"] >= 0.9, metrics
    assert metrics["test"]["accuracy"] >= 0.95, metrics
    _, model = load_run(run)
    assert model.classifier is None and model.presence.assign.out_features == 4
