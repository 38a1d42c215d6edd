"""The held-out digit-slide generator (issue 8 item 5): blob classes, count-only polygons whose ucc is right."""

import json
import sys

import numpy as np
import shapely
from PIL import Image
from slide_fixtures import ROOT

from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide

sys.path.insert(0, str(ROOT / "tools"))
from make_digit_slide import make_blob_digit_slide

CELL, MARGIN = 32, 2


def test_blob_slide_regions_have_the_ucc_of_their_patches(tmp_path):
    made = make_blob_digit_slide(tmp_path / "blobs.tif", grid=(24, 24), cell=CELL, blob_cells=8, region_cells=6,
                                 blank_fraction=0.2, min_region_patches=8, source="digits", seed=4,
                                 margin_cells=MARGIN)
    truth = np.asarray(Image.open(made["mask"])).astype(np.int64)[CELL // 2::CELL, CELL // 2::CELL] - 1
    assert truth.shape == (28, 28) and (truth[:MARGIN] == -1).all() and (truth[:, -MARGIN:] == -1).all()
    inner = truth[MARGIN:-MARGIN, MARGIN:-MARGIN]
    assert (inner == -1).any() and len(np.unique(inner[inner >= 0])) >= 4  # some glass, several classes

    # the GeoJSON's counts, recomputed from the mask with the centre rule
    features = json.loads(made["geojson"].read_text())["features"]
    assert len(features) == made["regions"] >= 4
    rows, cols = np.nonzero(truth >= 0)
    cx, cy = (cols + 0.5) * CELL, (rows + 0.5) * CELL
    seen = np.zeros(len(rows), bool)
    for f in features:
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid and f["properties"]["ucc"] >= 1
        inside = shapely.contains_xy(geom, cx, cy)
        assert inside.sum() >= 8 and not (seen & inside).any()  # tens of patches, no patch in two regions
        seen |= inside
        assert f["properties"]["ucc"] == len(np.unique(truth[rows[inside], cols[inside]]))

    # and the tiler agrees: every digit cell is a tissue patch, every bag's count is that of its patches
    tiles = open_tiles(tile_slide(made["slide"], tmp_path / "tiles", patch_size=CELL, level=0,
                                  annotations=made["geojson"], classes=[str(d) for d in range(10)]))
    labels = truth[tiles.coords[:, 1] // CELL, tiles.coords[:, 0] // CELL]
    assert tiles.num_patches == len(rows) and (labels >= 0).all()
    assert tiles.num_regions == len(features) and (tiles.region >= 0).sum() == seen.sum()
    for r in range(tiles.num_regions):
        assert tiles.region_count[r] == len(np.unique(labels[tiles.region == r]))
