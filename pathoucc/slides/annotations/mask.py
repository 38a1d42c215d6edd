"""Label masks: a single-channel image aligned with the slide, one class index per pixel (dense annotations)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pathoucc.errors import PathouccError
from pathoucc.slides.annotations.raster import MAX_RASTER_PIXELS, LabelRaster, check_file

__all__ = ["read_label_mask"]


def read_label_mask(path: str | Path, slide_dimensions: tuple[int, int], *, zero_is_background: bool = True,
                    classes: list[str] | None = None) -> LabelRaster:
    """Read a single-channel label mask (PNG/TIFF, 8 or 16 bit) covering the whole slide.

    Pixel value ``v`` is class ``v - 1`` with 0 = unlabelled if ``zero_is_background``, else class ``v``.
    The mask may be smaller than level 0 (same aspect ratio): it is scaled by its size relative to level 0.
    """
    path = Path(path)
    check_file(path, "label mask")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS, old = MAX_RASTER_PIXELS, Image.MAX_IMAGE_PIXELS
            try:
                image = Image.open(path)
                image.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Image.DecompressionBombError:
        raise PathouccError(f"label mask has more than {MAX_RASTER_PIXELS} pixels; save it at a lower resolution "
                            "(it is scaled to the slide by its size)", path) from None
    except (OSError, ValueError, SyntaxError):
        raise PathouccError("not an image Pillow can read (expected a single-channel label mask)", path) from None
    if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise PathouccError(f"label mask must be single-channel (one class index per pixel), got mode {image.mode}",
                            path)
    values = np.asarray(image).astype(np.int64)
    mw, mh = image.size
    W, H = slide_dimensions
    sx, sy = W / mw, H / mh
    if abs(sx / sy - 1) > 0.02:
        raise PathouccError(f"label mask is {mw}x{mh} px, which does not match the slide's aspect ratio "
                            f"({W}x{H} at level 0)", path)
    labels = values - 1 if zero_is_background else values
    if labels.min() < -1:
        raise PathouccError(f"label mask has negative value {values.min()}", path)
    num = int(labels.max()) + 1
    if num <= 0:
        raise PathouccError("label mask has no labelled pixel (all background); the annotations do not overlap "
                            "the slide", path)
    if classes is not None and num > len(classes):
        value = num if zero_is_background else num - 1
        raise PathouccError(f"label mask has value {value} (class {num - 1}) but only {len(classes)} classes are "
                            f"named ({', '.join(classes)})", path)
    names = list(classes) if classes is not None else [str(i) for i in range(num)]
    return LabelRaster(labels.astype(np.int16), (sx, sy), names, path)
