"""The viewer as a read-only tree of files, the same for the server and the static export:

* ``index.html`` (the page) and ``assets/...`` (its script, style and OpenSeadragon, from the package);
* ``data/slides.js``: every slide's size, mpp, DZI descriptors and clusters (colour, name, patch count);
* ``data/<id>/patches.js``: the cluster map and the patches (level-0 top-left, cluster, distance to the centre);
* ``data/<id>/slide.dzi`` + ``slide_files/<L>/<C>_<R>.jpeg``, ``cluster<k>.dzi`` + ``cluster<k>_files/<L>/<C>_<R>.png``.

:meth:`Site.get` answers a path from a fixed set of names and patterns only (no path is ever joined onto a folder),
so ``..``, absolute paths and symlinks cannot reach a file outside the package's assets. Tiles are kept in an
LRU cache of at most ``cache_bytes`` encoded bytes.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from pathoucc.view.dzi import ClusterPyramid, SlidePyramid, TileAddressError
from pathoucc.view.sources import SlideView

__all__ = ["ASSETS", "MEDIA_TYPES", "Site", "SiteError"]

ASSETS = Path(__file__).with_name("assets")
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".png": "image/png", ".jpeg": "image/jpeg",
               ".dzi": "application/xml", ".txt": "text/plain; charset=utf-8", ".map": "application/json"}
_TILE = re.compile(r"data/([A-Za-z0-9][A-Za-z0-9._-]{0,99})/(slide|cluster\d{1,4})_files/(\d{1,3})/(\d{1,7})_(\d{1,7})"
                   r"\.(jpeg|png)")
_DZI = re.compile(r"data/([A-Za-z0-9][A-Za-z0-9._-]{0,99})/(slide|cluster\d{1,4})\.dzi")
_PATCHES = re.compile(r"data/([A-Za-z0-9][A-Za-z0-9._-]{0,99})/patches\.js")


class SiteError(Exception):
    """A request the site cannot answer: ``status`` (404 unknown, 410 slide gone) and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class _Slide:
    view: SlideView
    layers: dict[str, SlidePyramid | ClusterPyramid]


def _assets(root: Path) -> dict[str, Path]:
    """``assets/<relative path>`` -> file, for the regular files inside ``root`` (symlinks are left out)."""
    root = root.resolve()
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix not in MEDIA_TYPES:
            continue
        if path.resolve().is_relative_to(root) and not any(p.is_symlink() for p in path.parents if p != root):
            out["assets/" + path.relative_to(root).as_posix()] = path
    return out


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()


class Site:
    """The files of the viewer for ``views``, rendered on request (and cached)."""

    def __init__(self, views: list[SlideView], cache_bytes: int = 256 << 20, assets: Path = ASSETS) -> None:
        self.views = views
        self._slides = {v.id: _Slide(v, {"slide": SlidePyramid(str(v.slide_path)), **{
            f"cluster{c}": ClusterPyramid(v.cluster_map, c, v.colors[c]) for c in range(v.k)}}) for v in views}
        self._assets = _assets(assets)
        self._cache: LRUCache | None = LRUCache(cache_bytes, getsizeof=len) if cache_bytes > 0 else None
        self._lock = threading.Lock()
        self._scripts: dict[str, bytes] = {}

    def close(self) -> None:
        for s in self._slides.values():
            s.layers["slide"].close()

    def get(self, path: str) -> tuple[bytes, str]:
        """(content, media type) of the file at ``path`` (relative, ``/``-separated); :class:`SiteError` if none."""
        path = path.lstrip("/") or "index.html"
        if path == "index.html":
            return self._asset("assets/index.html"), MEDIA_TYPES[".html"]
        if path in self._assets:
            return self._asset(path), MEDIA_TYPES[Path(path).suffix]
        if path == "data/slides.js":
            return self._script(path, self.slides_js), MEDIA_TYPES[".js"]
        if m := _PATCHES.fullmatch(path):
            view = self._slide(m[1]).view
            return self._script(path, lambda: self.patches_js(view)), MEDIA_TYPES[".js"]
        if m := _DZI.fullmatch(path):
            layer = self._layer(m[1], m[2])
            return layer.geometry.xml(layer.fmt).encode(), MEDIA_TYPES[".dzi"]
        if m := _TILE.fullmatch(path):
            return self.tile(m[1], m[2], int(m[3]), int(m[4]), int(m[5]), m[6]), MEDIA_TYPES["." + m[6]]
        raise SiteError(404, "not found")

    def _script(self, path: str, make: Callable[[], str]) -> bytes:
        """A data script, made once (they never change while the site exists)."""
        with self._lock:
            if path not in self._scripts:
                self._scripts[path] = make().encode()
            return self._scripts[path]

    def _asset(self, key: str) -> bytes:
        try:
            return self._assets[key].read_bytes()
        except (KeyError, OSError):
            raise SiteError(404, "not found") from None

    def _slide(self, sid: str) -> _Slide:
        if sid not in self._slides:
            raise SiteError(404, f"no slide {sid!r}")
        return self._slides[sid]

    def _layer(self, sid: str, name: str) -> SlidePyramid | ClusterPyramid:
        layers = self._slide(sid).layers
        if name not in layers:
            raise SiteError(404, f"no layer {name!r} for slide {sid!r}")
        return layers[name]

    def cached(self, path: str) -> tuple[bytes, str] | None:
        """(content, media type) of a tile already in the cache, else None (never renders; cheap)."""
        m = _TILE.fullmatch(path.lstrip("/"))
        if m is None or self._cache is None:
            return None
        with self._lock:
            hit = self._cache.get((m[1], m[2], int(m[3]), int(m[4]), int(m[5])))
        return None if hit is None or not path.endswith(f".{self._layer(m[1], m[2]).fmt}") else (
            hit, MEDIA_TYPES["." + m[6]])

    def tile(self, sid: str, layer_name: str, level: int, col: int, row: int, fmt: str) -> bytes:
        """One encoded tile, from the cache or rendered now."""
        layer = self._layer(sid, layer_name)
        if fmt != layer.fmt:
            raise SiteError(404, f"{layer_name} tiles are .{layer.fmt}")
        key = (sid, layer_name, level, col, row)
        if self._cache is not None:
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None:
                return hit
        try:
            data = layer.tile(level, col, row)
        except TileAddressError as exc:
            raise SiteError(404, str(exc)) from None
        except OSError as exc:
            raise SiteError(410, f"the slide can no longer be read ({exc})") from None
        if self._cache is not None:
            with self._lock:
                self._cache[key] = data
        return data

    def slides_js(self) -> str:
        """``data/slides.js``: ``window.PATHOUCC_SLIDES = [...]``."""
        slides = []
        for s in self._slides.values():
            v, pyr = s.view, s.layers["slide"]
            clusters = [{"index": c, "name": v.names[c], "color": "#{:02x}{:02x}{:02x}".format(*v.colors[c]),
                         "count": int(v.counts[c]), "tiles": s.layers[f"cluster{c}"].geometry.descriptor(
                             f"data/{v.id}/cluster{c}_files/", "png")} for c in range(v.k)]
            slides.append({"id": v.id, "name": v.name, "width": v.dimensions[0], "height": v.dimensions[1],
                           "mpp": v.mpp, "cell": v.cell, "map_width": int(v.cluster_map.shape[1]),
                           "map_height": int(v.cluster_map.shape[0]), "patches": len(v.coords),
                           "tiles": pyr.geometry.descriptor(f"data/{v.id}/slide_files/", "jpeg"),
                           "clusters": clusters})
        return "window.PATHOUCC_SLIDES = " + json.dumps(slides) + ";\n"

    @staticmethod
    def patches_js(v: SlideView) -> str:
        """``data/<id>/patches.js``: the map (int16) and the patches (int32 coords, int16 cluster, float32
        distance), base64 little-endian, registered under the slide's id."""
        data = {"map": _b64(v.cluster_map, "<i2"), "coords": _b64(v.coords, "<i4"),
                "cluster": _b64(v.clusters, "<i2"), "extent": v.extent,
                "distance": None if v.distance is None else _b64(v.distance, "<f4")}
        return (f"(window.PATHOUCC_PATCHES = window.PATHOUCC_PATCHES || {{}})[{json.dumps(v.id)}] = "
                f"{json.dumps(data)};\n")

    def paths(self) -> list[str]:
        """Every file of the site (the export writes exactly these), tiles last."""
        out = ["index.html", *(k for k in self._assets if k != "assets/index.html"), "data/slides.js"]
        for sid, s in self._slides.items():
            out.append(f"data/{sid}/patches.js")
            out += [f"data/{sid}/{name}.dzi" for name in s.layers]
        return out

    def tile_paths(self) -> list[str]:
        """Every tile of every pyramid."""
        return [f"data/{sid}/{name}_files/{level}/{c}_{r}.{layer.fmt}" for sid, s in self._slides.items()
                for name, layer in s.layers.items() for level, c, r in layer.geometry.addresses()]
