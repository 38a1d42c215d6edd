"""`pathoucc features`: TRIDENT-layout feature files from tile files and TRIDENT coords files, with a local timm
encoder; finished slides skipped, stale ones encoded again, --shard, and bad input as one line with nothing
half-written.

The reference layout is TRIDENT's own writer, reproduced here as it is (``trident/IO.py:save_h5`` and
``coords_to_h5``, ``trident/wsi_objects/WSI.py:extract_patch_features``, mahmoodlab/TRIDENT a91fa84): a file
written that way and one of ``pathoucc features`` must hold the same datasets, dtypes and attributes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import one_line_error, run_cli
from slide_fixtures import CELL

from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide

TINY_ARGS = {"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16], "stem_width": 8}
MEAN, STD = [0.8, 0.6, 0.7], [0.2, 0.25, 0.3]


def trident_save_h5(save_path, assets, attributes=None, mode="w"):
    """TRIDENT's ``IO.save_h5``, as it is (the append branch left out; tuples written as ruff asks)."""
    with h5py.File(save_path, mode) as file:
        for key, val in assets.items():
            data_shape = val.shape
            chunk_shape = (1, *data_shape[1:])
            maxshape = (None, *data_shape[1:])
            dset = file.create_dataset(key, shape=data_shape, maxshape=maxshape, chunks=chunk_shape, dtype=val.dtype)
            dset[:] = val
            if attributes is not None and key in attributes:
                for attr_key, attr_val in attributes[key].items():
                    if isinstance(attr_val, dict):
                        attr_val = json.dumps(attr_val)
                    elif attr_val is None:
                        attr_val = "None"
                    dset.attrs[attr_key] = attr_val


def trident_coords_attrs(patch_size, src_mag, target_mag, save_coords, width, height, name, overlap) -> dict:
    """The attributes TRIDENT's ``IO.coords_to_h5`` gives ``coords``."""
    return {"patch_size": patch_size, "patch_size_level0": patch_size * src_mag // target_mag,
            "level0_magnification": src_mag, "target_magnification": target_mag, "overlap": overlap,
            "name": name, "savetodir": save_coords, "level0_width": width, "level0_height": height}


def tiny_weights(path: Path, seed: int = 0, channels: list[int] | None = None) -> Path:
    """A small timm resnet18 saved as tools/train_standin_encoder.py saves one (32-px input, its own mean/std)."""
    import timm

    torch.manual_seed(seed)
    args = {**TINY_ARGS, **({"channels": channels} if channels else {})}
    model = timm.create_model("resnet18", num_classes=0, **{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in args.items()})
    torch.save({"architecture": "resnet18", "model_args": args, "state_dict": model.state_dict(),
                "pretrained_cfg": {"input_size": [3, 32, 32], "mean": MEAN, "std": STD}}, path)
    return path


def reference_features(weights: Path, patches: np.ndarray) -> np.ndarray:
    """What the encoder gives the patches, computed here by hand: [0, 1], normalised, fp32."""
    import timm

    saved = torch.load(weights, weights_only=True)
    model = timm.create_model("resnet18", num_classes=0, **{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in saved["model_args"].items()})
    model.load_state_dict(saved["state_dict"])
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x).numpy()


def layout(path: Path) -> dict:
    """Datasets (dtype, rank, maxshape) and attributes (name -> kind: int, float, str) of an HDF5 file."""
    def kinds(attrs) -> dict:
        return {k: "str" if isinstance(v, (str, bytes)) else np.asarray(v).dtype.kind for k, v in attrs.items()}

    with h5py.File(path, "r") as f:
        return {"root": kinds(f.attrs),
                **{k: {"dtype": str(f[k].dtype), "ndim": f[k].ndim, "maxshape": f[k].maxshape[:1],
                       "attrs": kinds(f[k].attrs)} for k in f}}


@pytest.fixture(scope="module")
def inputs(digit_slide, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("embed")
    slide = Path(digit_slide["slide"])
    tiles = tile_slide(slide, folder / "tiles", patch_size=CELL, level=0, workers=1)
    with open_tiles(tiles) as t:
        coords, patches = t.coords, t.read(slice(0, len(t)))
    return {"slide": slide, "tiles": tiles, "coords": coords, "patches": patches, "folder": folder,
            "weights": tiny_weights(folder / "tiny.pt")}


def features_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, "features", "--model", "resnet18", "--fp32", *map(str, args))


def test_tile_file_to_trident_layout(inputs, tmp_path, monkeypatch, capsys):
    code, out, err = features_cli(monkeypatch, capsys, inputs["tiles"], "--out", tmp_path, "--weights",
                                  inputs["weights"], "--batch-size", 100)
    assert code == 0, err
    assert "encoded 1" in out
    path = tmp_path / "features_tiny" / "digits.h5"  # <out>/features_<encoder>/<slide>.h5
    n = len(inputs["coords"])
    ref = tmp_path / "trident.h5"
    with open_tiles(inputs["tiles"]) as t:
        width, height = t.slide_dimensions
    trident_save_h5(ref, {"features": np.zeros((n, 16), np.float32), "coords": inputs["coords"].astype(np.int64)},
                    {"features": {"name": "digits", "savetodir": str(path.parent), "encoder": "tiny"},
                     "coords": trident_coords_attrs(CELL, 20, 20, str(inputs["tiles"].parent), width, height,
                                                    "digits", 0)})
    mine, theirs = layout(path), layout(ref)
    assert mine["root"] == {"encoder": "str", "weights_digest": "str"}  # ours, on the root only
    assert {k: v for k, v in mine.items() if k != "root"} == {k: v for k, v in theirs.items() if k != "root"}
    assert mine["features"]["dtype"] == "float32" and mine["coords"]["dtype"] == "int64"
    with h5py.File(path) as f, h5py.File(ref) as g:
        assert dict(f["coords"].attrs) == dict(g["coords"].attrs)  # mpp 0.5 -> 20x, as TRIDENT reads it
        assert dict(f["features"].attrs) == dict(g["features"].attrs)
        np.testing.assert_array_equal(f["coords"][()], inputs["coords"])
        assert f.attrs["encoder"] == "tiny"
        assert f.attrs["weights_digest"] == hashlib.sha256(inputs["weights"].read_bytes()).hexdigest()
        np.testing.assert_allclose(f["features"][()], reference_features(inputs["weights"], inputs["patches"]),
                                   rtol=1e-4, atol=1e-5)


def test_trident_coords_file_keeps_its_attributes(inputs, tmp_path, monkeypatch, capsys):
    job = tmp_path / "job"
    slide = job / inputs["slide"].name
    job.mkdir()
    shutil.copy(inputs["slide"], slide)
    coords_file = job / "20x_32px_0px_overlap" / "patches" / "digits_patches.h5"
    coords_file.parent.mkdir(parents=True)
    attrs = trident_coords_attrs(CELL, 20, 20, str(coords_file.parent.parent), 1024, 1024, "digits", 0)
    trident_save_h5(coords_file, {"coords": inputs["coords"][::3].astype(np.int64)}, {"coords": attrs})
    code, _, err = features_cli(monkeypatch, capsys, coords_file, "--out", tmp_path / "out", "--weights",
                                inputs["weights"], "--name", "enc")
    assert code == 0, err
    with h5py.File(tmp_path / "out" / "features_enc" / "digits.h5") as f, h5py.File(coords_file) as g:
        assert dict(f["coords"].attrs) == dict(g["coords"].attrs)  # copied, as TRIDENT copies them
        assert {k: type(v) for k, v in f["coords"].attrs.items()} == {k: type(v) for k, v in g["coords"].attrs.items()}
        # pixels read from the slide: the same patches as those the tile file stores
        np.testing.assert_allclose(f["features"][()],
                                   reference_features(inputs["weights"], inputs["patches"][::3]), rtol=1e-4,
                                   atol=1e-5)


def test_finished_skipped_stale_encoded_again(inputs, tmp_path, monkeypatch, capsys):
    args = [inputs["tiles"], "--out", tmp_path, "--name", "enc"]
    assert features_cli(monkeypatch, capsys, *args, "--weights", inputs["weights"])[0] == 0
    path = tmp_path / "features_enc" / "digits.h5"
    first = path.stat().st_mtime_ns
    code, out, _ = features_cli(monkeypatch, capsys, *args, "--weights", inputs["weights"])
    assert code == 0 and "encoded 0, skipped 1 (up to date)" in out and path.stat().st_mtime_ns == first
    other = tiny_weights(tmp_path / "other.pt", seed=1)  # same architecture and name, other weights: stale
    code, out, _ = features_cli(monkeypatch, capsys, *args, "--weights", other)
    assert code == 0 and "encoded digits.h5 again: the weights changed" in out
    with h5py.File(path) as f:
        assert f.attrs["weights_digest"] == hashlib.sha256(other.read_bytes()).hexdigest()
        np.testing.assert_allclose(f["features"][()], reference_features(other, inputs["patches"]), rtol=1e-4,
                                   atol=1e-5)
    code, out, _ = features_cli(monkeypatch, capsys, *args, "--weights", other, "--overwrite")
    assert code == 0 and "encoded 1" in out and "skipped 0" in out


def _renamed_copy(tiles: Path, folder: Path, slide_name: str) -> Path:
    """A copy of a tile file that says it came from slide ``<slide_name>.tif``."""
    path = folder / f"{slide_name}.h5"
    shutil.copy(tiles, path)
    with h5py.File(path, "a") as f:
        f.attrs["slide_path"] = str(folder / f"{slide_name}.tif")
    return path


def test_shards_split_the_files(inputs, tmp_path, monkeypatch, capsys):
    files = [_renamed_copy(inputs["tiles"], tmp_path, name) for name in ("a", "b", "c")]
    out = tmp_path / "out"
    for shard, expect in (("1/2", {"a.h5", "c.h5"}), ("2/2", {"b.h5"})):
        code, text, err = features_cli(monkeypatch, capsys, *files, "--out", out, "--weights", inputs["weights"],
                                       "--shard", shard)
        assert code == 0, err
        assert f"shard {shard}: {len(expect)} of 3 files" in text
    assert {p.name for p in (out / "features_tiny").iterdir()} == {"a.h5", "b.h5", "c.h5"}


def test_bad_inputs_one_line_and_nothing_written(inputs, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an hdf5 file at all" * 10)
    out = tmp_path / "out"
    code, _, err = features_cli(monkeypatch, capsys, broken, "--out", out, "--weights", inputs["weights"])
    assert code == 2
    one_line_error(err, str(broken), "not an HDF5 file")
    assert not list((out / "features_tiny").iterdir())

    # of several files, the broken one fails alone: the others are written, the exit code says one failed
    good = _renamed_copy(inputs["tiles"], tmp_path, "good")
    code, text, err = features_cli(monkeypatch, capsys, broken, good, "--out", out, "--weights", inputs["weights"])
    assert code == 1 and "encoded 1" in text and "failed 1" in text
    one_line_error(err, str(broken))
    assert sorted(p.name for p in (out / "features_tiny").iterdir()) == ["good.h5"]

    # weights of another width: the file is named, nothing written
    wide = tiny_weights(tmp_path / "wide.pt", channels=[8, 8, 16, 32])
    saved = torch.load(wide, weights_only=True)
    saved["model_args"] = TINY_ARGS  # claims the tiny architecture
    torch.save(saved, wide)
    code, _, err = features_cli(monkeypatch, capsys, inputs["tiles"], "--out", tmp_path / "o2", "--weights", wide)
    assert code == 2
    one_line_error(err, str(wide), "weights do not fit timm model 'resnet18'", "of another shape")
    assert not (tmp_path / "o2").exists()

    if not torch.cuda.is_available():
        code, _, err = features_cli(monkeypatch, capsys, inputs["tiles"], "--out", tmp_path / "o3", "--weights",
                                    inputs["weights"], "--device", "cuda")
        assert code == 2
        one_line_error(err, "no CUDA device is available")
        assert not (tmp_path / "o3").exists()

    code, _, err = run_cli(monkeypatch, capsys, "features", inputs["tiles"].as_posix(), "--out", str(tmp_path),
                           "--model", "no_such_model_xyz")
    assert code == 2
    one_line_error(err, "timm does not know the model 'no_such_model_xyz'")


def test_patch_read_failure_leaves_no_file(inputs, tmp_path):
    """A tile file whose patches cannot be read (a corrupt chunk) fails with its name; no feature file, no temp."""
    from pathoucc.embed import embed_files, load_encoder
    from pathoucc.options import FeatureOptions

    bad = _renamed_copy(inputs["tiles"], tmp_path, "bad")
    with h5py.File(bad, "r") as f:
        chunk = f["patches"].id.get_chunk_info(1)
    with bad.open("r+b") as fh:  # overwrite the second chunk's compressed bytes
        fh.seek(chunk.byte_offset)
        fh.write(b"\xff" * chunk.size)
    options = FeatureOptions(model="resnet18", weights=inputs["weights"], amp=False, batch_size=64)
    report = embed_files([bad], tmp_path / "out", options,
                         encoder=load_encoder("resnet18", inputs["weights"]))
    assert report.written == [] and len(report.failed) == 1
    assert str(bad) in report.failed[0][1] and "cannot read patches" in report.failed[0][1]
    assert list((tmp_path / "out" / "features_tiny").iterdir()) == []


def test_clam_coords_file_gets_tridents_attributes(inputs, tmp_path, monkeypatch, capsys):
    """A CLAM coords file (``<save_dir>/patches/<slide>.h5``, slide elsewhere: --slides) -> TRIDENT's attributes."""
    clam = tmp_path / "clam" / "patches" / "digits.h5"
    clam.parent.mkdir(parents=True)
    trident_save_h5(clam, {"coords": inputs["coords"][:40].astype(np.int64)},  # CLAM's save_hdf5 makes the same
                    {"coords": {"patch_size": CELL, "patch_level": 0, "downsample": (1.0, 1.0),
                                "downsampled_level_dim": (1024, 1024), "level_dim": (1024, 1024), "name": "digits",
                                "save_path": str(clam.parent)}})
    code, _, err = features_cli(monkeypatch, capsys, clam, "--slides", inputs["slide"].parent, "--out",
                                tmp_path / "out", "--weights", inputs["weights"])
    assert code == 0, err
    with h5py.File(tmp_path / "out" / "features_tiny" / "digits.h5") as f:
        assert dict(f["coords"].attrs) == trident_coords_attrs(CELL, 20, 20, str(clam.parent), 1024, 1024, "digits",
                                                               0)
        np.testing.assert_allclose(f["features"][()], reference_features(inputs["weights"], inputs["patches"][:40]),
                                   rtol=1e-4, atol=1e-5)


def test_written_files_read_back_as_feature_files(inputs, tmp_path, monkeypatch, capsys):
    """What `pathoucc features` writes is what the feature-file reader (the training side) takes: the same rows,
    coords, encoder and weights digest, as a TRIDENT file."""
    from pathoucc.slides.features import open_features

    code, _, err = features_cli(monkeypatch, capsys, inputs["tiles"], "--out", tmp_path, "--weights",
                                inputs["weights"], "--batch-size", 100)
    assert code == 0, err
    path = tmp_path / "features_tiny" / "digits.h5"
    with open_features(path) as f, h5py.File(path) as raw:
        assert f.layout == "trident" and f.encoder == "tiny" and f.dim == raw["features"].shape[1]
        assert f.weights_digest == hashlib.sha256(inputs["weights"].read_bytes()).hexdigest()
        np.testing.assert_array_equal(f.coords, inputs["coords"])
        np.testing.assert_array_equal(f.read(np.arange(len(f))), raw["features"][()])
