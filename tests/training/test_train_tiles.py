"""Training on HDF5 tiles: regions as bags, RGB patches, albumentations, a timm backbone, patch-level scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slide_fixtures import CELL

from pathoucc.cluster.evaluate import evaluate_run
from pathoucc.cluster.metrics import clustering_accuracy
from pathoucc.config import DataConfig, config_from_dict
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import train_ucc


@pytest.fixture(scope="module")
def tiles(digit_slide, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiles")
    labelled = tile_slide(digit_slide["slide"], folder / "labelled", patch_size=CELL, stride=CELL, level=0,
                          region_size=256, annotations=digit_slide["mask"], workers=1)
    plain = tile_slide(digit_slide["slide"], folder / "plain", patch_size=CELL, stride=CELL, level=0, workers=1)
    return {"labelled": labelled, "plain": plain}


def test_tile_pools_keep_regions_and_hold_out_whole_regions(tiles: dict[str, Path], digit_slide) -> None:
    cfg = DataConfig(source="tiles", train_tiles=[str(tiles["labelled"])] * 2, val_fraction=0.25)
    pools = load_pools(cfg)
    train, val, test = pools["train"], pools["val"], pools["test"]
    assert train.shape == (3, CELL, CELL)
    n_regions = len(train.region_count) + len(val.region_count)
    assert len(val.region_count) == round(n_regions * 0.25)
    assert len(train) + len(val) == len(test) == 2 * 256  # the file twice: every region of each copy once
    for pool in (train, val):
        for r, u in enumerate(pool.region_count):  # each region's count is the number of classes among its patches
            assert len(np.unique(pool.labels[pool.region == r])) == u
    assert (test.labels >= 0).all() and test.region is not None


def test_train_on_tiles_with_timm_and_augmentations(tiles: dict[str, Path], tmp_path: Path) -> None:
    cfg = config_from_dict({
        "name": "tiles", "seed": 0,
        "data": {"source": "tiles", "train_tiles": [str(tiles["labelled"])], "test_tiles": [str(tiles["plain"])],
                 "val_fraction": 0.2,
                 "augment": [{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomRotate90", "p": 0.5}]},
        "bags": {"bag_size": 8, "bags_per_batch": 2, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "resnet18", "in_chans": 3, "input_size": CELL, "num_features": 6, "mlp": [16],
                  "decoder_widths": [16, 8]},
        "train": {"steps": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 1, "val_bags": 2},
        "eval": {"n_init": 1, "batch_size": 64},
    })
    unlabelled = evaluate_run(train_ucc(cfg, tmp_path / "run", progress=False))  # the plain tiles have no classes
    assert "accuracy" not in unlabelled and unlabelled["num_labelled"] == 0
    assert sum(unlabelled["cluster_sizes"]) == unlabelled["num_instances"] == 256
    assert unlabelled["kmeans"]["fit"] == "heldout" and "none labelled" in unlabelled["kmeans"]["fitted_on"]
    result = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["step"] == 2 and "val_ucc_loss" in result
    cfg.data.test_tiles = [str(tiles["labelled"])]
    scores = evaluate_run(train_ucc(cfg, tmp_path / "run2", progress=False))
    assert scores["k"] == 10 or scores["k"] == len(set(np.unique(load_pools(cfg.data, ("test",))["test"].labels)))
    # the features carry the digit classes: above clusters drawn at random (0.20); measured 0.27-0.34, NMI 0.27-0.28
    # (albumentations is seeded from the config's seed and the step, so the value is the same on every run)
    labels = load_pools(cfg.data, ("test",))["test"].labels
    random = clustering_accuracy(labels, np.random.default_rng(0).integers(0, scores["k"], len(labels)))
    assert scores["accuracy"] > random and scores["nmi"] > 0.15


def test_tiles_without_regions_cannot_train(tiles: dict[str, Path]) -> None:
    with pytest.raises(PathouccError, match=r"plain.*no regions"):
        load_pools(DataConfig(source="tiles", train_tiles=[str(tiles["plain"])]), ("train",))
    with pytest.raises(PathouccError, match="train_tiles is empty"):
        load_pools(DataConfig(source="tiles"), ("train",))


def test_training_never_sees_the_patch_labels_of_count_only_tiles(digit_slide, tmp_path: Path) -> None:
    """Count-only regions (a CSV of boxes with counts) trained with and without true patch labels in the tile
    file: UCC training and refinement end in identical weights, so the labels can only ever be used to score."""
    import shutil

    import h5py
    import torch
    from slide_fixtures import cell_class

    from pathoucc.pipeline import refine_run
    from pathoucc.run import MODEL, MODEL_UCC, read_weights

    plain = tile_slide(digit_slide["slide"], tmp_path / "plain", patch_size=CELL, stride=CELL, level=0,
                       annotations=digit_slide["csv"], workers=1)
    labelled = tmp_path / "labelled" / plain.name
    labelled.parent.mkdir()
    shutil.copy(plain, labelled)
    with h5py.File(labelled, "r+") as f:
        truth = np.array([cell_class(digit_slide["cells"], int(x), int(y)) for x, y in f["coords"][:]], np.int64)
        assert (f["labels"][:] == -1).all() and (truth >= 0).sum() > 100  # count-only: no label until we add them
        del f["labels"]
        f.create_dataset("labels", data=truth)
    weights = []
    for tiles in (plain, labelled):
        cfg = config_from_dict({
            "name": "count-only", "seed": 1,
            "data": {"source": "tiles", "train_tiles": [str(tiles)], "val_fraction": 0.25},
            "bags": {"bag_size": 8, "bags_per_batch": 2, "ucc_min": 1, "ucc_max": 4, "region_subsets": 2},
            "model": {"backbone": "conv", "widths": [8], "in_chans": 3, "input_size": CELL, "num_features": 4,
                      "mlp": [16]},
            "train": {"steps": 3, "val_every": 3, "checkpoint_every": 3, "log_every": 1, "val_bags": 2},
            "refine": {"steps": 3, "rounds": 1, "batch_size": 16},
            "eval": {"n_init": 1, "batch_size": 64, "k": 4},
        })
        run = tmp_path / f"run-{tiles.parent.name}"
        refine_run(train_ucc(cfg, run, progress=False))
        weights.append({name: read_weights(run / name, "model")["model"] for name in (MODEL_UCC, MODEL)})
    for name in (MODEL_UCC, MODEL):
        a, b = weights[0][name], weights[1][name]
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}: {key}")


def test_regions_that_all_share_one_count_are_refused(digits) -> None:
    """Bags whose counts never differ teach the count classifier nothing: a one-line error, nothing trained."""
    from pathoucc.data.pool import InstancePool
    from pathoucc.training.train import prepare_ucc

    images, labels = digits
    pool = InstancePool(images[:120], labels[:120], np.repeat(np.arange(6), 20), np.full(6, 2))
    cfg = config_from_dict({"data": {"source": "tiles"}, "bags": {"bag_size": 8, "ucc_min": 1, "ucc_max": 4},
                            "model": {"in_chans": 1, "input_size": 8, "widths": [8], "mlp": [4]}})
    with pytest.raises(PathouccError, match="every training bag has count 2"):
        prepare_ucc(cfg, {"train": pool})
