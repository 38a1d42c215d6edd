"""Open whole-slide images (anything OpenSlide reads) and plain images behind one small interface.

Coordinates follow OpenSlide: ``(x, y)`` and ``(width, height)``; locations are always level-0 pixels,
sizes are pixels at the level being read. Pixel arrays are ``(height, width, 3)`` uint8 RGB.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from pathoucc.errors import PathouccError

__all__ = ["LevelChoice", "Slide", "open_slide", "pick_level"]

_LEVEL_TOLERANCE = 0.01  # a level within 1 % of the requested downsample is used without resizing
THUMBNAIL_BLOCK = 4096  # thumbnails are made from blocks of at most this many level pixels per side


class Slide:
    """A read-only slide: an OpenSlide object (or OpenSlide's ``ImageSlide`` for PNG/JPEG/plain TIFF).

    Use :func:`open_slide` to create one; use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path, handle: openslide.AbstractSlide, vendor: str) -> None:
        self.path = path
        self.vendor = vendor
        self._handle = handle
        props = handle.properties
        self.dimensions: tuple[int, int] = tuple(handle.dimensions)
        self.level_count: int = handle.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in handle.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in handle.level_downsamples)
        mpp_x, mpp_y = _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X)), _float_or_none(
            props.get(openslide.PROPERTY_NAME_MPP_Y))
        self.mpp: tuple[float, float] | None = (mpp_x, mpp_y or mpp_x) if mpp_x else None
        self.objective_power: float | None = _float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        color = props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR)
        self.background = tuple(bytes.fromhex(color)) if color and len(color) == 6 else (255, 255, 255)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` = (w, h) pixels of ``level`` whose top-left is level-0 ``location``; (h, w, 3) uint8.

        Pixels outside the slide (or transparent) come back as the slide's background colour (white).
        """
        try:
            rgba = np.asarray(self._handle.read_region((int(location[0]), int(location[1])), int(level),
                                                       (int(size[0]), int(size[1]))))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise PathouccError(f"cannot read pixels at {tuple(location)} level {level} ({exc}); "
                                "the file may be truncated or corrupt", self.path) from None
        return _flatten_alpha(rgba, self.background)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide with its longer side at most ``max_size`` pixels, (h, w, 3) uint8."""
        w, h = self.dimensions
        scale = max(w, h) / max_size
        level = self.best_level(max(scale, 1.0))
        lw, lh = self.level_dimensions[level]
        tw, th = max(1, round(w / max(scale, 1.0))), max(1, round(h / max(scale, 1.0)))
        if (tw, th) == (lw, lh):
            return self.read_region((0, 0), level, (lw, lh))
        # shrink block by block so that a slide without low-resolution levels is never read whole
        rx, ry = lw / tw, lh / th
        step = max(1, int(THUMBNAIL_BLOCK // max(rx, ry)))
        out = np.empty((th, tw, 3), np.uint8)
        level_ds = self.level_downsamples[level]
        for ty in range(0, th, step):
            for tx in range(0, tw, step):
                bw, bh = min(step, tw - tx), min(step, th - ty)
                x0, y0 = int(tx * rx), int(ty * ry)
                x1, y1 = min(lw, int(np.ceil((tx + bw) * rx))), min(lh, int(np.ceil((ty + bh) * ry)))
                block = self.read_region((round(x0 * level_ds), round(y0 * level_ds)), level, (x1 - x0, y1 - y0))
                box = (tx * rx - x0, ty * ry - y0, (tx + bw) * rx - x0, (ty + bh) * ry - y0)
                out[ty:ty + bh, tx:tx + bw] = np.asarray(
                    Image.fromarray(block).resize((bw, bh), Image.Resampling.BOX, box=box))
        return out

    def best_level(self, downsample: float) -> int:
        """The highest level whose downsample does not exceed ``downsample`` (within 1 %)."""
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + _LEVEL_TOLERANCE)]
        return ok[-1] if ok else 0

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, vendor={self.vendor!r}, dimensions={self.dimensions})"


def open_slide(path: str | Path) -> Slide:
    """Open a whole-slide image (SVS, tiled TIFF, NDPI, MRXS, ... via OpenSlide) or a plain PNG/JPEG/TIFF.

    Raises :class:`PathouccError` naming the file if it is missing, empty or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise PathouccError("slide file not found", path)
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise PathouccError("is a folder, not a slide file", path)
    if path.is_file() and path.stat().st_size == 0:
        raise PathouccError("slide file is empty", path)
    try:
        vendor = openslide.OpenSlide.detect_format(path)
    except (openslide.OpenSlideError, OSError):
        vendor = None
    if vendor is not None:
        try:
            return Slide(path, openslide.OpenSlide(path), vendor)
        except (openslide.OpenSlideError, OSError) as exc:
            raise PathouccError(f"OpenSlide cannot open this {vendor} file ({exc}); it may be truncated or corrupt",
                                path) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except Image.DecompressionBombError:
        raise PathouccError("plain image is too large to load whole; convert it to a tiled pyramidal TIFF",
                            path) from None
    except (OSError, ValueError, SyntaxError):
        kind = _image_magic(path)
        reason = f"{kind} file is truncated or corrupt (neither OpenSlide nor Pillow can read it)" if kind else \
            "not a slide or image format that OpenSlide or Pillow can read"
        raise PathouccError(reason, path) from None
    fmt = (image.format or "image").lower()
    if image.mode != "RGB":
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return Slide(path, openslide.ImageSlide(image), fmt)


@dataclass(frozen=True)
class LevelChoice:
    """Where patches are read: pyramid ``level``, resized by ``scale`` (>= 1; 1 = read as is).

    ``downsample`` is level-0 pixels per output pixel (= ``level_downsamples[level] * scale``).
    """

    level: int
    downsample: float
    scale: float = 1.0


def pick_level(slide: Slide, magnification: float | None = None, mpp: float | None = None,
               level: int | None = None, downsample: float | None = None) -> LevelChoice:
    """Choose the pyramid level for a requested magnification, microns per pixel, level or downsample.

    At most one may be given (none = level 0). Magnification needs the slide's objective power and ``mpp`` the
    slide's mpp; a target between levels reads the finer level and shrinks it by the residual ``scale``.
    """
    given = {k: v for k, v in {"magnification": magnification, "mpp": mpp, "level": level,
                               "downsample": downsample}.items() if v is not None}
    path = getattr(slide, "path", None)
    if len(given) > 1:
        raise PathouccError(f"give only one of magnification, mpp, level, downsample (got {', '.join(given)})")
    downsamples = list(slide.level_downsamples)
    if level is not None:
        if not 0 <= level < len(downsamples):
            raise PathouccError(f"level {level} does not exist (the slide has levels 0..{len(downsamples) - 1})",
                                path)
        return LevelChoice(level, downsamples[level], 1.0)
    if magnification is not None:
        if magnification <= 0:
            raise PathouccError(f"magnification must be positive, got {magnification}")
        if not slide.objective_power:
            raise PathouccError("the slide does not state its objective power, so a magnification cannot be "
                                "used; give mpp, level or downsample instead", path)
        target = slide.objective_power / magnification
        what = f"magnification {magnification:g}x (slide scanned at {slide.objective_power:g}x)"
    elif mpp is not None:
        if mpp <= 0:
            raise PathouccError(f"mpp must be positive, got {mpp}")
        if not slide.mpp:
            raise PathouccError("the slide does not state its microns per pixel, so mpp cannot be used; "
                                "give level or downsample instead", path)
        target = mpp / (0.5 * (slide.mpp[0] + slide.mpp[1]))
        what = f"mpp {mpp:g} (slide level 0 is {slide.mpp[0]:.4g} µm/px)"
    elif downsample is not None:
        if downsample <= 0:
            raise PathouccError(f"downsample must be positive, got {downsample}")
        target, what = float(downsample), f"downsample {downsample:g}"
    else:
        return LevelChoice(0, downsamples[0], 1.0)
    if target < 1 - _LEVEL_TOLERANCE:
        raise PathouccError(f"{what} is finer than the slide's level 0 (downsample {target:.3g} < 1)", path)
    best = max(i for i, d in enumerate(downsamples) if d <= target * (1 + _LEVEL_TOLERANCE) or i == 0)
    scale = target / downsamples[best]
    if abs(scale - 1) <= _LEVEL_TOLERANCE:
        return LevelChoice(best, downsamples[best], 1.0)
    return LevelChoice(best, target, scale)


_MAGIC = {b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"II+\x00": "BigTIFF", b"MM\x00+": "BigTIFF",
          b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG"}


def _image_magic(path: Path) -> str | None:
    """The image type announced by the first bytes of ``path`` (None if unknown)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return None
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def _float_or_none(value: str | None) -> float | None:
    try:
        out = float(value) if value is not None else None
    except ValueError:
        return None
    return out if out is not None and math.isfinite(out) and out > 0 else None


def _flatten_alpha(rgba: np.ndarray, background: tuple[int, ...]) -> np.ndarray:
    """RGBA (non-premultiplied, as OpenSlide returns it) composited on ``background``; (h, w, 3) uint8."""
    if rgba.ndim == 3 and rgba.shape[2] == 3:
        return np.ascontiguousarray(rgba)
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / 255.0
    out = rgb * a + np.asarray(background[:3], np.float32) * (1.0 - a)
    return np.rint(out).astype(np.uint8)
