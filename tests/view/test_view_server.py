"""The server over real HTTP (uvicorn on a free loopback port): read-only, 4xx for anything outside the site,
410 for a slide gone while serving, a port in use named in one line; and the static export, resumable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from helpers import one_line_error, run_cli

from pathoucc.view import Site, export_site, load_views
from pathoucc.view.export import MANIFEST
from pathoucc.view.server import serving


@pytest.fixture(scope="module")
def site(segmented):
    s = Site(load_views([segmented["maps"]]))
    yield s
    s.close()


def _raw_get(url: str, path: str) -> int:
    """Status of a request whose path is sent exactly as given (no client-side normalisation)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096).decode("latin-1")
    return int(head.split()[1])


def test_serves_the_page_data_and_tiles_read_only(site) -> None:
    with serving(site) as url, httpx.Client(base_url=url) as client:
        assert url.startswith("http://127.0.0.1:")
        page = client.get("/")
        assert page.status_code == 200 and "openseadragon.min.js" in page.text and "viewer.js" in page.text
        for path in ("assets/viewer.js", "assets/openseadragon/openseadragon.min.js",
                     "assets/openseadragon/LICENSE.txt", "assets/openseadragon/images/home_rest.png",
                     "data/slides.js", "data/digits/patches.js"):
            assert client.get(path).status_code == 200, path
        tile = client.get("data/digits/slide_files/10/0_0.jpeg")
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
        assert tile.content[:3] == b"\xff\xd8\xff" and "max-age" in tile.headers["cache-control"]
        assert client.head("data/digits/cluster0_files/5/0_0.png").status_code == 200
        for method in ("POST", "PUT", "DELETE"):
            assert client.request(method, "data/slides.js").status_code == 405


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/assets/../../sources.py", "/assets/%2e%2e/sources.py", "/assets/..%2fsources.py",
    "/%2fetc%2fpasswd", "//etc/passwd", "/data/digits/clusters.h5", "/data/digits/slide_files/10/0_0.jpeg%00",
    "/data/digits/slide_files/10/-1_0.jpeg", "/data/digits/slide_files/10/0_0", "/data/digits/slide_files/abc",
    "/data/digits/slide_files/12/0_0.jpeg", "/data/digits/slide_files/10/99999999_0.jpeg", "/assets\\..\\x"])
def test_outside_the_site_or_malformed_is_404(site, path) -> None:
    with serving(site) as url:
        assert _raw_get(url, path) == 404


def test_a_slide_gone_while_serving_is_410(seg_copy, tmp_path) -> None:
    site = Site(load_views([seg_copy]), cache_bytes=0)
    try:
        slide = site.views[0].slide_path
        with serving(site) as url, httpx.Client(base_url=url) as client:
            assert client.get("data/digits/slide_files/10/1_1.jpeg").status_code == 200
            slide.write_bytes(slide.read_bytes()[:2000])  # truncated in place: the open slide can no longer read
            answer = client.get("data/digits/slide_files/10/3_3.jpeg")
            assert answer.status_code == 410 and "can no longer be read" in answer.text
            assert "Traceback" not in answer.text and len(answer.text.splitlines()) == 1
    finally:
        site.close()


def test_port_in_use_is_one_line(monkeypatch, capsys, segmented) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run_cli(monkeypatch, capsys, "view", str(segmented["maps"]), "--port", str(port))
    assert code == 2
    one_line_error(err, f"127.0.0.1:{port}", "port in use")


def test_export_is_complete_atomic_and_resumes(site, tmp_path) -> None:
    out = tmp_path / "export"
    report = export_site(site, out, workers=2)
    tiles = site.tile_paths()
    assert report.rendered == len(tiles) and report.resumed == 0
    assert all((out / p).is_file() for p in [*site.paths(), *tiles])
    assert (out / "data/digits/slide_files/10/0_0.jpeg").read_bytes() == site.get(
        "data/digits/slide_files/10/0_0.jpeg")[0]
    assert not out.with_name("export.partial").exists()
    # an export interrupted half-way: its finished tiles are kept, the rest rendered, then swapped in
    partial = out.with_name("export.partial")
    os.replace(out, partial)
    for p in tiles[len(tiles) // 2:]:
        (partial / p).unlink()
    (partial / "data/digits/slide_files/10/.0_0.jpeg.tmp").write_bytes(b"half a tile")
    out.mkdir()
    (out / MANIFEST).write_text("{}")  # the previous export, to be replaced
    kept = (partial / tiles[0]).stat().st_mtime_ns
    time.sleep(0.01)
    report = export_site(site, out, workers=2)
    assert report.resumed == len(tiles) // 2 and report.rendered == len(tiles) - len(tiles) // 2
    assert (out / tiles[0]).stat().st_mtime_ns == kept and all((out / p).is_file() for p in tiles)
    assert not list(out.rglob(".*.tmp")) and not partial.exists()


def test_export_refuses_a_folder_that_is_not_an_export(monkeypatch, capsys, segmented, tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run_cli(monkeypatch, capsys, "view", str(segmented["maps"]), "--export", str(tmp_path / "mine"))
    assert code == 2
    one_line_error(err, "mine", "not an export")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    code, out, err = run_cli(monkeypatch, capsys, "view", str(segmented["maps"]), "--export", str(tmp_path / "new"))
    assert code == 0, err
    assert "exported 1 slide(s)" in out and (tmp_path / "new" / "index.html").is_file()


def test_the_command_serves_until_interrupted(segmented) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pathoucc.cli", "view", str(segmented["maps"]), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 1 slide(s) at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert httpx.get(url + "data/slides.js").status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
