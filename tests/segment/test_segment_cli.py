"""`pathoucc segment` / `pathoucc cluster` end to end on a digit slide with a run trained for a few steps."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from helpers import one_line_error, run_cli, tiny_digit_config
from slide_fixtures import CELL

from pathoucc.config import config_from_dict
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import train_ucc


@pytest.fixture(scope="module")
def digit_run(digit_slide, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("segrun")
    tiles = {s: tile_slide(digit_slide["slide"], folder / f"tiles{s}", patch_size=CELL, stride=s, level=0,
                           region_size=256, annotations=digit_slide["mask"], workers=1) for s in (CELL, CELL // 2)}
    cfg = config_from_dict(tiny_digit_config(tiles[CELL], CELL, steps=20))
    train_ucc(cfg, folder / "run", progress=False)
    return {"run": folder / "run", "tiles": tiles, "folder": folder}


def test_segment_digit_slide_scored_against_its_mask(monkeypatch, capsys, digit_run, digit_slide, tmp_path) -> None:
    run, tiles = digit_run["run"], digit_run["tiles"]
    code, out, err = run_cli(monkeypatch, capsys, "segment", str(run), str(tiles[CELL]), "--out", str(tmp_path),
                             "--mask", str(digit_slide["mask"]), "--device", "cpu")
    assert code == 0, err
    labels = digit_slide["cells"].ravel()
    k = len(np.unique(labels))  # fitted on the training tiles: k = the number of digit classes they carry
    km = run / f"kmeans-k{k}.npz"
    assert km.is_file() and f"fitted k-means (k={k})" in out and "segmentation" in out
    scores = json.loads((tmp_path / "digits" / "scores.json").read_text())
    assert scores["patches"]["num_patches"] == labels.size and scores["k"] == k
    chance = np.bincount(labels).max() / labels.size  # every patch put in the largest class
    assert chance < scores["patches"]["accuracy"] <= 1 and 0 < scores["patches"]["nmi"] <= 1
    assert scores["map"]["accuracy"] == pytest.approx(scores["patches"]["accuracy"])  # stride = patch size
    assert set(scores["map"]["per_class"]) >= {str(d) for d in np.unique(labels)}
    # scored with the run's shared k-means, fitted on the training tiles (not on this slide)
    assert scores["kmeans"]["fit"] == "train" and scores["kmeans"]["k"] == k
    assert json.loads(scores["kmeans"]["fitted_on"]) == [str(tiles[CELL])]
    assert scores["kmeans"]["path"] == str(km.resolve())
    mtime = km.stat().st_mtime_ns
    # the same result from the labels the tiler stored (they came from the same mask)
    code, _, _ = run_cli(monkeypatch, capsys, "segment", str(run), str(tiles[CELL]), "--out", str(tmp_path / "b"))
    assert code == 0
    again = json.loads((tmp_path / "b" / "digits" / "scores.json").read_text())
    assert again["patches"] == scores["patches"]
    assert km.stat().st_mtime_ns == mtime  # reused, not refitted


def test_clusters_are_shared_across_tile_files(monkeypatch, capsys, digit_run, tmp_path) -> None:
    run, tiles = digit_run["run"], digit_run["tiles"]
    code, out, _ = run_cli(monkeypatch, capsys, "cluster", str(run), "--k", "4")
    assert code == 0 and (run / "kmeans-k4.npz").is_file() and "k=4" in out
    mtime = (run / "kmeans-k4.npz").stat().st_mtime_ns
    fine = tmp_path / "digits_s16.h5"  # the same slide tiled with overlap, under another name
    fine.write_bytes(tiles[CELL // 2].read_bytes())
    code, _, err = run_cli(monkeypatch, capsys, "segment", str(run), str(tiles[CELL]), str(fine),
                           "--out", str(tmp_path / "out"), "--k", "4")
    assert code == 0, err
    assert (run / "kmeans-k4.npz").stat().st_mtime_ns == mtime  # the saved model is reused
    with h5py.File(tmp_path / "out/digits/clusters.h5") as a, h5py.File(tmp_path / "out/digits_s16/clusters.h5") as b:
        ca = {tuple(xy): c for xy, c in zip(a["coords"][()].tolist(), a["cluster"][()].tolist(), strict=True)}
        cb = {tuple(xy): c for xy, c in zip(b["coords"][()].tolist(), b["cluster"][()].tolist(), strict=True)}
        shared = set(ca) & set(cb)
        assert len(shared) == len(ca)  # every stride-32 patch is also on the stride-16 grid
        assert all(ca[xy] == cb[xy] for xy in shared)  # same pixels, same cluster, in both files
        assert a["map"].attrs["cell"] == CELL and b["map"].attrs["cell"] == CELL // 2
        assert b["map"].shape == (2 * a["map"].shape[0], 2 * a["map"].shape[1])
    assert json.loads((tmp_path / "out/digits_s16/scores.json").read_text())["k"] == 4


@pytest.fixture(scope="module")
def bad_inputs(digit_run, digit_slide, tmp_path_factory, digits_idx) -> dict:
    folder = tmp_path_factory.mktemp("bad")
    small = tile_slide(digit_slide["slide"], folder / "p16", patch_size=16, level=0, workers=1)
    empty = folder / "empty.h5"
    with h5py.File(digit_run["tiles"][CELL]) as src, h5py.File(empty, "w") as dst:
        dst.create_dataset("coords", shape=(0, 2), dtype=np.int64)
        dst.create_dataset("patches", shape=(0, CELL, CELL, 3), dtype=np.uint8)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
    (folder / "norun").mkdir()
    gray = config_from_dict({"name": "gray", "seed": 0, "data": {"source": "idx", "root": str(digits_idx)},
                             "bags": {"bag_size": 8, "bags_per_batch": 2, "ucc_min": 1, "ucc_max": 2},
                             "model": {"widths": [4, 8], "input_size": 8, "num_features": 4, "mlp": [8],
                                       "decoder": False},
                             "train": {"steps": 1, "val_every": 10, "checkpoint_every": 10, "val_bags": 2}})
    train_ucc(gray, folder / "gray", progress=False)
    wrong_km = folder / "wrongkm"
    wrong_km.mkdir()
    for name in ("model.pt", "config.yaml"):
        (wrong_km / name).write_bytes((digit_run["run"] / name).read_bytes())
    np.savez(wrong_km / "kmeans-k3.npz", centers=np.zeros((3, 5), np.float32), k=3, seed=0, temperature=1.0)
    (folder / "blocker").write_text("x")
    return {"folder": folder, "small": small, "empty": empty}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["{f}/norun", "{tiles}"], ["norun", "no trained model"]),
        (["{run}", "{small}"], ["p16/digits.h5", "patch size 16 px differs from the model's input size 32"]),
        (["{f}/gray", "{tiles}"], ["digits.h5", "model expects 1-channel inputs"]),
        (["{run}", "{empty}"], ["empty.h5", "zero patches"]),
        (["{run}", "{f}/missing.h5"], ["missing.h5", "tiles file not found"]),
        (["{run}", "{tiles}", "--out", "{f}/blocker/out"], ["blocker", "cannot create output folder"]),
        (["{f}/wrongkm", "{tiles}", "--k", "3"], ["kmeans-k3.npz", "centres have 5 features", "gives 8"]),
        (["{run}", "{tiles}", "--mask", "{f}/nomask.png"], ["nomask.png", "mask not found"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(monkeypatch, capsys, digit_run, bad_inputs, args, needles,
                                                  tmp_path) -> None:
    f = bad_inputs["folder"]
    fill = {"f": f, "run": digit_run["run"], "tiles": digit_run["tiles"][CELL], "small": bad_inputs["small"],
            "empty": bad_inputs["empty"]}
    args = [a.format(**fill) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code, _, err = run_cli(monkeypatch, capsys, "segment", *args)
    assert code == 2
    one_line_error(err, *needles)
    assert not (tmp_path / "out" / "digits").exists()
    assert not any(p.name.endswith((".partial", ".tmp")) for p in f.rglob("*"))


def test_corrupt_patch_chunks_are_one_line_in_segment(monkeypatch, capsys, digit_run, tmp_path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(digit_run["tiles"][CELL].read_bytes())
    with h5py.File(bad, "r") as f:
        ds = f["patches"]
        spans = [(info.byte_offset, info.size) for info in map(ds.id.get_chunk_info, range(ds.id.get_num_chunks()))]
    with bad.open("r+b") as f:  # the stored (compressed) bytes of every patch chunk: zlib fails on them
        for offset, size in spans:
            f.seek(offset)
            f.write(b"\xff" * size)
    code, _, err = run_cli(monkeypatch, capsys, "segment", str(digit_run["run"]), str(bad), "--out",
                           str(tmp_path / "out"), "--device", "cpu")
    assert code == 2
    one_line_error(err, f"{bad}: cannot read patches", "corrupt")
    assert not (tmp_path / "out" / "bad").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["baseline", "{cfg}", "--split", "foo"], "'foo' is not one of 'test', 'val'"),
    (["evaluate", "{run}", "--split", "train"], "'train' is not one of 'test', 'val'"),
    (["evaluate", "{run}", "--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    (["cluster", "{run}", "--device", "gpu"], "'gpu' is not one of 'auto', 'cpu', 'cuda'"),
])
def test_choices_are_usage_errors(monkeypatch, capsys, digit_run, tmp_path, args, needle) -> None:
    args = [a.format(cfg=digit_run["run"] / "config.yaml", run=digit_run["run"]) for a in args]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and needle in err and "Traceback" not in err and "KeyError" not in err


def test_evaluate_on_a_device_records_the_heldout_fit(monkeypatch, capsys, digit_run) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", str(digit_run["run"]), "--device", "cpu")
    assert code == 0, err
    test = json.loads((digit_run["run"] / "metrics.json").read_text())["test"]
    assert test["kmeans"]["fit"] == "heldout" and test["num_labelled"] == test["num_instances"] == 256
    assert test["kmeans"]["fitted_on"] == "test split: its 256 labelled instances (of 256)"
    assert sum(test["cluster_sizes"]) == 256 and "digits (test)" in out
