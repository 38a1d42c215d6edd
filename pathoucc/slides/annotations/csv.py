"""Regions CSV: rectangles with a unique class count, ``slide,x,y,width,height,ucc`` (level-0 px, one row each).

Rows are matched to a slide by its file name or stem. Each row is a :class:`~.assign.CountRegion` (``unit``
``line``: messages name its line in the file), whose patches follow the centre rule of :mod:`.assign`, as a
GeoJSON polygon with the same corners does.
"""

from __future__ import annotations

import csv
from pathlib import Path

import shapely

from pathoucc.errors import PathouccError
from pathoucc.slides.annotations.assign import CountRegion
from pathoucc.slides.annotations.raster import check_file

__all__ = ["COLUMNS", "read_regions_csv"]

COLUMNS = ("slide", "x", "y", "width", "height", "ucc")


def read_regions_csv(path: str | Path, slide_path: str | Path) -> list[CountRegion]:
    """The regions of the rows of a ``slide,x,y,width,height,ucc`` CSV that belong to ``slide_path``.

    A row belongs to the slide if its ``slide`` value equals the slide's file name or stem (or a path with that
    name). Boxes are level-0 pixels; ``ucc`` >= 0. Raises naming the file (and line) if a column is missing, a
    value is not a number, or no row names the slide.
    """
    path, slide_path = Path(path), Path(slide_path)
    check_file(path, "regions CSV")
    regions = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in fields]
            if missing:
                raise PathouccError(f"regions CSV lacks column(s) {', '.join(missing)} (need {','.join(COLUMNS)})",
                                    path)
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                name = Path(row["slide"])
                if name.name not in (slide_path.name, slide_path.stem) and name.stem != slide_path.stem:
                    continue
                try:
                    x, y, w, h, ucc = (int(float(row[c])) for c in COLUMNS[1:])
                except (ValueError, OverflowError):  # not a number, NaN or infinite
                    raise PathouccError(f"line {line}: x, y, width, height, ucc must be numbers", path) from None
                if w <= 0 or h <= 0 or ucc < 0:
                    raise PathouccError(f"line {line}: width and height must be positive and ucc >= 0", path)
                regions.append(CountRegion(line, None, ucc, None, shapely.box(x, y, x + w, y + h), unit="line"))
    except UnicodeDecodeError:
        raise PathouccError("regions CSV is not UTF-8 text", path) from None
    if not regions:
        raise PathouccError(f"no rows for slide {slide_path.name} (the 'slide' column must hold its file name "
                            "or stem)", path)
    return regions
