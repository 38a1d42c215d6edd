"""The viewer's files without a browser: segmentation folders found and checked, DZI geometry, slide and cluster
tiles, the data scripts, names, and one-line errors for bad input."""

from __future__ import annotations

import base64
import io
import json

import h5py
import numpy as np
import pytest
from helpers import one_line_error, run_cli
from PIL import Image

from pathoucc.errors import PathouccError
from pathoucc.segment.maps import cluster_colors
from pathoucc.slides.reader import open_slide
from pathoucc.view import Site, SiteError, find_segmentations, load_views
from pathoucc.view.dzi import ClusterPyramid, DziGeometry


def _script_json(text: str) -> object:
    """The JSON value a data script assigns (``... = {json};``)."""
    return json.loads(text[text.index(" = {" if "PATCHES" in text else " = [") + 3:].rstrip().removesuffix(";"))


def test_finds_segmentations_in_a_folder_of_them_a_run_and_itself(segmented, tmp_path) -> None:
    folder = segmented["folder"]
    assert find_segmentations(segmented["maps"]) == [folder]
    assert find_segmentations(folder) == [folder] == find_segmentations(folder / "clusters.h5")
    run = tmp_path / "run"
    (run / "segments").mkdir(parents=True)
    (run / "segments" / "digits").symlink_to(folder)
    assert find_segmentations(run) == [run / "segments" / "digits"]
    with pytest.raises(PathouccError, match="no segmentation outputs here"):
        find_segmentations(tmp_path)


def test_views_carry_map_patches_colours_counts_and_the_slide(segmented) -> None:
    (view,) = load_views([segmented["maps"]])
    with h5py.File(segmented["folder"] / "clusters.h5") as f:
        clusters, dist2 = f["cluster"][()], f["distances"][()]
        assert np.array_equal(view.cluster_map, f["map"][()]) and view.cell == f["map"].attrs["cell"]
    assert view.id == "digits" and view.dimensions == (1024, 1024) and view.mpp == pytest.approx(0.5)
    assert np.array_equal(view.colors, cluster_colors(4)) and view.names == [f"cluster {c}" for c in range(4)]
    assert np.array_equal(view.counts, np.bincount(clusters, minlength=4)) and view.counts.sum() == 256
    assert np.allclose(view.distance, np.sqrt(dist2[np.arange(len(clusters)), clusters]))
    assert view.extent == 32


def test_names_come_from_the_segmentation_when_it_has_them(seg_copy) -> None:
    with h5py.File(seg_copy / "clusters.h5", "r+") as f:
        f.attrs["cluster_names"] = json.dumps(["tumour", "stroma", "fat", "necrosis"])
    (view,) = load_views([seg_copy])
    assert view.names == ["tumour", "stroma", "fat", "necrosis"]
    site = Site([view])
    slides = _script_json(site.get("data/slides.js")[0].decode())
    assert [c["name"] for c in slides[0]["clusters"]] == view.names
    with h5py.File(seg_copy / "clusters.h5", "r+") as f:
        f.attrs["cluster_names"] = json.dumps(["a", "b"])
    with pytest.raises(PathouccError, match="2 cluster names for k = 4"):
        load_views([seg_copy])


def test_dzi_geometry_follows_the_format() -> None:
    g = DziGeometry(1000, 300)
    assert g.max_level == 10 and g.level_size(10) == (1000, 300) and g.level_size(9) == (500, 150)
    assert g.level_size(0) == (1, 1) and g.tiles(10) == (4, 2)
    assert g.tile_box(10, 0, 0) == (0, 0, 255, 255) and g.tile_box(10, 1, 1) == (253, 253, 509, 300)
    assert len(g.addresses()) == g.num_tiles()
    for bad in ((11, 0, 0), (10, 4, 0), (10, 0, 2), (-1, 0, 0)):
        with pytest.raises(ValueError, match="no "):
            g.tile_box(*bad)


def test_cluster_tiles_show_the_map_cell_under_each_pixel() -> None:
    cluster_map = np.array([[0, 1, -1], [1, 1, 0]], np.int16)
    pyr = ClusterPyramid(cluster_map, 1, np.array([10, 20, 30], np.uint8))
    full = pyr.pixels(pyr.geometry.max_level, 0, 0)
    assert full.shape == (2, 3, 4)
    assert np.array_equal(full[..., 3] == 255, cluster_map == 1)
    assert (full[cluster_map == 1][:, :3] == [10, 20, 30]).all() and (full[cluster_map != 1] == 0).all()
    png = Image.open(io.BytesIO(pyr.tile(pyr.geometry.max_level, 0, 0)))
    assert png.mode == "RGBA" and np.array_equal(np.asarray(png), full)


def test_slide_tiles_are_the_slide_and_cluster_tiles_its_map(segmented) -> None:
    views = load_views([segmented["maps"]])
    site = Site(views)
    data, media = site.get("data/digits/slide_files/10/1_2.jpeg")  # level 10 = full size (1024 px)
    assert media == "image/jpeg"
    tile = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    with open_slide(segmented["slide"]) as slide:
        truth = slide.read_region((253, 507), 0, (256, 256)).astype(np.float32)
    assert tile.shape == (256, 256, 3) and np.abs(tile - truth).mean() < 4  # JPEG of the same pixels
    view = views[0]
    c = int(view.clusters[0])
    assert site.cached(f"data/digits/cluster{c}_files/5/0_0.png") is None  # not rendered yet
    png, media = site.get(f"data/digits/cluster{c}_files/5/0_0.png")  # 32 x 32 map: level 5 is the whole map
    rgba = np.asarray(Image.open(io.BytesIO(png)))
    assert media == "image/png" and rgba.shape == (32, 32, 4)
    assert np.array_equal(rgba[..., 3] == 255, view.cluster_map == c)
    assert site.get(f"data/digits/cluster{c}_files/5/0_0.png")[0] is png  # cached
    assert site.cached(f"data/digits/cluster{c}_files/5/0_0.png") == (png, "image/png")
    assert site.cached(f"data/digits/cluster{c}_files/5/0_0.jpeg") is None
    xml = site.get("data/digits/slide.dzi")[0].decode()
    assert 'TileSize="254"' in xml and 'Width="1024"' in xml


def test_patch_data_round_trips(segmented) -> None:
    (view,) = load_views([segmented["maps"]])
    data = _script_json(Site([view]).get("data/digits/patches.js")[0].decode())
    coords = np.frombuffer(base64.b64decode(data["coords"]), "<i4").reshape(-1, 2)
    assert np.array_equal(coords, view.coords) and data["extent"] == 32
    assert np.array_equal(np.frombuffer(base64.b64decode(data["cluster"]), "<i2"), view.clusters)
    assert np.array_equal(np.frombuffer(base64.b64decode(data["map"]), "<i2").reshape(32, 32), view.cluster_map)
    assert np.allclose(np.frombuffer(base64.b64decode(data["distance"]), "<f4"), view.distance)


@pytest.mark.parametrize("path", [
    "../clusters.h5", "assets/../sources.py", "assets/../../view/sources.py", "/etc/passwd", "//etc/passwd",
    "data/digits/../../../etc/passwd", "data/digits/clusters.h5", "data/digits/slide_files/10/0_0.png",
    "data/digits/slide_files/10/99_0.jpeg", "data/digits/slide_files/x/0_0.jpeg",
    "data/digits/cluster9_files/5/0_0.png", "data/nope/slide_files/0/0_0.jpeg",
    "data/digits/slide_files/1000/0_0.jpeg", "data/digits/slide_files/10/0_0.jpeg/", "assets", "data",
    "data/digits/overlay.png"])
def test_anything_but_the_sites_own_files_is_not_found(segmented, path) -> None:
    site = Site(load_views([segmented["maps"]]))
    with pytest.raises(SiteError) as err:
        site.get(path)
    assert err.value.status == 404


def test_assets_are_served_without_symlinks_leaving_the_folder(segmented, tmp_path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "index.html").write_text("<html></html>")
    secret = tmp_path / "secret.js"
    secret.write_text("secret")
    (assets / "out.js").symlink_to(secret)
    (assets / "sub").symlink_to(tmp_path, target_is_directory=True)
    site = Site(load_views([segmented["maps"]]), assets=assets)
    assert site.get("/")[0] == b"<html></html>"
    for path in ("assets/out.js", "assets/sub/secret.js"):
        with pytest.raises(SiteError):
            site.get(path)


def test_moved_slide_is_found_with_slide_dir_or_named_in_one_line(monkeypatch, capsys, seg_copy, tmp_path) -> None:
    slide = tmp_path / "slides" / "digits.tif"
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    slide.rename(moved / slide.name)
    code, _, err = run_cli(monkeypatch, capsys, "view", str(seg_copy), "--export", str(tmp_path / "x"))
    assert code == 2
    one_line_error(err, str(seg_copy / "clusters.h5"), "moved since segmentation", "--slide-dir")
    (view,) = load_views([seg_copy], slide_dir=moved)
    assert view.slide_path == moved / slide.name
    Image.new("RGB", (100, 80)).save(moved / "other.png")
    with h5py.File(seg_copy / "clusters.h5", "r+") as f:
        f.attrs["slide_path"] = str(moved / "other.png")
    code, _, err = run_cli(monkeypatch, capsys, "view", str(seg_copy), "--export", str(tmp_path / "x"))
    one_line_error(err, "clusters.h5", "100 x 80 px", "not the same slide")


def test_bad_folders_are_one_line_errors(monkeypatch, capsys, seg_copy, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "view", str(empty))
    assert code == 2
    one_line_error(err, str(empty), "no segmentation outputs")
    code, _, err = run_cli(monkeypatch, capsys, "view", str(tmp_path / "missing"))
    one_line_error(err, "missing", "not found")
    with h5py.File(seg_copy / "clusters.h5", "r+") as f:
        f.attrs["slide_path"] = ""
    code, _, err = run_cli(monkeypatch, capsys, "view", str(seg_copy))
    one_line_error(err, "clusters.h5", "records no slide")
    (seg_copy / "clusters.h5").write_bytes(b"not hdf5")
    code, _, err = run_cli(monkeypatch, capsys, "view", str(seg_copy))
    one_line_error(err, "clusters.h5", "not a readable segmentation file")
    code, _, err = run_cli(monkeypatch, capsys, "view", str(seg_copy), "--port", "70000")
    one_line_error(err, "--port")
