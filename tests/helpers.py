"""Helpers shared by the tests: running the CLI in this process or as a subprocess, checking one-line errors,
and the paths of the repository and of the small data files in tests/assets/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pathoucc.cli import main
from pathoucc.data.pool import InstancePool

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"  # small real data (tests/assets/README.md says where each file is from)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``pathoucc ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["pathoucc", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def one_line_error(err: str, *needles: str) -> None:
    """``err`` is one ``error: ...`` line, no traceback, containing every needle."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def run_tile(*args, cwd=None) -> subprocess.CompletedProcess:
    """``pathoucc tile ARGS`` as a subprocess (text output, 120 s timeout)."""
    return subprocess.run([sys.executable, "-m", "pathoucc.cli", "tile", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


# --- feature files, written exactly as their writers write them ---------------------------------------------------

def _h5_dataset(f, key: str, value, chunk_rows: int, attrs: dict | None = None) -> None:
    """A resizable dataset of ``value`` in chunks of ``chunk_rows`` rows, as TRIDENT's ``save_h5`` (1 row) and
    CLAM's ``save_hdf5`` (32 rows) create it; TRIDENT writes a None attribute as the string 'None'."""
    import numpy as np

    value = np.asarray(value)
    ds = f.create_dataset(key, shape=value.shape, maxshape=(None, *value.shape[1:]),
                          chunks=(chunk_rows, *value.shape[1:]), dtype=value.dtype)
    ds[:] = value
    for k, v in (attrs or {}).items():
        ds.attrs[k] = "None" if v is None else v


def write_trident_features(path: Path, features, coords, *, patch_size: int = 8, src_mag: int = 40,
                           target_mag: int = 20, overlap: int = 0, width: int, height: int,
                           encoder: str | None = "uni_v1", root_attrs: dict | None = None) -> Path:
    """``<job>/<coords dir>/features_<encoder>/<slide>.h5`` as TRIDENT's ``WSI.extract_patch_features`` writes it
    (``IO.save_h5``): ``features`` (N, D) with ``name``/``savetodir``/``encoder``, ``coords`` (N, 2) int64 with the
    attributes of its ``coords_to_h5`` coords file. ``root_attrs``: what ``pathoucc features`` adds."""
    import h5py
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.stem
    coords_attrs = {"patch_size": patch_size, "patch_size_level0": patch_size * src_mag // target_mag,
                    "level0_magnification": src_mag, "target_magnification": target_mag, "overlap": overlap,
                    "name": name, "savetodir": str(path.parent.parent), "level0_width": width, "level0_height": height}
    with h5py.File(path, "w") as f:
        _h5_dataset(f, "features", features, 1, {"name": name, "savetodir": str(path.parent), "encoder": encoder})
        _h5_dataset(f, "coords", np.asarray(coords, np.int64), 1, coords_attrs)
        for k, v in (root_attrs or {}).items():
            f.attrs[k] = v
    return path


def write_clam_features(feat_dir: Path, name: str, features, coords, batch: int = 256) -> tuple[Path, Path]:
    """``<feat_dir>/h5_files/<slide>.h5`` and ``<feat_dir>/pt_files/<slide>.pt`` as CLAM's
    ``extract_features_fp.py`` writes them: ``save_hdf5`` per batch (``features`` float32, ``coords`` int32, no
    attributes, appended batch after batch), then ``torch.save`` of the whole features tensor."""
    import h5py
    import numpy as np
    import torch

    (feat_dir / "h5_files").mkdir(parents=True, exist_ok=True)
    (feat_dir / "pt_files").mkdir(parents=True, exist_ok=True)
    h5, pt = feat_dir / "h5_files" / f"{name}.h5", feat_dir / "pt_files" / f"{name}.pt"
    features, coords = np.asarray(features, np.float32), np.asarray(coords).astype(np.int32)
    for a in range(0, len(features), batch):
        with h5py.File(h5, "w" if a == 0 else "a") as f:
            for key, val in (("features", features[a:a + batch]), ("coords", coords[a:a + batch])):
                if key not in f:
                    _h5_dataset(f, key, val, 32)
                else:
                    f[key].resize(len(f[key]) + len(val), axis=0)
                    f[key][-len(val):] = val
    with h5py.File(h5, "r") as f:
        torch.save(torch.from_numpy(f["features"][:]), pt)
    return h5, pt


def feature_cohort(seed: int, side: int = 24, block: int = 3, classes: int = 3, dim: int = 16,
                   extent: int = 16):
    """A synthetic slide of ``side`` x ``side`` patches of level-0 side ``extent`` whose classes come in random
    ``block`` x ``block`` blocks, each class a Gaussian blob in ``dim`` dimensions (centres fixed across seeds).
    Returns ``(features (N, D) float32, coords (N, 2) int64, labels (N,), class_map (side, side))``."""
    import numpy as np

    centres = np.random.default_rng(1234).normal(0, 1, (classes, dim))
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, classes, (side // block + 1, side // block + 1))
    class_map = np.kron(blocks, np.ones((block, block), np.int64))[:side, :side]
    ys, xs = np.mgrid[:side, :side]
    coords = np.stack([xs.ravel() * extent, ys.ravel() * extent], 1).astype(np.int64)
    labels = class_map.ravel()
    features = (centres[labels] + rng.normal(0, 0.35, (len(labels), dim))).astype(np.float32)
    return features, coords, labels, class_map


def count_regions_geojson(path: Path, class_map, window: int, extent: int) -> list[int]:
    """Count-only QuPath GeoJSON regions: ``window`` x ``window``-patch squares tiling the slide, each with the
    ``ucc`` of its patches' classes; returns the counts."""
    import json

    import numpy as np

    feats, counts = [], []
    side = class_map.shape[0]
    for r in range(0, side - window + 1, window):
        for c in range(0, side - window + 1, window):
            ucc = len(np.unique(class_map[r:r + window, c:c + window]))
            x0, y0, x1, y1 = c * extent, r * extent, (c + window) * extent, (r + window) * extent
            feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
                [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                "properties": {"objectType": "annotation", "ucc": ucc}})
            counts.append(ucc)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return counts


FEATURE_SIDE, FEATURE_EXTENT = 12, 16  # the feature-file tests' slide: 12 x 12 patches of 16 level-0 px


def tiny_digit_config(tiles, cell: int, steps: int, batch_size: int = 128) -> dict:
    """The raw config of a tiny run on the digit slide's tile file ``tiles`` (``cell``-px patches): a small conv
    encoder, bags of 8, ``steps`` training steps, no validation split."""
    return {
        "name": "digits", "seed": 1,
        "data": {"source": "tiles", "train_tiles": [str(tiles)], "val_fraction": 0.0},
        "bags": {"bag_size": 8, "bags_per_batch": 4, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8, 16], "in_chans": 3, "input_size": cell, "num_features": 8,
                  "mlp": [16], "decoder_widths": [16, 8]},
        "train": {"steps": steps, "val_every": 100, "checkpoint_every": 100, "log_every": 100, "val_bags": 4},
        "eval": {"n_init": 2, "batch_size": batch_size},
    }


def tiny_cohort_recipe(cell: int) -> dict:
    """The recipe of a tiny intermixed cohort cell of ``cell``-px patches (for ``make_cohort.Cell.recipe``): two
    16 × 16-cell training slides, 10 × 10-cell validation and test slides, regions of ~5 cells a side."""
    spec = {"layout": "intermixed", "cell": cell, "region_cells": 5.0, "min_region_patches": 6, "blob_cells": 8.0,
            "source": "digits"}
    return {"cell": {}, "slides": [{"name": n, "split": "train", "seed": s, "grid": g, **spec}
                                   for n, s, g in (("train0", 1, 16), ("train1", 11, 16), ("val", 3, 10),
                                                   ("test", 2, 10))]}


def region_pool(digits, classes=(0, 1, 2, 3), size: int = 12, seed: int = 0) -> InstancePool:
    """8x8 digits of ``classes`` in regions of ``size``, each of one or two classes, with exact counts."""
    images, labels = digits
    rng = np.random.default_rng(seed)
    by_class = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    picked, region, ucc = [], [], []
    while True:
        chosen = rng.choice(classes, size=rng.integers(1, 3), replace=False).tolist()
        share = [size // len(chosen)] * len(chosen)
        share[0] += size - sum(share)
        if any(len(by_class[c]) < n for c, n in zip(chosen, share, strict=True)):
            break
        for c, n in zip(chosen, share, strict=True):
            picked += [by_class[c].pop() for _ in range(n)]
        region += [len(ucc)] * size
        ucc.append(len(chosen))
    picked = np.array(picked)
    return InstancePool(images[picked], labels[picked], np.array(region), np.array(ucc))
