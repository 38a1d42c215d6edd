"""Label maps to QuPath-importable GeoJSON: one (Multi)Polygon annotation per connected region of a label.

Outlines follow the pixel edges of the map exactly (no smoothing), with collinear vertices removed. Regions are
4-connected; a region touching itself only at a corner is traced as a shell with a hole touching it at that
point (valid in the OGC/JTS sense that QuPath uses), never as a self-touching ring. Exterior rings have
positive shoelace area in (x, y) as written, holes negative; every ring is closed (first point repeated).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from pathoucc.files import write_json

__all__ = ["label_features", "tile_features", "trace_rings", "write_feature_collection"]

Ring = list[tuple[int, int]]


def trace_rings(mask: np.ndarray) -> list[Ring]:
    """Closed boundary rings of the foreground of ``mask`` (h, w) bool, in pixel-corner coordinates (x, y).

    Vertex (x, y) is the top-left corner of pixel (row y, column x). Exterior rings come out with positive
    shoelace area, holes with negative. Rings are simple (no vertex twice); where two pixels touch only at a
    corner the outline passes across the corner, so shell and hole (or two holes) meet at that one point.
    """
    m = np.pad(np.asarray(mask, bool), 1)
    core = m[1:-1, 1:-1]
    r, c = np.nonzero(core & ~m[:-2, 1:-1])  # top edges: (c, r) -> (c + 1, r)
    starts = [np.stack([c, r], 1)]
    ends = [np.stack([c + 1, r], 1)]
    r, c = np.nonzero(core & ~m[1:-1, 2:])  # right: (c + 1, r) -> (c + 1, r + 1)
    starts.append(np.stack([c + 1, r], 1))
    ends.append(np.stack([c + 1, r + 1], 1))
    r, c = np.nonzero(core & ~m[2:, 1:-1])  # bottom: (c + 1, r + 1) -> (c, r + 1)
    starts.append(np.stack([c + 1, r + 1], 1))
    ends.append(np.stack([c, r + 1], 1))
    r, c = np.nonzero(core & ~m[1:-1, :-2])  # left: (c, r + 1) -> (c, r)
    starts.append(np.stack([c, r + 1], 1))
    ends.append(np.stack([c, r], 1))
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for s, e in zip(np.concatenate(starts).tolist(), np.concatenate(ends).tolist(), strict=True):
        out.setdefault((s[0], s[1]), []).append((e[0], e[1]))
    rings: list[Ring] = []
    while out:
        start = next(iter(out))
        first = out[start].pop()
        if not out[start]:
            del out[start]
        ring, prev, cur = [start], start, first
        while True:
            ends = out.get(cur, [])
            if cur == start and (not ends or _turn(prev, cur, [*ends, first]) == len(ends)):
                break  # back at the start, and the walk would continue along the first edge
            pick = _turn(prev, cur, ends)
            ring.append(cur)
            prev, cur = cur, ends.pop(pick)
            if not ends:
                del out[ring[-1]]
        rings.append(_simplify(ring))
    return rings


def _turn(prev: tuple[int, int], vertex: tuple[int, int], ends: list[tuple[int, int]]) -> int:
    """Which of the edges leaving ``vertex`` to follow: the only one, or at a pinch (two ways out, where two
    pixels of the region touch diagonally) the one that crosses over to the other pixel (negative cross product
    with the incoming edge), so a pinched loop becomes a shell plus a hole touching it at one point."""
    if len(ends) == 1:
        return 0
    dx, dy = vertex[0] - prev[0], vertex[1] - prev[1]
    return next(i for i, e in enumerate(ends) if dx * (e[1] - vertex[1]) - dy * (e[0] - vertex[0]) < 0)


def _simplify(ring: Ring) -> Ring:
    """Drop collinear vertices; return the ring closed (first vertex repeated)."""
    n = len(ring)
    keep = []
    for i in range(n):
        (ax, ay), (bx, by), (cx, cy) = ring[i - 1], ring[i], ring[(i + 1) % n]
        if (bx - ax) * (cy - by) - (by - ay) * (cx - bx) != 0:
            keep.append(ring[i])
    return [*keep, keep[0]]


def _area(ring: Ring) -> float:
    a = np.asarray(ring, np.float64)
    return 0.5 * float(np.sum(a[:-1, 0] * a[1:, 1] - a[1:, 0] * a[:-1, 1]))


def _inside(point: tuple[float, float], ring: Ring) -> bool:
    """Even-odd point-in-polygon test."""
    x, y = point
    a = np.asarray(ring, np.float64)
    x0, y0, x1, y1 = a[:-1, 0], a[:-1, 1], a[1:, 0], a[1:, 1]
    cross = (y0 > y) != (y1 > y)
    xs = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
    return bool(np.count_nonzero(cross & (x < xs)) % 2)


def _polygons(rings: list[Ring]) -> list[list[Ring]]:
    """Group rings into polygons: each exterior (positive area) with the holes it contains."""
    shells = [r for r in rings if _area(r) > 0]
    holes = [r for r in rings if _area(r) < 0]
    polys = [[s] for s in shells]
    for h in holes:
        # a point just inside the hole (next to its first edge, on the hole's interior side)
        (ax, ay), (bx, by) = h[0], h[1]
        mx, my = (ax + bx) / 2, (ay + by) / 2
        px, py = mx - 0.25 * np.sign(by - ay), my + 0.25 * np.sign(bx - ax)
        owners = [p for p in polys if _inside((px, py), p[0])]
        owner = min(owners, key=lambda p: _area(p[0])) if owners else polys[0]
        owner.append(h)
    return polys


def label_features(labels: np.ndarray, *, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
                   names: Sequence[str] | None = None, colors: Sequence[Sequence[int]] | None = None,
                   seed: str = "") -> list[dict]:
    """One GeoJSON Feature per 4-connected region of each label ``>= 0`` of ``labels`` (h, w) int.

    Pixel corner (x, y) maps to ``origin + scale * (x, y)`` (e.g. level-0 slide pixels). Features are QuPath
    annotations classified ``names[label]`` (default ``"cluster {label}"``) with ``colors[label]`` = (r, g, b).
    ``seed`` makes the feature ids (UUIDs) distinct across maps yet reproducible.
    """
    labels = np.asarray(labels)
    features = []
    four = ndimage.generate_binary_structure(2, 1)
    for value in np.unique(labels[labels >= 0]).tolist():
        components, _ = ndimage.label(labels == value, structure=four)
        for i, box in enumerate(ndimage.find_objects(components)):
            if box is None:
                continue
            rings = trace_rings(components[box] == i + 1)
            dx, dy = box[1].start, box[0].start
            polys = [[[_point(x + dx, y + dy, origin, scale) for x, y in ring] for ring in poly]
                     for poly in _polygons(rings)]
            geometry = ({"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1
                        else {"type": "MultiPolygon", "coordinates": polys})
            name = names[value] if names is not None else f"cluster {value}"
            props: dict = {"objectType": "annotation", "name": name, "classification": {"name": name}}
            if colors is not None:
                props["classification"]["color"] = [int(v) for v in colors[value][:3]]
            fid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathoucc:{seed}:{value}:{i}"))
            features.append({"type": "Feature", "id": fid, "geometry": geometry, "properties": props})
    return features


def tile_features(coords: np.ndarray, extent: float, clusters: np.ndarray, distances: np.ndarray,
                  names: Sequence[str], colors: Sequence[Sequence[int]], seed: str = "") -> list[dict]:
    """One QuPath ``tile`` object per patch: the square of side ``extent`` at level-0 top-left ``coords`` (N, 2),
    classified ``names[cluster]`` in ``colors[cluster]``, with measurements ``cluster distance`` (the squared
    feature distance to its cluster's centre, ``distances`` (N,)) and ``cluster`` (its index)."""
    features = []
    for i, ((x, y), c, d) in enumerate(zip(np.asarray(coords).tolist(), np.asarray(clusters).tolist(),
                                           np.asarray(distances, np.float64).tolist(), strict=True)):
        x1, y1 = x + extent, y + extent
        ring = [_point(x, y, (0, 0), 1), _point(x1, y, (0, 0), 1), _point(x1, y1, (0, 0), 1),
                _point(x, y1, (0, 0), 1), _point(x, y, (0, 0), 1)]
        props = {"objectType": "tile", "classification": {"name": names[c], "color": [int(v) for v in colors[c][:3]]},
                 "measurements": {"cluster distance": round(d, 6), "cluster": c}}
        features.append({"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathoucc:{seed}:tile:{i}")),
                         "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
    return features


def _point(x: float, y: float, origin: tuple[float, float], scale: float) -> list[float | int]:
    px, py = origin[0] + scale * x, origin[1] + scale * y
    return [int(px) if float(px).is_integer() else round(px, 3), int(py) if float(py).is_integer() else round(py, 3)]


def write_feature_collection(path: str | Path, features: list[dict]) -> None:
    """Write ``{"type": "FeatureCollection", "features": ...}`` atomically (QuPath: File → Import objects)."""
    write_json(path, {"type": "FeatureCollection", "features": features})
