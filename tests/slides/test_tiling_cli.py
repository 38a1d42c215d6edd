import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_tile
from slide_fixtures import CELL, GRID

from pathoucc.slides.tilefile import open_tiles


def test_cli_tiles_the_digit_slide_with_its_mask(digit_slide, tmp_path):
    out = tmp_path / "tiles"
    proc = run_tile(digit_slide["slide"], "--out", out, "--patch-size", CELL, "--stride", CELL, "--level", 0,
                    "--region-size", 256, "--mask", digit_slide["mask"], "--workers", 2)
    assert proc.returncode == 0, proc.stderr
    tiles = open_tiles(out / "digits.h5")
    assert tiles.num_patches == GRID[0] * GRID[1] and tiles.num_regions == 4
    assert (np.bincount(tiles.region) == 64).all()
    assert sorted(tiles.region_count.tolist()) == sorted(r["ucc"] for r in digit_slide["regions"])
    again = run_tile(digit_slide["slide"], "--out", out, "--patch-size", CELL, "--level", 0,
                     "--mask", digit_slide["mask"], "--region-size", 256)
    assert again.returncode == 0 and "skipped 1" in again.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "text", "unknown_class"])
def test_cli_bad_input_is_one_line_without_traceback(digit_slide, tmp_path, case):
    slide = tmp_path / f"{case}.svs"
    extra = []
    if case == "empty":
        slide.write_bytes(b"")
    elif case == "text":
        slide.write_text("just text\n")
    elif case == "unknown_class":
        slide = digit_slide["slide"]
        geojson = tmp_path / "labels.geojson"
        geojson.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
                           '{"type": "Polygon", "coordinates": [[[300, 300], [400, 300], [400, 400], [300, 300]]]},'
                           ' "properties": {"classification": {"name": "Mucus"}}}]}')
        extra = ["--geojson", geojson, "--classes", "Tumor,Stroma"]
    proc = run_tile(slide, "--out", tmp_path / "out", "--patch-size", 64, *extra)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert (geojson.name if case == "unknown_class" else slide.name) in lines[0]
    if case == "unknown_class":
        assert "'Mucus'" in lines[0]


def test_cli_batch_reports_bad_slides_and_tiles_the_rest(digit_slide, tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_text("nope")
    missing = tmp_path / "missing.tif"
    proc = run_tile(bad, digit_slide["slide"], missing, "--out", tmp_path / "out", "--patch-size", 64, "--level", 0)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "broken.svs" in lines[0] and "missing.tif" in lines[1]
    assert "Traceback" not in proc.stderr
    assert "tiled 1" in proc.stdout and "failed 2" in proc.stdout
    assert open_tiles(tmp_path / "out" / "digits.h5").num_patches == 64


def test_tile_help_groups_the_options_in_panels():
    proc = subprocess.run([sys.executable, "-m", "pathoucc.cli", "tile", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    panels = {}  # panel title -> the options listed in it
    for line in proc.stdout.splitlines():
        if line.startswith("╭─ "):
            title = line.removeprefix("╭─ ").rstrip("─╮ ")
            panels[title] = []
        elif line.startswith("│") and "<" in line:  # an option's row: names, then <type> and its help
            panels[title] += [word for word in line.split("<")[0].split() if word.startswith("--")]
    assert panels["Slides: a list, a shard"] == ["--slide-list", "--shard"]
    assert panels["Output"] == ["--out", "--compression", "--overwrite"]
    assert panels["Patches: size, level, reading"] == ["--patch-size", "--stride", "--level", "--magnification",
                                                       "--mpp", "--downsample", "--workers"]
    assert panels["Tissue"] == ["--tissue-threshold"]
    assert panels["Annotations: labels, counts"] == ["--region-size", "--mask", "--geojson", "--regions-csv",
                                                     "--classes", "--zero-is-background", "--no-zero-is-background"]
    assert "<gzip|lzf|none>" in proc.stdout  # the choice, listed
