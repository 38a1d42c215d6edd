"""The CPU-testable parts of the GPU check (tools/gpu_check.sh has not run on a GPU here): the script parses, its
stages measure what they say on a tiny run, the table reads their lines, and the wheel list holds what the GPU
machine lacks and nothing it has."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import ROOT

from pathoucc.config import config_from_dict
from pathoucc.data.idx import write_idx
from pathoucc.files import write_text

sys.path.insert(0, str(ROOT / "tools"))

import fill_gpu_wheels
import gpu_check


def test_script_parses_and_limits_its_stages():
    script = ROOT / "tools" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    limits = [int(line.split()[2]) for line in text.splitlines() if line.startswith(("stage ", "    stage "))]
    assert len(limits) == 7 and sum(limits) <= 8 * 60  # the whole check stays within 8 minutes
    for needle in ("--nproc_per_node 1", "train.amp=true", "--no-index --find-links", "features"):
        assert needle in text


def test_train_stage_measures_a_run(tiny_config, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    write_text(cfg, json.dumps(config_from_dict(tiny_config).to_dict()))  # JSON is YAML
    record = gpu_check.train_stage(cfg, tmp_path / "run", ["train.steps=2"], "train")
    assert record["stage"] == "train" and record["device"] == "cpu" and record["steps"] == 2
    bags = tiny_config["bags"]
    assert record["instances_per_s"] == pytest.approx(2 * bags["bag_size"] * bags["bags_per_batch"]
                                                      / record["train_s"], rel=0.1)
    assert record["backend"] is None and record["world_size"] == 1 and record["peak_gpu_gb"] is None
    assert 0 <= record["accuracy"] <= 1


def test_tiles_stage_writes_counted_regions(tmp_path):
    rng = np.random.default_rng(0)
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    labels = np.arange(400) % 10
    write_idx(mnist / "train-images-idx3-ubyte", rng.integers(0, 256, (400, 28, 28), dtype=np.uint8))
    write_idx(mnist / "train-labels-idx1-ubyte", labels.astype(np.uint8))
    write_idx(mnist / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    write_idx(mnist / "t10k-labels-idx1-ubyte", np.zeros(10, np.uint8))
    out = tmp_path / "tiles" / "digits.h5"
    record = gpu_check.tiles_stage(out, 64 * 4, 16, tmp_path / "data", region=8)
    assert record["patches"] == 256 and record["regions"] == 4
    from pathoucc.slides.tilefile import open_tiles

    with open_tiles(out) as tiles, h5py.File(out) as f:
        assert tiles.read(slice(0, 2)).shape == (2, 16, 16, 3)
        patch_labels, coords = f["labels"][()], f["coords"][()]
    with (out.parent / "digits_regions.csv").open() as fh:
        regions = list(csv.DictReader(fh))
    assert [int(r["ucc"]) for r in regions] == [1, 2, 3, 4]
    for r in regions:  # each region holds exactly its count of classes
        x, y, w = int(r["x"]), int(r["y"]), int(r["width"])
        inside = (coords[:, 0] >= x) & (coords[:, 0] < x + w) & (coords[:, 1] >= y) & (coords[:, 1] < y + w)
        assert inside.sum() == 64 and len(np.unique(patch_labels[inside])) == int(r["ucc"])


def test_summary_table():
    records = [{"stage": "tiles", "patches": 10},
               {"stage": "train", "device": "NVIDIA H200", "amp": "bfloat16", "instances_per_s": 91000,
                "peak_gpu_gb": 1.234, "backend": None},
               {"stage": "features", "device": "NVIDIA H200", "patches_per_s": 5200, "peak_gpu_gb": 2.5},
               {"stage": "torchrun", "device": "NVIDIA H200", "amp": "bfloat16", "instances_per_s": 88000,
                "peak_gpu_gb": 1.3, "backend": "nccl", "world_size": 1}]
    lines = gpu_check.summary_table(records).splitlines()
    assert len(lines) == 4 and lines[0].split()[:2] == ["stage", "device"]
    assert "91000 instances/s" in lines[1] and "1.23" in lines[1]
    assert "5200 patches/s" in lines[2] and "2.50" in lines[2]
    assert lines[3].endswith("(nccl, world 1)")


def test_wheel_list_is_what_the_gpu_machine_lacks():
    needed = fill_gpu_wheels.needed()
    for present in ("torch", "timm", "h5py", "scikit-learn", "scipy", "numpy", "typer", "rich", "pyyaml"):
        assert present not in needed
    for lacking in ("pydantic", "pydantic-core", "shapely", "openslide-python", "openslide-bin", "matplotlib"):
        assert lacking in needed
    assert "albumentations" not in needed and "opencv-python-headless" not in needed
    assert {"albumentations", "opencv-python-headless"} <= set(fill_gpu_wheels.needed(with_augment=True))
    assert all(v[0].isdigit() for v in needed.values())  # pinned to the versions installed here


def test_one_process_torchrun_joins_a_group_and_all_reduces(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    import torch
    import torch.distributed as dist

    expect = "nccl ok" if torch.cuda.is_available() else "gloo ok"
    assert gpu_check._collective_check() == expect
    assert not dist.is_initialized()  # left again: pathoucc's single-process training follows
