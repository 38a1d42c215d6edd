"""Real segmentation outputs of the digit slide (a run trained for a few steps, then `segment_run`), shared by the
viewer's tests, and a headless Chromium (Debian's, driven by Playwright) for the browser tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import tiny_digit_config
from slide_fixtures import CELL

from pathoucc.config import config_from_dict
from pathoucc.options import SegmentOptions
from pathoucc.segment import segment_run
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import train_ucc

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


@pytest.fixture(scope="session")
def segmented(digit_slide, tmp_path_factory) -> dict:
    """``maps/digits/`` (clusters.h5, ...) of the 1024 x 1024 px digit slide with k = 4, and the run."""
    folder = tmp_path_factory.mktemp("view")
    tiles = tile_slide(digit_slide["slide"], folder / "tiles", patch_size=CELL, stride=CELL, level=0,
                       region_size=256, annotations=digit_slide["mask"], workers=1)
    cfg = config_from_dict(tiny_digit_config(tiles, CELL, steps=10, batch_size=256))
    train_ucc(cfg, folder / "run", progress=False)
    segment_run(folder / "run", [tiles], out=folder / "maps", options=SegmentOptions(k=4, device="cpu"))
    return {"maps": folder / "maps", "folder": folder / "maps" / "digits", "run": folder / "run",
            "slide": Path(digit_slide["slide"]), "tiles": tiles}


@pytest.fixture()
def seg_copy(segmented, tmp_path) -> Path:
    """A copy of the segmentation folder (and of its slide, which the copy's clusters.h5 points at) to change."""
    import h5py

    folder = tmp_path / "maps" / "digits"
    shutil.copytree(segmented["folder"], folder)
    slide = tmp_path / "slides" / segmented["slide"].name
    slide.parent.mkdir()
    shutil.copy(segmented["slide"], slide)
    with h5py.File(folder / "clusters.h5", "r+") as f:
        f.attrs["slide_path"] = str(slide)
    return folder


def chromium_path() -> str:
    """Debian's Chromium; its absence is a failure (CI installs it: .ci/run), never a skip."""
    for path in CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium")
    assert found, "Chromium is not installed: apt-get install chromium (.ci/run does)"
    return found


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium page factory (Playwright driving Debian's Chromium)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--force-color-profile=srgb"])
        yield b
        b.close()
