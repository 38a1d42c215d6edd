"""GeoJSON geometries: the checked shapely shape of a count region, and the polygons of a dense class feature."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely
from shapely.validation import explain_validity

from pathoucc.errors import PathouccError

__all__ = ["class_polygons", "region_geometry"]

_QUOTE = 80  # characters of a bad value quoted in a message


def region_geometry(geometry: object, fail: Callable[[str], PathouccError]) -> shapely.Polygon | shapely.MultiPolygon:
    """The valid (Multi)Polygon of a count region's GeoJSON ``geometry``; ``fail(problem)`` makes the error."""
    if not isinstance(geometry, dict):
        raise fail("has no geometry")
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coordinates]
    elif kind == "MultiPolygon":
        if not isinstance(coordinates, list) or not coordinates:
            raise fail("MultiPolygon coordinates must be a non-empty list of polygons")
        polygons = coordinates
    else:
        raise fail(f"geometry is a {str(kind)[:_QUOTE]}; a count region must be a Polygon or MultiPolygon")
    shells = []
    for p, rings in enumerate(polygons):
        part = f"polygon {p} " if kind == "MultiPolygon" else ""
        if not isinstance(rings, list) or not rings:
            raise fail(f"{part}coordinates must be a non-empty list of rings")
        arrays = [_ring(ring, f"{part}ring {r}", fail) for r, ring in enumerate(rings)]
        shells.append(shapely.Polygon(arrays[0], arrays[1:]))
    geom = shells[0] if kind == "Polygon" else shapely.MultiPolygon(shells)
    if not shapely.is_valid(geom):
        raise fail(f"geometry is not valid ({explain_validity(geom)}); fix it in QuPath or with shapely.make_valid")
    if geom.area <= 0:
        raise fail("geometry has zero area")
    return geom


def _ring(ring: object, what: str, fail: Callable[[str], PathouccError]) -> np.ndarray:
    """(n, 2) float64 points of a closed ring of ``[x, y]`` (or ``[x, y, z]``) points."""
    try:
        pts = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        pts = np.empty((0, 0))
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise fail(f"{what} is not a list of [x, y] points")
    if not np.isfinite(pts).all():
        raise fail(f"{what} has a coordinate that is not a finite number")
    if len(pts) < 4:
        raise fail(f"{what} has {len(pts)} points; a closed ring needs at least 4")
    if not np.array_equal(pts[0, :2], pts[-1, :2]):
        raise fail(f"{what} is not closed: first point ({pts[0, 0]:g}, {pts[0, 1]:g}) != last point "
                   f"({pts[-1, 0]:g}, {pts[-1, 1]:g})")
    return pts[:, :2]


def class_polygons(geometry: object, path: Path, index: int) -> list[list]:
    """Polygons (each a list of rings: outer first, then holes) of a class feature's geometry; non-areas give none."""
    if not isinstance(geometry, dict):
        return []
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    try:
        if kind == "Polygon":
            return [list(coordinates)]
        if kind == "MultiPolygon":
            return [list(p) for p in coordinates]
        if kind == "GeometryCollection":
            return [p for g in geometry.get("geometries", []) for p in class_polygons(g, path, index)]
    except TypeError:
        raise PathouccError(f"feature {index}: malformed {str(kind)[:_QUOTE]} coordinates", path) from None
    return []
