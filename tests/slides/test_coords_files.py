"""CLAM and TRIDENT coordinate files (coords-only HDF5) as tile sources: pixels read from the slide on the fly.

The files are written here exactly as CLAM's ``WholeSlideImage.process_contour`` / ``save_hdf5`` and TRIDENT's
``IO.coords_to_h5`` / ``save_h5`` write them: a chunked, resizable ``coords`` (N, 2) int64 of level-0 (x, y) with
the patching parameters as its attributes, and nothing else.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import one_line_error, run_cli
from slide_fixtures import CELL

from pathoucc.cluster.features import extract_features
from pathoucc.cluster.kmeans import fit_on_train
from pathoucc.config import config_from_dict
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.run import load_run
from pathoucc.slides.coords import CoordsFile
from pathoucc.slides.reader import open_slide
from pathoucc.slides.tilefile import TileFile, open_tiles
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import train_ucc


def _coords_dataset(f: h5py.File, coords: np.ndarray, attrs: dict) -> None:
    ds = f.create_dataset("coords", shape=coords.shape, maxshape=(None, 2), chunks=(1, 2), dtype=np.int64)
    ds[:] = coords
    for k, v in attrs.items():
        ds.attrs[k] = v


def write_clam(path: Path, coords: np.ndarray, slide: Path, patch_size: int, patch_level: int) -> Path:
    """As CLAM's create_patches_fp.py: ``<save_dir>/patches/<slide_id>.h5``."""
    with open_slide(slide) as s:
        ds = s.level_downsamples[patch_level]
        level_dim = s.level_dimensions[patch_level]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        _coords_dataset(f, coords, {"patch_size": patch_size, "patch_level": patch_level, "downsample": (ds, ds),
                                    "downsampled_level_dim": level_dim, "level_dim": level_dim,
                                    "name": slide.stem, "save_path": str(path.parent)})
    return path


def write_trident(path: Path, coords: np.ndarray, slide: Path, patch_size: int, src_mag: int, target_mag: int,
                  overlap: int = 0) -> Path:
    """As TRIDENT's coords_to_h5: ``<job>/<mag>x_<size>px_<overlap>px_overlap/patches/<name>_patches.h5``."""
    with open_slide(slide) as s:
        width, height = s.dimensions
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        _coords_dataset(f, coords, {"patch_size": patch_size, "patch_size_level0": patch_size * src_mag // target_mag,
                                    "level0_magnification": src_mag, "target_magnification": target_mag,
                                    "overlap": overlap, "name": slide.stem, "savetodir": str(path.parent.parent),
                                    "level0_width": width, "level0_height": height})
    return path


@pytest.fixture(scope="module")
def files(digit_slide, tmp_path_factory) -> dict:
    """pathoucc tiles of the digit slide (32 px, labelled by its mask) and the same patches as coords files."""
    folder = tmp_path_factory.mktemp("coords")
    slide = Path(digit_slide["slide"])
    h5 = tile_slide(slide, folder / "tiles", patch_size=CELL, level=0, region_size=256,
                    annotations=digit_slide["mask"], workers=1)
    with open_tiles(h5) as t:
        coords = t.coords
    return {
        "slide": slide, "tiles": h5, "coords": coords, "folder": folder, "mask": digit_slide["mask"],
        # CLAM's patches folder is not next to the slides: found through the slide folder
        "clam": write_clam(folder / "clam" / "patches" / f"{slide.stem}.h5", coords, slide, CELL, 0),
        # TRIDENT's job folder is the slide folder: found by its name, two folders up
        "trident": write_trident(slide.parent / "20x_32px_0px_overlap" / "patches" / f"{slide.stem}_patches.h5",
                                 coords, slide, CELL, 20, 20),
    }


def test_clam_file_reads_the_same_patches_as_pathoucc_tiles(files) -> None:
    with pytest.raises(PathouccError) as info:
        open_tiles(files["clam"])
    msg = str(info.value)  # names both files: the coords file and the slide it needs
    assert msg.startswith(str(files["clam"])) and "slide 'digits.*'" in msg and "data.slide_dir" in msg
    with open_tiles(files["clam"], files["slide"].parent) as c, open_tiles(files["tiles"]) as t:
        assert isinstance(c, CoordsFile) and isinstance(t, TileFile) and c.layout == "clam"
        assert (c.patch_size, c.patch_level, c.downsample, c.stride) == (CELL, 0, 1.0, CELL)
        assert c.slide_path == str(files["slide"].resolve()) and c.slide_dimensions == t.slide_dimensions
        assert c.level_dimensions == t.level_dimensions and c.labels is None and c.region is None
        np.testing.assert_array_equal(c.coords, t.coords)
        index = np.array([5, 0, 5, len(t.coords) - 1])
        np.testing.assert_array_equal(c.read(index), t.read(index))
        np.testing.assert_array_equal(c.read(slice(10, 20)), t.read(slice(10, 20)))
        np.testing.assert_array_equal(c.read(3), t.read(3))
        copy = pickle.loads(pickle.dumps(c))  # DataLoader workers reopen the slide
        np.testing.assert_array_equal(copy.read([7]), t.read([7]))
        copy.close()
    # the slide file itself may be given too
    with open_tiles(files["clam"], files["slide"]) as c:
        assert c.num_patches == len(files["coords"])


def test_trident_file_and_resized_patches(files, tmp_path) -> None:
    with open_tiles(files["trident"]) as c:  # the slide is found by its name two folders up
        assert c.layout == "trident" and (c.patch_size, c.downsample, c.stride) == (CELL, 1.0, CELL)
        with open_tiles(files["tiles"]) as t:
            np.testing.assert_array_equal(c.read(slice(0, 16)), t.read(slice(0, 16)))
            level0 = t.read(slice(0, 16))
    # 10x from a 20x slide: 16-px patches covering 32 level-0 px, overlap 8 -> stride 8 (output px)
    path = write_trident(tmp_path / "patches" / "x_patches.h5", files["coords"], files["slide"], 16, 20, 10, 8)
    with open_tiles(path, files["slide"]) as c:
        assert (c.patch_size, c.downsample, c.stride, c.extent) == (16, 2.0, 8, 32)
        assert c.level_dimensions == (512, 512)
        small = c.read(slice(0, 16))
    assert small.shape == (16, 16, 16, 3)
    halved = level0.reshape(16, 16, 2, 16, 2, 3).astype(np.float32).mean((2, 4))
    assert np.abs(small.astype(np.float32) - halved).mean() < 2.0  # the same pixels, box-filtered to half


def test_bad_coords_files(files, tmp_path) -> None:
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        _coords_dataset(f, files["coords"], {"patch_size": CELL, "patch_level": 7, "name": "digits"})
    with pytest.raises(PathouccError, match="patch_level 7 does not exist"):
        open_tiles(bad, files["slide"])
    with h5py.File(bad, "w") as f:
        _coords_dataset(f, np.zeros((0, 2), np.int64), {"patch_size": CELL, "patch_level": 0})
    with pytest.raises(PathouccError, match="invalid CLAM coords file: it holds zero patches"):
        open_tiles(bad, files["slide"])
    with h5py.File(bad, "w") as f:
        _coords_dataset(f, files["coords"], {"target_magnification": 20})
    with pytest.raises(PathouccError, match=r"TRIDENT coords file: coords lacks attribute\(s\) patch_size"):
        open_tiles(bad, files["slide"])
    with h5py.File(bad, "w") as f:
        _coords_dataset(f, files["coords"], {"something": 1})
    with pytest.raises(PathouccError, match="missing dataset"):  # neither layout: the pathoucc format's message
        open_tiles(bad)
    with pytest.raises(PathouccError, match=r"the slide of coords file .* is not there"):
        open_tiles(files["clam"], tmp_path / "no-such-folder")


def test_features_kmeans_and_segment_on_coords_files(files, monkeypatch, capsys, tmp_path) -> None:
    cfg = config_from_dict({
        "name": "digits", "seed": 1,
        "data": {"source": "tiles", "train_tiles": [str(files["tiles"])], "val_fraction": 0.0},
        "bags": {"bag_size": 8, "bags_per_batch": 4, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8, 16], "in_chans": 3, "input_size": CELL, "num_features": 8,
                  "mlp": [16], "decoder_widths": [16, 8]},
        "train": {"steps": 3, "val_every": 100, "checkpoint_every": 100, "log_every": 100, "val_bags": 4},
        "eval": {"n_init": 2, "batch_size": 128, "k": 4},
    })
    run = train_ucc(cfg, tmp_path / "run", progress=False)
    _, model = load_run(run)
    with open_tiles(files["tiles"]) as t, open_tiles(files["clam"], files["slide"].parent) as c:
        np.testing.assert_array_equal(extract_features(model, c, 100), extract_features(model, t, 100))
    # k-means fitted on coords files (found next to their slide) equals k-means on the tile file
    coords_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train_tiles": [str(files["trident"])]})})
    a = fit_on_train(model, cfg, 4, batch_size=64)
    b = fit_on_train(model, coords_cfg, 4, batch_size=64)
    np.testing.assert_array_equal(a.centers, b.centers)
    # segment: the pathoucc tile file and the CLAM file give the same clusters and scores
    outs = {}
    for name, path, extra in (("tiles", files["tiles"], []), ("clam", files["clam"], ["--slides",
                                                                                       str(files["slide"].parent)])):
        code, _, err = run_cli(monkeypatch, capsys, "segment", str(run), str(path), "--out", str(tmp_path / name),
                               "--device", "cpu", "--mask", str(files["mask"]),
                               *extra)
        assert code == 0, err
        outs[name] = json.loads((tmp_path / name / "digits" / "scores.json").read_text())
    assert outs["clam"]["patches"] == outs["tiles"]["patches"] and outs["clam"]["map"] == outs["tiles"]["map"]
    # a coords file whose slide cannot be found: one line naming both files
    code, _, err = run_cli(monkeypatch, capsys, "segment", str(run), str(files["clam"]), "--out", str(tmp_path / "x"))
    assert code == 2
    one_line_error(err, str(files["clam"]), "slide 'digits.*'")


def test_coords_files_cannot_train_but_can_be_test_tiles(files) -> None:
    data = {"source": "tiles", "train_tiles": [str(files["clam"])], "slide_dir": str(files["slide"].parent)}
    with pytest.raises(PathouccError, match="CLAM/TRIDENT coordinate file has none"):
        load_pools(config_from_dict({"data": data}).data, ("train",))
    data |= {"train_tiles": [str(files["tiles"])], "test_tiles": [str(files["clam"])]}
    with open_tiles(files["tiles"]) as t:
        expected = t.read(slice(None))
    for streaming in (True, False):  # read on demand (from the slide, here) or all at once
        test = load_pools(config_from_dict({"data": data | {"streaming": streaming}}).data, ("test",))["test"]
        got = test.read(slice(None)) if streaming else test.images
        np.testing.assert_array_equal(got, expected)
        assert (test.labels == -1).all()
