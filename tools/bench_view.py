"""Benchmark `pathoucc view` on a generated 100 000 x 100 000 px pyramidal slide, and take the docs' screenshots.

1. writes the slide (laid out as tools/pyramid.py does: 256-px zlib tiles; tissue blobs, 6 % of the area,
   textured with the real H&E crop of tests/assets, white glass elsewhere; mpp 0.25) and a segmentation of it in
   the layout of ``pathoucc segment``
   (``clusters.h5``: 224-px patches at stride 112 over the tissue, k = 6 clusters from a smooth random field —
   generated, not inferred: the viewer's speed does not depend on where the clusters came from);
2. starts ``pathoucc view`` in its own process and measures, from a local client with ``--concurrency`` requests
   in flight, the latency of 256-px slide and cluster tiles never requested before (rendered) and requested again
   (cached): p50 / p95 / p99;
3. a bounded load test: ``--requests`` random tile requests, counting errors and sampling the server's RSS;
4. first paint in headless Chromium (Playwright): navigation start to the first tile drawn and to every tile of the
   first view loaded, ``--paints`` fresh pages;
5. with ``--screenshots DIR`` (instead of 1-4): the page over the digit slide of ``--digits`` (a
   ``pathoucc segment`` output folder) at two zoom levels.

    nice -n 10 python tools/bench_view.py --work /tmp/bench_view --out docs/results/view-100k.json
    python tools/bench_view.py --digits maps/digits --screenshots docs/img

Needs the ``test`` extra (tifffile, playwright, httpx) and Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import httpx
import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from pyramid import pyramid_downsamples  # noqa: E402
from repo_paths import relative  # noqa: E402

from pathoucc.files import atomic_path  # noqa: E402
from pathoucc.view.dzi import DziGeometry  # noqa: E402

SIZE = 100_000
PATCH, STRIDE, K = 224, 112, 6
HE = ROOT / "tests" / "assets" / "he_crop_256.png"
MACHINE = "2 vCPU x86_64, no GPU, 24 GB"


def tissue_mask(shape: tuple[int, int], seed: int = 0, coverage: float = 0.06) -> np.ndarray:
    """(h, w) bool: smooth random blobs covering ``coverage`` of the slide."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), min(shape) / 25)
    return field > np.quantile(field, 1 - coverage)


def make_slide(path: Path) -> tuple[Path, np.ndarray, int]:
    """The 100 000^2 px slide; returns it, its tissue mask (1 px per ``scale`` level-0 px) and ``scale``.

    Laid out as tools/pyramid.py writes pyramids (one page per level, 256-px zlib tiles, resolution for the mpp),
    but every tile of the finer levels is one of five (four rotations of the H&E crop, white glass) compressed once
    and written as bytes: 10^10 px through zlib would take longer than the benchmark itself.
    """
    import tifffile

    scale = 1000
    mask = tissue_mask((SIZE // scale, SIZE // scale))
    he = np.asarray(Image.open(HE).convert("RGB").resize((256, 256)))
    encoded = [zlib.compress(np.ascontiguousarray(np.rot90(he, r)).tobytes()) for r in range(4)]
    white = zlib.compress(np.full((256, 256, 3), 255, np.uint8).tobytes())

    def tiles(d: int, w: int, h: int):
        for y in range(0, h, 256):
            for x in range(0, w, 256):
                if d * 256 > 2 * scale:  # a tile wider than two mask pixels: drawn pixel by pixel
                    xs = np.minimum((np.arange(x, x + 256) * d) // scale, mask.shape[1] - 1)
                    ys = np.minimum((np.arange(y, y + 256) * d) // scale, mask.shape[0] - 1)
                    pixels = np.where(mask[np.ix_(ys, xs)][..., None], he, 255).astype(np.uint8)
                    yield zlib.compress(pixels.tobytes())
                    continue
                cx, cy = min(SIZE - 1, (x + 128) * d) // scale, min(SIZE - 1, (y + 128) * d) // scale
                yield encoded[(x // 256 + y // 256) % 4] if mask[cy, cx] else white

    if not path.exists():
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k, d in enumerate(pyramid_downsamples((SIZE, SIZE))):
                w, h = SIZE // d, SIZE // d
                tw.write(tiles(d, w, h), shape=(h, w, 3), dtype=np.uint8, tile=(256, 256), photometric="rgb",
                         compression="zlib", subfiletype=0 if k == 0 else 1, metadata=None, software="pathoucc",
                         resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    return path, mask, scale


def make_segmentation(folder: Path, slide: Path, mask: np.ndarray, scale: int) -> Path:
    """``folder/clusters.h5`` in the layout ``pathoucc segment`` writes, with generated clusters."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = -(-SIZE // STRIDE)
    ys, xs = np.mgrid[0:cells, 0:cells] * STRIDE
    inside = mask[np.minimum(ys // scale, mask.shape[0] - 1), np.minimum(xs // scale, mask.shape[1] - 1)]
    field = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(cells, cells, K)), (12, 12, 0))
    cluster_map = np.where(inside, field.argmax(2), -1).astype(np.int16)
    rows, cols = np.nonzero(cluster_map >= 0)
    coords = np.column_stack([cols, rows]).astype(np.int64) * STRIDE
    clusters = cluster_map[rows, cols].astype(np.int64)
    distances = np.random.default_rng(2).random((len(coords), K)).astype(np.float32)
    with h5py.File(folder / "clusters.h5", "w") as f:
        f["coords"], f["cluster"], f["distances"] = coords, clusters, distances
        m = f.create_dataset("map", data=cluster_map, compression="gzip")
        m.attrs["cell"], m.attrs["span"] = float(STRIDE), PATCH // STRIDE
        for key, value in {"k": K, "slide_path": str(slide), "slide_dimensions": [SIZE, SIZE],
                           "patch_size": PATCH, "stride": STRIDE, "downsample": 1.0}.items():
            f.attrs[key] = value
    return folder


def start_server(folders: list[Path], port: int, cache_mb: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pathoucc.cli", "view", *map(str, folders), "--port", str(port),
           "--cache-mb", str(cache_mb)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"the server did not start: {line}{proc.stdout.read()}")
    return proc


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tile_urls(sid: str, n: int, seed: int, mask: np.ndarray, scale: int, cluster_levels: int = 3) -> list[str]:
    """``n`` distinct random 256-px tiles: slide tiles over tissue in the finest 4 levels and cluster tiles, 4 : 1."""
    rng = random.Random(seed)
    geo = DziGeometry(SIZE, SIZE)
    cgeo = DziGeometry(-(-SIZE // STRIDE), -(-SIZE // STRIDE))
    out: set[str] = set()
    while len(out) < n:
        if rng.random() < 0.8:
            level = geo.max_level - rng.randrange(4)
            cols, rows = geo.tiles(level)
            c, r, d = rng.randrange(cols), rng.randrange(rows), 2 ** (geo.max_level - level)
            if mask[min(SIZE - 1, (r * 254 + 127) * d) // scale, min(SIZE - 1, (c * 254 + 127) * d) // scale]:
                out.add(f"data/{sid}/slide_files/{level}/{c}_{r}.jpeg")
        else:
            level = cgeo.max_level - rng.randrange(cluster_levels)
            cols, rows = cgeo.tiles(level)
            out.add(f"data/{sid}/cluster{rng.randrange(K)}_files/{level}/{rng.randrange(cols)}_"
                    f"{rng.randrange(rows)}.png")
    return sorted(out, key=lambda _: rng.random())


def fetch_all(base: str, urls: list[str], concurrency: int) -> tuple[np.ndarray, int]:
    """Latencies (ms) of GETting ``urls`` with ``concurrency`` in flight, and the number of non-200 answers."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base, limits=limits, timeout=30) as client:
        def one(url: str) -> tuple[float, int]:
            t = time.perf_counter()
            r = client.get(url)
            return (time.perf_counter() - t) * 1000, r.status_code

        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, urls))
    return np.array([r[0] for r in results]), sum(r[1] != 200 for r in results)


def service_cpu(folder: Path, mask: np.ndarray, scale: int, n: int = 300) -> dict:
    """CPU ms per tile rendered in this process, one at a time, no cache (what a request costs on an idle CPU)."""
    from pathoucc.view import Site, load_views

    site = Site(load_views([folder]), cache_bytes=0)
    urls = tile_urls(folder.name, n, 11, mask, scale)
    out = {}
    for kind in ("slide_files", "cluster"):
        chosen = [u for u in urls if kind in u]
        t, w = time.process_time(), time.perf_counter()
        for u in chosen:
            site.get(u)
        out[kind.removesuffix("_files")] = {"n": len(chosen), "cpu_ms": round((time.process_time() - t) / len(chosen)
                                                                                * 1000, 2),
                                            "wall_ms": round((time.perf_counter() - w) / len(chosen) * 1000, 2)}
    site.close()
    return out


def percentiles(ms: np.ndarray) -> dict:
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def load_test(base: str, pid: int, sid: str, requests: int, concurrency: int, mask: np.ndarray, scale: int) -> dict:
    urls = tile_urls(sid, requests, 7, mask, scale)
    samples, errors, all_ms = [], 0, []
    for start in range(0, requests, 1000):
        ms, bad = fetch_all(base, urls[start:start + 1000], concurrency)
        errors += bad
        all_ms.append(ms)
        samples.append(round(rss_mib(pid), 1))
    return {"requests": requests, "concurrency": concurrency, "errors": errors,
            "rss_mib_every_1000": samples, **percentiles(np.concatenate(all_ms))}


def first_paint(base: str, paints: int, hash_: str = "") -> list[dict]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        for _ in range(paints):
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(base + hash_)
            page.wait_for_function("window.pathoucc && window.pathoucc.state.times.loaded !== undefined",
                                   timeout=60_000)
            t = page.evaluate("window.pathoucc.state.times")
            out.append({"first_tile_ms": round(t["firstTile"]), "all_tiles_ms": round(t["loaded"])})
            context.close()
        browser.close()
    return out


def screenshots(base: str, out_dir: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    names = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        for name, hash_ in (("view-digits-whole.png", "#o=0.5"),
                            ("view-digits-zoom.png", "#x=470&y=420&z=4&o=0.35")):
            page.goto(base + hash_)
            page.wait_for_function("window.pathoucc && window.pathoucc.ready() && window.pathoucc.patchesLoaded()",
                                   timeout=60_000)
            if "zoom" in name:  # a click shows the patch under the pointer
                page.mouse.click(260 + 510, 400)
            page.wait_for_timeout(300)
            page.screenshot(path=str(out_dir / name))
            names.append(str(out_dir / name))
        browser.close()
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_view"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "view-100k.json")
    ap.add_argument("--port", type=int, default=8771)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency-requests", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--cache-mb", type=int, default=64)
    ap.add_argument("--paints", type=int, default=5)
    ap.add_argument("--digits", type=Path, help="a `pathoucc segment` output folder of the digit slide")
    ap.add_argument("--screenshots", type=Path, help="folder for the page's screenshots (with --digits)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"command": "nice -n 10 python " + " ".join([relative(Path(__file__)), *sys.argv[1:]]),
                    "machine": MACHINE, "date": datetime.date.today().isoformat()}
    if args.screenshots:
        proc = start_server([args.digits], args.port + 1, 64)
        try:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            result["screenshots"] = [relative(Path(p)) for p in screenshots(f"http://127.0.0.1:{args.port + 1}/",
                                                                              args.screenshots)]
        finally:
            proc.terminate()
            proc.wait()
        print(json.dumps(result, indent=2))
        return
    t = time.perf_counter()
    slide, mask, scale = make_slide(args.work / "slide-100k.tif")
    folder = make_segmentation(args.work / "maps" / "slide-100k", slide, mask, scale)
    result["slide"] = {"size": [SIZE, SIZE], "file_mib": round(slide.stat().st_size / 2**20, 1),
                       "patches": int(h5py.File(folder / "clusters.h5")["coords"].shape[0]),
                       "prepared_s": round(time.perf_counter() - t, 1)}
    result["load_average_1min_before"] = round(os.getloadavg()[0], 1)
    result["service_per_tile"] = service_cpu(folder, mask, scale)
    proc = start_server([folder], args.port, args.cache_mb)
    base = f"http://127.0.0.1:{args.port}/"
    try:
        result["server_rss_mib_idle"] = round(rss_mib(proc.pid), 1)
        urls = tile_urls("slide-100k", args.latency_requests, 3, mask, scale)
        cold, bad_cold = fetch_all(base, urls, args.concurrency)
        warm, bad_warm = fetch_all(base, urls, args.concurrency)
        slide_cold = np.array([ms for u, ms in zip(urls, cold, strict=True) if "slide_files" in u])
        result["latency"] = {"concurrency": args.concurrency, "errors": bad_cold + bad_warm,
                             "rendered": percentiles(cold), "rendered_slide_only": percentiles(slide_cold),
                             "cached": percentiles(warm)}
        result["first_paint"] = first_paint(base, args.paints)
        result["load_test"] = load_test(base, proc.pid, "slide-100k", args.requests, args.concurrency, mask, scale)
    finally:
        proc.terminate()
        proc.wait()
    result["load_average_1min_after"] = round(os.getloadavg()[0], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
