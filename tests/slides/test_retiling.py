"""Re-tiling is safe (issue 8 item 4): tiles record their inputs, stale tiles are replaced, orphans removed."""

import json
import os
import shutil

import h5py
import pytest
from helpers import run_tile

from pathoucc.errors import PathouccError
from pathoucc.slides.outputs import output_lock
from pathoucc.slides.tilefile import open_tiles
from pathoucc.slides.tiler import tile_slide, tile_slides

OPTIONS = {"patch_size": 64, "level": 0}


def region(ucc):
    ring = [[256, 256], [512, 256], [512, 512], [256, 512], [256, 256]]
    return json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                       "properties": {"ucc": ucc}})


def test_tiles_record_their_inputs_and_are_replaced_when_they_change(digit_slide, tmp_path):
    slide = tmp_path / "slides" / "digits.tif"
    slide.parent.mkdir()
    shutil.copy(digit_slide["slide"], slide)
    geojson = tmp_path / "regions.geojson"
    geojson.write_text(region(2))
    out = tmp_path / "tiles"
    path = tile_slide(slide, out, annotations=geojson, **OPTIONS)
    with h5py.File(path) as f:
        inputs = json.loads(f.attrs["inputs"])
    assert inputs["slide"]["path"] == str(slide.resolve()) and inputs["slide"]["size"] == slide.stat().st_size
    assert inputs["annotations"]["kind"] == "geojson" and len(inputs["annotations"]["sha256"]) == 64
    assert inputs["options"]["patch_size"] == 64 and inputs["options"]["stride"] == 64
    assert "workers" not in inputs["options"]

    def again(**changes):
        return tile_slides([slide], out, annotations=geojson, **{**OPTIONS, **changes})

    report = again(workers=1)  # same inputs (the number of reader threads changes nothing)
    assert report.skipped == [path] and not report.written and not report.retiled
    os.utime(slide)  # a new modification time alone is no change
    assert again().skipped == [path]
    geojson.write_text(region(3))
    report = again()
    assert report.written == [path] and report.retiled == [(path, "the annotation file changed (regions.geojson)")]
    assert open_tiles(path).region_count.tolist() == [3]
    report = again(tissue_threshold=0.9, region_size=1024)
    assert report.retiled == [(path, "region_size 512 -> 1024; tissue_threshold 0.5 -> 0.9")]
    report = tile_slides([slide], out, tissue_threshold=0.9, region_size=1024, **OPTIONS)
    assert report.retiled == [(path, "annotations removed")] and open_tiles(path).region is None
    data = bytearray(slide.read_bytes())  # same size, other pixels: the digest sees it
    data[-100:] = bytes(100)
    slide.write_bytes(bytes(data))
    report = tile_slides([slide], out, tissue_threshold=0.9, region_size=1024, **OPTIONS)
    assert report.retiled == [(path, "the slide file changed")]
    with h5py.File(path, "a") as f:  # a file from before the record existed
        del f.attrs["inputs"]
    report = tile_slides([slide], out, tissue_threshold=0.9, **OPTIONS)
    assert report.retiled == [(path, "it does not record what made it (written by an older pathoucc)")]


def test_cli_says_what_was_retiled(digit_slide, tmp_path):
    out = tmp_path / "tiles"
    first = run_tile(digit_slide["slide"], "--out", out, "--patch-size", 64, "--level", 0)
    assert first.returncode == 0 and "tiled 1, skipped 0" in first.stdout
    same = run_tile(digit_slide["slide"], "--out", out, "--patch-size", 64, "--level", 0, "--stride", 64)
    assert same.returncode == 0 and "tiled 0, skipped 1 (up to date)" in same.stdout
    other = run_tile(digit_slide["slide"], "--out", out, "--patch-size", 64, "--level", 0, "--tissue-threshold", 0.2)
    assert other.returncode == 0, other.stderr
    assert "re-tiled digits.h5: tissue_threshold 0.5 -> 0.2" in other.stdout and "tiled 1, skipped 0" in other.stdout


def test_orphans_of_a_killed_run_are_removed_by_the_next_run(digit_slide, tmp_path):
    out = tmp_path / "tiles"
    out.mkdir()
    orphans = [out / ".digits.h5.k2j3h4.tmp", out / ".digits_tissue.png.abc.tmp"]
    others = [out / ".other.h5.k2j3h4.tmp", out / ".digits.h5x.abc.tmp", out / "digits.h5.tmp"]
    for p in orphans + others:
        p.write_bytes(b"half a file")
    report = tile_slides([digit_slide["slide"]], out, **OPTIONS)
    assert report.written and sorted(report.orphans) == sorted(orphans)
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in others)
    (out / ".digits.h5.again.tmp").write_bytes(b"")
    report = tile_slides([digit_slide["slide"]], out, **OPTIONS)  # also when the output is up to date
    assert report.skipped and report.orphans == [out / ".digits.h5.again.tmp"]
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == sorted(p.name for p in others)


def test_a_second_writer_of_the_same_output_is_refused(digit_slide, tmp_path):
    out = tmp_path / "tiles"
    out.mkdir()
    (out / ".digits.h5.live.tmp").write_bytes(b"being written")
    with output_lock(out / "digits.h5"):
        with pytest.raises(PathouccError, match="is being tiled by another process") as err:
            tile_slide(digit_slide["slide"], out, **OPTIONS)
        assert "digits.h5" in str(err.value)
        assert (out / ".digits.h5.live.tmp").exists()  # a live writer's temporary file is left alone
    assert not (out / ".digits.h5.lock").exists()
    tile_slide(digit_slide["slide"], out, **OPTIONS)
    assert not (out / ".digits.h5.live.tmp").exists()
