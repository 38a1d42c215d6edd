"""The feature pool: rows of feature files as instances, count labels attached through the coords by the centre
rule (count-only GeoJSON, CSV, label mask), streamed, and the run-level checks (one encoder, one dimension)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import count_regions_geojson, feature_cohort, write_clam_features, write_trident_features
from PIL import Image

from pathoucc.config import config_from_dict
from pathoucc.data.features import pool_from_features
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError

SIDE, WINDOW, EXTENT = 12, 4, 16  # 12 x 12 patches of 16 level-0 px; 4 x 4-patch count regions


def _data(tmp_path, **extra) -> dict:
    return {"source": "features", "annotations": str(tmp_path / "ann")} | extra


@pytest.fixture()
def cohort(tmp_path):
    (tmp_path / "ann").mkdir()
    out = {}
    for seed, name in enumerate(["a", "b"]):
        features, coords, labels, class_map = feature_cohort(seed, side=SIDE)
        path = write_trident_features(tmp_path / "features_uni_v1" / f"{name}.h5", features, coords,
                                      width=SIDE * EXTENT, height=SIDE * EXTENT)
        counts = count_regions_geojson(tmp_path / "ann" / f"{name}.geojson", class_map, WINDOW, EXTENT)
        out[name] = (path, features, labels, counts)
    return out


def _cfg(tmp_path, **data):
    raw = {"data": _data(tmp_path, **data), "model": {"backbone": "mlp"}}
    return config_from_dict(raw).data


def test_regions_by_the_centre_rule(cohort, tmp_path) -> None:
    paths = [str(cohort[n][0]) for n in "ab"]
    pool = pool_from_features(paths, _cfg(tmp_path), need_regions=True)
    assert pool.shape == (16,) and len(pool) == 2 * SIDE * SIDE
    np.testing.assert_array_equal(pool.region_count, cohort["a"][3] + cohort["b"][3])
    rows, cols = np.divmod(np.arange(SIDE * SIDE), SIDE)
    per_slide = (rows // WINDOW) * (SIDE // WINDOW) + cols // WINDOW  # the region holding each patch centre
    np.testing.assert_array_equal(pool.region, np.concatenate([per_slide, per_slide + 9]))
    assert (pool.labels == -1).all()  # count-only regions: no patch labels
    index = np.array([280, 2, 2, 150])
    rows_read = pool.read(index)
    assert rows_read.dtype == np.float32
    np.testing.assert_array_equal(rows_read, np.concatenate([cohort["a"][1], cohort["b"][1]])[index])
    # streamed: the pool holds 24 bytes a row, never the features (N x D x 4 bytes)
    assert len(pickle.dumps(pool)) < 30 * len(pool) + 10_000


def test_csv_and_mask_annotations(cohort, tmp_path) -> None:
    path, _, labels, _ = cohort["a"]
    ann = tmp_path / "csv"
    ann.mkdir()
    (ann / "a.csv").write_text("slide,x,y,width,height,ucc\na,0,0,64,64,3\na,64,64,64,32,1\n")
    pool = pool_from_features([path], _cfg(tmp_path, annotations=str(ann)), need_regions=True)
    np.testing.assert_array_equal(pool.region_count, [3, 1])
    assert (pool.region == 0).sum() == 16 and (pool.region == 1).sum() == 8
    mask = (labels.reshape(SIDE, SIDE) + 1).astype(np.uint8)  # one mask pixel per patch, 0 = background
    Image.fromarray(mask).save(ann / "a.png")
    (ann / "a.csv").unlink()
    pool = pool_from_features([path], _cfg(tmp_path, annotations=str(ann), region_size=32), need_regions=True)
    np.testing.assert_array_equal(pool.labels, labels)  # dense: every row labelled, without reading a pixel
    assert len(pool.region_count) == 9 and pool.region_count.max() <= 3  # 32-px (4-patch) windows


def test_load_pools_splits(cohort, tmp_path) -> None:
    paths = [str(cohort[n][0]) for n in "ab"]
    raw = {"data": _data(tmp_path, features=paths, test_features=paths[1:], val_fraction=0.25),
           "model": {"backbone": "mlp"}}
    pools = load_pools(config_from_dict(raw).data)
    assert len(pools["train"].region_count) == 14 and len(pools["val"].region_count) == 4
    assert len(pools["test"]) == SIDE * SIDE and pools["test"].shape == (16,)


def test_mixed_encoders_and_dimensions_are_refused(cohort, tmp_path) -> None:
    path = cohort["a"][0]
    features, coords, _, _ = feature_cohort(5, side=SIDE, dim=8)
    short = write_trident_features(tmp_path / "d8" / "c.h5", features, coords, width=192, height=192)
    with pytest.raises(PathouccError, match=r"8-dimensional features but .*a\.h5 holds 16"):
        pool_from_features([path, short], _cfg(tmp_path), need_regions=False)
    features, coords, _, _ = feature_cohort(6, side=SIDE)
    other = write_trident_features(tmp_path / "conch" / "c.h5", features, coords, width=192, height=192,
                                   encoder="conch_v1")
    with pytest.raises(PathouccError, match=r"encoder 'conch_v1' differs from 'uni_v1' of .*a\.h5") as info:
        pool_from_features([path, other], _cfg(tmp_path), need_regions=False)
    assert str(other) in str(info.value)
    h5, _ = write_clam_features(tmp_path / "clam", "c", features, coords * 2)
    pool = pool_from_features([path, h5], _cfg(tmp_path), need_regions=False)  # unknown encoder: any
    assert len(pool) == 2 * SIDE * SIDE
    digest = write_trident_features(tmp_path / "dg" / "d.h5", features, coords, width=192, height=192,
                                    root_attrs={"encoder": "uni_v1", "weights_digest": "00" * 32})
    digest2 = write_trident_features(tmp_path / "dg2" / "e.h5", features, coords, width=192, height=192,
                                     root_attrs={"encoder": "uni_v1", "weights_digest": "11" * 32})
    with pytest.raises(PathouccError, match="weights digest"):
        pool_from_features([digest, digest2], _cfg(tmp_path), need_regions=False)


def test_regions_that_cover_no_row(cohort, tmp_path) -> None:
    path = cohort["a"][0]
    ann = tmp_path / "off"
    ann.mkdir()
    (ann / "a.csv").write_text("slide,x,y,width,height,ucc\na,0,0,6,6,1\n")
    with pytest.raises(PathouccError, match="none of the 1 count regions gives a bag") as info:
        pool_from_features([path], _cfg(tmp_path, annotations=str(ann)), need_regions=True)
    assert str(ann / "a.csv") in str(info.value)
    with pytest.raises(PathouccError, match=r"data\.annotations is unset"):
        pool_from_features([path], _cfg(tmp_path, annotations=None), need_regions=True)
    with pytest.raises(PathouccError, match=r"no annotation file for a\.h5"):
        pool_from_features([path], _cfg(tmp_path, annotations=str(tmp_path / "features_uni_v1")),
                           need_regions=True)
