"""Feature files as TRIDENT and CLAM write them (tests/helpers.py writes them exactly so): what the readers take
from each layout, and every bad file as a one-line error naming it."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import feature_cohort, write_clam_features, write_trident_features
from PIL import Image

from pathoucc.errors import PathouccError
from pathoucc.slides.features import FeatureFile, is_feature_file, open_features
from pathoucc.slides.h5rows import RawRows, read_h5_rows
from pathoucc.slides.tilefile import open_tiles


@pytest.fixture(scope="module")
def cohort():
    return feature_cohort(0, side=12)


def test_trident_layout(cohort, tmp_path) -> None:
    features, coords, _, _ = cohort
    path = write_trident_features(tmp_path / "job" / "20x_8px_2px_overlap" / "features_conch_v15" / "slide A.h5",
                                  features.astype(np.float16), coords, overlap=2, width=192, height=192,
                                  encoder=None)
    assert is_feature_file(path)
    with open_tiles(path) as f:  # the one opener of per-slide files takes feature files too
        assert isinstance(f, FeatureFile) and f.layout == "trident" and not f.has_pixels
        assert f.shape == (16,) and f.num_patches == 144 and f.dim == 16
        assert f.patch_size == 8 and f.downsample == 2.0 and f.stride == 6  # patch_size - overlap
        assert f.slide_dimensions == (192, 192) and f.level_dimensions == (96, 96)
        assert f.encoder == "conch_v15"  # TRIDENT wrote encoder None ('None'): the features_<encoder> folder
        assert f.slide_path == ""  # no slide anywhere: segmentation draws no overlay
        np.testing.assert_array_equal(f.coords, coords)
        rows = f.read(np.array([5, 1, 5, 143]))
        assert rows.dtype == np.float32 and rows.shape == (4, 16)
        np.testing.assert_allclose(rows, features[[5, 1, 5, 143]].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(f.read(slice(0, 3)), features[:3].astype(np.float16).astype(np.float32))
        clone = pickle.loads(pickle.dumps(f))  # DataLoader workers reopen the file
        np.testing.assert_array_equal(clone.read([7]), f.read([7]))


def test_trident_encoder_attribute_and_pathoucc_digest(cohort, tmp_path) -> None:
    features, coords, _, _ = cohort
    path = write_trident_features(tmp_path / "features_x" / "s.h5", features, coords, width=192, height=192,
                                  encoder="uni_v1")
    assert open_features(path).encoder == "uni_v1"  # the features dataset's attribute beats the folder
    own = write_trident_features(tmp_path / "own" / "s.h5", features, coords, width=192, height=192,
                                 root_attrs={"encoder": "hf-hub:MahmoodLab/UNI", "weights_digest": "ab" * 32})
    f = open_features(own)
    assert (f.encoder, f.weights_digest) == ("hf-hub:MahmoodLab/UNI", "ab" * 32)


def test_clam_h5_and_pt(cohort, tmp_path) -> None:
    features, coords, _, _ = cohort
    h5, pt = write_clam_features(tmp_path / "feats", "slide", features, coords * 2, batch=50)
    with h5py.File(h5) as f:  # as CLAM writes it: int32 coords, no attributes
        assert f["coords"].dtype == np.int32 and not dict(f["coords"].attrs)
    a, b = open_features(h5), open_features(pt)
    assert (a.layout, b.layout) == ("clam", "clam-pt") and a.encoder is None
    assert a.patch_size == 32 and a.downsample == 1.0 and a.stride == 32  # the smallest coordinate gap
    assert a.slide_dimensions == (384, 384)  # no slide, no attributes: the extent of the patches
    np.testing.assert_array_equal(b.coords, a.coords)
    index = np.array([3, 3, 0, 140])
    np.testing.assert_array_equal(a.read(index), features[index])
    np.testing.assert_array_equal(b.read(index), features[index])
    assert open_features(h5, patch_size_level0=48).patch_size == 48  # data.patch_size_level0 overrides


def test_slide_found_by_name(cohort, tmp_path) -> None:
    features, coords, _, _ = cohort
    slides = tmp_path / "slides"
    slides.mkdir()
    Image.new("RGB", (200, 190), "white").save(slides / "slide.png")
    h5, _ = write_clam_features(tmp_path / "feats", "slide", features[:100], coords[:100])
    f = open_features(h5, slides)
    assert f.slide_path == str((slides / "slide.png").resolve()) and f.slide_dimensions == (200, 190)
    with pytest.raises(PathouccError, match="is not there"):
        open_features(h5, tmp_path / "missing")


def _bad(tmp_path: Path, cohort, change) -> Path:
    features, coords, _, _ = cohort
    path = write_trident_features(tmp_path / "bad.h5", features, coords, width=192, height=192)
    with h5py.File(path, "a") as f:
        change(f)
    return path


@pytest.mark.parametrize(("change", "needle"), [
    (lambda f: f.__delitem__("coords"), "no 'coords' dataset"),
    (lambda f: f["features"].__setitem__((7, 3), np.nan), "feature row 7 holds NaN or inf"),
    (lambda f: f["features"].__setitem__((9, 0), np.inf), "feature row 9 holds NaN or inf"),
    (lambda f: f["features"].resize(140, axis=0), "holds 140 feature rows but 144 coords"),
    (lambda f: f["coords"].__setitem__(3, [400, 0]), "1 coords lie outside the slide (192x192"),
    (lambda f: f["coords"].__setitem__(3, [-16, 0]), "outside the slide"),
    (lambda f: f["coords"].attrs.__delitem__("patch_size"), "lacks attribute(s) patch_size"),
])
def test_bad_trident_files(cohort, tmp_path, change, needle) -> None:
    path = _bad(tmp_path, cohort, change)
    with pytest.raises(PathouccError) as info:
        open_features(path)
    assert needle in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_pt_files(cohort, tmp_path) -> None:
    features, coords, _, _ = cohort
    _, pt = write_clam_features(tmp_path / "feats", "s", features, coords)
    torch.save({"features": torch.from_numpy(features)}, pt)
    with pytest.raises(PathouccError, match=r"not a plain \(N, D\) float tensor .*dict"):
        open_features(pt)
    torch.save(torch.zeros(3, 4, 5), pt)
    with pytest.raises(PathouccError, match="not a plain"):
        open_features(pt)
    torch.save(torch.from_numpy(features[:-1]), pt)
    with pytest.raises(PathouccError, match="143 feature rows but 144 coords"):
        open_features(pt)
    orphan = tmp_path / "other" / "pt_files" / "t.pt"
    orphan.parent.mkdir(parents=True)
    torch.save(torch.from_numpy(features), orphan)
    with pytest.raises(PathouccError, match="has no coords"):
        open_features(orphan)
    pt.write_bytes(b"not torch")
    with pytest.raises(PathouccError, match="corrupt or unreadable"):
        open_features(pt)


def test_nan_written_after_opening_is_caught_on_read(cohort, tmp_path) -> None:
    features, coords, _, _ = cohort
    path = write_trident_features(tmp_path / "s.h5", features, coords, width=192, height=192)
    f = open_features(path)
    with h5py.File(path, "a") as h:
        h["features"][10, 0] = np.nan
    with pytest.raises(PathouccError, match="NaN or inf"):
        f.read([10, 11])


@pytest.mark.parametrize("layout", ["one-row chunks", "32-row chunks, appended", "contiguous", "gzip"])
def test_fast_row_reader_matches_h5py(tmp_path, layout) -> None:
    rows = np.random.default_rng(0).standard_normal((100, 6)).astype(np.float32)
    path = tmp_path / "rows.h5"
    with h5py.File(path, "w") as f:
        if layout == "contiguous":
            f.create_dataset("x", data=rows)
        elif layout == "gzip":
            f.create_dataset("x", data=rows, chunks=(10, 6), compression="gzip")
        else:
            rpc = 1 if layout == "one-row chunks" else 32
            ds = f.create_dataset("x", (0, 6), np.float32, maxshape=(None, 6), chunks=(rpc, 6))
            for a in range(0, 100, 30):  # appended batch after batch, another dataset growing in between
                ds.resize(min(100, a + 30), axis=0)
                ds[a:a + 30] = rows[a:a + 30]
                f.require_dataset(f"other{a}", (5,), np.int64)
    index = np.array([0, 1, 2, 31, 32, 33, 64, 99])
    with h5py.File(path) as f:
        raw = RawRows.of(f["x"], path)
        np.testing.assert_array_equal(read_h5_rows(f["x"], np.array([99, 0, 0, 50])), rows[[99, 0, 0, 50]])
    if layout == "gzip":
        assert raw is None  # compressed chunks go through h5py
        return
    try:
        np.testing.assert_array_equal(raw.read(index), rows[index])
    finally:
        raw.close()
