"""The page in a real browser (headless Debian Chromium driven by Playwright), served and exported: the pixel over a
known patch has its cluster's colour, switching that cluster off (or the opacity to 0) removes it, the URL reopens
the same view, a click names the patch, and the scale bar follows the slide's mpp."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from pathoucc.view import Site, export_site, load_views
from pathoucc.view.server import serving

VIEWPORT = {"width": 1100, "height": 800}


@pytest.fixture(scope="module")
def site(segmented, tmp_path_factory):
    second = tmp_path_factory.mktemp("second") / "digits_b"
    shutil.copytree(segmented["folder"], second)
    s = Site(load_views([segmented["maps"], second]))
    yield s
    s.close()


@pytest.fixture(scope="module")
def url(site):
    with serving(site) as base:
        yield base


@pytest.fixture()
def page(browser):
    p = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    p.close()
    assert not errors, errors


def _settle(page) -> None:
    """Wait until every shown layer has its tiles and two frames have been drawn since."""
    page.wait_for_function("window.pathoucc && window.pathoucc.ready()", timeout=30_000)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _screen(page, x: float, y: float) -> tuple[float, float]:
    """Page px of level-0 slide point (x, y)."""
    return tuple(page.evaluate("""([x, y]) => {
        const v = window.pathoucc.viewer, item = v.world.getItemAt(0);
        const p = v.viewport.pixelFromPoint(item.imageToViewportCoordinates(x, y), true);
        const r = v.element.getBoundingClientRect();
        return [p.x + r.left, p.y + r.top]; }""", [x, y]))


def _pixel(page, xy: tuple[float, float]) -> np.ndarray:
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
    return shot[int(xy[1]), int(xy[0])]


def _known_patches(view) -> list[tuple[int, tuple[float, float]]]:
    """(cluster, level-0 centre) of the first patch of each cluster (stride = patch size: its map cell is its own)."""
    out: dict[int, tuple[float, float]] = {}
    for (x, y), c in zip(view.coords, view.clusters, strict=True):
        assert view.cluster_map[int(y // view.cell), int(x // view.cell)] == c
        out.setdefault(int(c), (x + view.extent / 2, y + view.extent / 2))
    return sorted(out.items())


def _check_colours_and_toggle(page, view) -> None:
    _settle(page)
    (c, xy), (other, other_xy) = _known_patches(view)[:2]
    at, at_other = _screen(page, *xy), _screen(page, *other_xy)
    colour = view.colors[c].astype(int)
    assert np.abs(_pixel(page, at) - colour).max() <= 2, (_pixel(page, at), colour)
    page.click(f'#legend input[data-cluster="{c}"]')
    _settle(page)
    assert np.abs(_pixel(page, at) - colour).max() > 40  # the slide shows through
    assert np.abs(_pixel(page, at_other) - view.colors[other]).max() <= 2  # the other cluster stays
    assert f"hide={c}" in page.evaluate("location.hash")


def test_served_page_shows_cluster_colours_and_toggles_them(page, url, site) -> None:
    page.goto(url + "#o=1")
    _check_colours_and_toggle(page, site.views[0])
    assert page.locator("#slides a").all_inner_texts() == ["digits", "digits_b"]
    legend = page.locator("#legend li").all_inner_texts()
    view = site.views[0]
    assert [t.split() for t in legend] == [["cluster", str(c), str(n)] for c, n in enumerate(view.counts)]


def test_exported_folder_shows_the_same(page, site, tmp_path) -> None:
    export_site(site, tmp_path / "export", workers=2)
    page.goto((tmp_path / "export" / "index.html").as_uri() + "#o=1")
    _check_colours_and_toggle(page, site.views[0])


def test_opacity_zero_shows_the_slide_alone(page, url, site) -> None:
    page.goto(url + "#o=1")
    _settle(page)
    (c, xy), *_ = _known_patches(site.views[0])
    at = _screen(page, *xy)
    page.evaluate("() => { const s = document.getElementById('opacity'); s.value = 0;"
                  " s.dispatchEvent(new Event('input')); }")
    _settle(page)
    assert np.abs(_pixel(page, at) - site.views[0].colors[c]).max() > 40 and "o=0" in page.evaluate("location.hash")


def test_the_url_reopens_the_same_view_and_slide(page, url, site) -> None:
    page.goto(url + "#slide=digits_b&x=300&y=420&z=2.5&o=0.75&hide=1,2")
    _settle(page)
    got = page.evaluate("""() => { const v = window.pathoucc.viewer, item = v.world.getItemAt(0);
        const c = item.viewportToImageCoordinates(v.viewport.getCenter(true));
        return [c.x, c.y, item.viewportToImageZoom(v.viewport.getZoom(true)), document.title,
                window.pathoucc.state.opacity, document.getElementById('opacity').value]; }""")
    assert got[0] == pytest.approx(300, abs=1) and got[1] == pytest.approx(420, abs=1)
    assert got[2] == pytest.approx(2.5, rel=1e-3) and got[3].startswith("digits_b") and got[4:] == [0.75, "75"]
    boxes = page.locator("#legend input").evaluate_all("bs => bs.map(b => b.checked)")
    assert boxes == [True, False, False, True]
    assert page.locator("#slides a.current").inner_text() == "digits_b"
    page.click('#slides a[data-slide="digits"]')  # another slide from the list
    _settle(page)
    assert "slide=digits&" in page.evaluate("location.hash") and page.title().startswith("digits ")


def test_a_click_names_the_patch_and_the_scale_bar_follows_mpp(page, url, site) -> None:
    view = site.views[0]
    page.goto(url + "#z=1.5&x=512&y=512")
    _settle(page)
    page.wait_for_function("window.pathoucc.patchesLoaded()")
    (c, (x, y)), *_ = _known_patches(view)
    sx, sy = _screen(page, x, y)
    page.mouse.click(sx, sy)
    info = page.locator("#info").inner_text()
    i = int(np.flatnonzero((view.coords == [x - 16, y - 16]).all(1))[0])
    assert f"x {int(x - 16)}, y {int(y - 16)} px" in info and view.names[c] in info
    assert f"{view.distance[i]:.4f}" in info and "distance to centre" in info
    bar = page.evaluate("[parseFloat(document.getElementById('scalebar-bar').style.width),"
                        " document.getElementById('scalebar-label').textContent]")
    micrometres = float(bar[1].split()[0]) * (1000 if bar[1].endswith("mm") else 1)
    assert bar[1].endswith(("µm", "mm")) and micrometres / (view.mpp / 1.5) == pytest.approx(bar[0], abs=1.5)
