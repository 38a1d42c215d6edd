"""tools/make_fashion_idx.py: the npm package's class files -> an IDX folder that data.source idx reads, empty rows
and duplicates dropped, no image on both sides of the split, the same split for the same seed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from slide_fixtures import ROOT

from pathoucc.data.idx import read_idx_folder


def _package(folder, per_class: int = 6) -> None:
    clothes = folder / "src" / "clothes"
    clothes.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in range(10):
        rows = [rng.integers(0, 256, 784).tolist() for _ in range(per_class)]
        rows.append(rows[0])  # a duplicate image, dropped
        if c == 0:
            rows.append([])  # the package's empty rows, dropped
        (clothes / f"{c}.json").write_text(json.dumps({"data": rows}))


def _make(src, out, seed: int = 0) -> dict:
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_fashion_idx.py"), str(src), "--out", str(out),
                    "--test-per-class", "2", "--seed", str(seed)], check=True, capture_output=True)
    return json.loads((out / "split.json").read_text())


def test_fashion_package_becomes_an_idx_folder(tmp_path) -> None:
    _package(tmp_path / "package")
    info = _make(tmp_path / "package", tmp_path / "idx")
    assert (info["empty"], info["duplicates"], info["train"], info["test"]) == (1, 10, 40, 20)
    arrays = read_idx_folder(tmp_path / "idx")
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    assert xtr.shape == (40, 28, 28) and xte.shape == (20, 28, 28) and xtr.dtype == np.uint8
    assert np.bincount(yte, minlength=10).tolist() == [2] * 10 and np.bincount(ytr).tolist() == [4] * 10
    assert not {x.tobytes() for x in xtr} & {x.tobytes() for x in xte}
    _make(tmp_path / "package", tmp_path / "idx2")  # the same seed: the same split
    assert np.array_equal(read_idx_folder(tmp_path / "idx2")["test"][0], xte)
    _make(tmp_path / "package", tmp_path / "idx3", seed=1)  # another seed: another one
    assert not np.array_equal(read_idx_folder(tmp_path / "idx3")["test"][0], xte)
