"""Streaming tile data: patches read from the HDF5 files on demand (by DataLoader workers) train exactly as the
in-memory pool does; a corrupt tile file mid-training is a one-line error naming it; pretrained timm backbones
normalise with their pretrained mean/std inside the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import one_line_error, run_cli
from slide_fixtures import CELL

from pathoucc.cluster.features import extract_features
from pathoucc.config import config_from_dict
from pathoucc.data.pool import InstancePool
from pathoucc.data.sources import load_pools
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError
from pathoucc.models.encoders import TimmEncoder, input_stats
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import UCCTraining, fit_ucc, prepare_ucc


@pytest.fixture(scope="module")
def labelled_tiles(digit_slide, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stream")
    return tile_slide(digit_slide["slide"], folder / "labelled", patch_size=CELL, stride=CELL, level=0,
                      region_size=128, annotations=digit_slide["mask"], workers=1)


def _config(tiles: list[Path], streaming: bool, workers: int = 0, augment: bool = True):
    return config_from_dict({
        "seed": 5,
        "data": {"source": "tiles", "train_tiles": [str(p) for p in tiles], "val_fraction": 0.25,
                 "streaming": streaming, "num_workers": workers,
                 "augment": [{"name": "HorizontalFlip", "p": 0.5}] if augment else []},
        "bags": {"bag_size": 8, "bags_per_batch": 3, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8, 16], "in_chans": 3, "input_size": CELL, "num_features": 4,
                  "mlp": [16], "decoder_widths": [16, 8]},
        "train": {"steps": 3, "val_every": 3, "checkpoint_every": 100, "log_every": 1, "val_bags": 4},
        "eval": {"batch_size": 50},
    })


def _train(cfg, run: Path) -> tuple[UCCTraining, list[str]]:
    run.mkdir()
    training = prepare_ucc(cfg, load_pools(cfg.data, ("train", "val")))
    fit_ucc(training, cfg, run)
    return training, (run / "metrics.jsonl").read_text().splitlines()


def test_streaming_pool_trains_exactly_as_the_in_memory_pool(labelled_tiles: Path, tmp_path: Path) -> None:
    """Two copies of the file (two files in the global index), augmentations on, 2 DataLoader workers: the same
    bags, pixels, losses (metrics lines but the wall-clock) and weights, bit for bit."""
    second = shutil.copy(labelled_tiles, tmp_path / "copy.h5")
    files = [labelled_tiles, Path(second)]
    memory, stream = (load_pools(_config(files, s).data) for s in (False, True))
    for split in ("train", "val", "test"):
        a, b = memory[split], stream[split]
        assert isinstance(a, InstancePool) and isinstance(b, StreamingPool) and len(a) == len(b)
        np.testing.assert_array_equal(a.labels, b.labels)
        if split != "test":
            np.testing.assert_array_equal(a.region, b.region)
            np.testing.assert_array_equal(a.region_count, b.region_count)
        index = np.random.default_rng(0).integers(0, len(a), 40)  # any order, repeats, both files
        np.testing.assert_array_equal(a.read(index), b.read(index))
    runs = {s: _train(_config(files, s, workers=2 if s else 0), tmp_path / f"run-{s}") for s in (False, True)}
    (ta, la), (tb, lb) = runs[False], runs[True]

    def without_time(lines: list[str]) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]

    assert len(la) == 3 and without_time(la) == without_time(lb)
    ma, mb = ta.state.modules["model"], tb.state.modules["model"]
    for (name, wa), wb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=name)
    # features for evaluation and k-means stream too, batch by batch
    np.testing.assert_array_equal(extract_features(ma, memory["test"], 64), extract_features(ma, stream["test"], 64))


def _corrupt_patch_chunks(path: Path) -> None:
    """Overwrite the stored (compressed) bytes of every chunk of /patches: reading them fails in zlib."""
    with h5py.File(path, "r") as f:
        ds = f["patches"]
        spans = [(info.byte_offset, info.size) for info in map(ds.id.get_chunk_info, range(ds.id.get_num_chunks()))]
    with path.open("r+b") as f:
        for offset, size in spans:
            f.seek(offset)
            f.write(b"\xff" * size)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_tile_file_mid_training_names_the_file(labelled_tiles: Path, tmp_path: Path, workers: int) -> None:
    bad = Path(shutil.copy(labelled_tiles, tmp_path / "bad.h5"))
    cfg = _config([bad], True, workers, augment=False)
    training = prepare_ucc(cfg, load_pools(cfg.data, ("train", "val")))  # metadata only: nothing read yet
    _corrupt_patch_chunks(bad)
    with pytest.raises(PathouccError) as info:
        fit_ucc(training, cfg, tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: cannot read patches") and "corrupt" in msg and "\n" not in msg, msg
    bad.unlink()  # a file that disappears: named too
    training.train_pool.close()
    with pytest.raises(PathouccError, match=rf"^{bad}: tiles file not found$"):
        training.train_pool.read(np.arange(3))


def test_corrupt_tile_file_read_into_memory_is_one_line_in_train(labelled_tiles: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    bad = Path(shutil.copy(labelled_tiles, tmp_path / "bad.h5"))
    _corrupt_patch_chunks(bad)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_config([bad], streaming=False).model_dump(mode="json")))
    code, _, err = run_cli(monkeypatch, capsys, "train", str(config), "--out", str(tmp_path / "run"))
    assert code == 2
    one_line_error(err, f"{bad}: cannot read patches", "corrupt")
    assert "filter returned failure" in err or "OSError" in err  # what h5py said, after the file's name


def test_pretrained_timm_backbones_normalise_with_their_pretrained_stats(tmp_path: Path) -> None:
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), weights)
    pretrained, plain = TimmEncoder("resnet18", 3, str(weights)).eval(), TimmEncoder("resnet18", 3).eval()
    mean, std = input_stats(pretrained.model, 3)
    assert mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    assert input_stats(pretrained.model, 1)[0].shape == (1, 1, 1, 1)
    assert "mean" not in pretrained.state_dict()  # model files keep their keys
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pretrained(x), pretrained.model((x - mean) / std))
        torch.testing.assert_close(plain(x), plain.model(x))  # random weights: inputs stay in [0, 1]
