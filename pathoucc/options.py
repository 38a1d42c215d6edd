"""The options of the commands that are not a training run: ``pathoucc tile`` (:class:`TileOptions`),
``pathoucc segment`` / ``cluster`` (:class:`SegmentOptions`) and ``pathoucc view`` (:class:`ViewOptions`),
validated once at the command line's boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from pathoucc.config import Compression, Device, Section
from pathoucc.config_errors import problem_text
from pathoucc.errors import PathouccError


class TileOptions(Section):
    """How ``pathoucc tile`` cuts a slide: ``patch_size`` and ``stride`` (default: the patch size) in output-level
    pixels; the output level from one of ``level``, ``magnification``, ``mpp``, ``downsample`` (default level 0);
    patches with a tissue fraction of at least ``tissue_threshold`` are kept. With a mask or GeoJSON, regions
    (bags) are ``region_size`` windows and a patch takes the class covering ``min_label_coverage`` of it."""

    patch_size: int = Field(224, ge=1)
    stride: int | None = Field(None, ge=1)
    level: int | None = Field(None, ge=0)
    magnification: float | None = Field(None, gt=0)
    mpp: float | None = Field(None, gt=0)
    downsample: float | None = Field(None, gt=0)
    tissue_threshold: float = Field(0.5, ge=0, le=1)
    region_size: int = Field(512, ge=1)
    classes: list[str] | None = None
    zero_is_background: bool = True
    min_label_coverage: float = Field(0.5, ge=0, le=1)
    workers: int | None = Field(None, ge=1)
    compression: Compression = "gzip"
    overwrite: bool = False

    @property
    def step(self) -> int:
        """The grid step: ``stride``, or the patch size."""
        return self.patch_size if self.stride is None else self.stride


class SegmentOptions(Section):
    """How ``pathoucc segment`` clusters slides: ``k`` clusters (default: ``eval.k`` or the training classes),
    ``batch_size`` patches per forward pass (default: from ``eval.batch_size``), the ``device``, and a label ``mask``
    (or folder of masks) to score against; ``amp``: mixed-precision features (default: the run's ``eval.amp``).
    ``examples``: a labelled-examples file (QuPath GeoJSON points/polygons, or ``slide,x,y,class`` CSV) that names
    the clusters (the ``examples`` fit, refitted and saved); ``classes``: the class names it may use."""

    k: int | None = Field(None, ge=2)
    batch_size: int | None = Field(None, ge=1)
    device: Device = "auto"
    mask: Path | None = None
    amp: bool | None = None
    examples: Path | None = None
    classes: list[str] | None = Field(None, min_length=1)


class ViewOptions(Section):
    """How ``pathoucc view`` serves segmentation outputs: on ``host``:``port`` (loopback by default; port 0 = any
    free port), slides that moved looked up by file name in ``slide_dir``, at most ``cache_mb`` MB of encoded tiles
    kept in memory; ``workers`` threads render an export."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    slide_dir: Path | None = None
    cache_mb: int = Field(256, ge=0)
    workers: int | None = Field(None, ge=1)


def validate_options(cls: type[Section], values: dict[str, Any]) -> Any:
    """``cls(**values)``; a bad value is a :class:`PathouccError` naming its option (``--patch-size: ...``)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "--" + "-".join(str(p) for p in err["loc"][:1]).replace("_", "-")
        raise PathouccError(f"{name}: {problem_text(err)}") from None


class FeatureOptions(Section):
    """How ``pathoucc features`` encodes patches: the timm ``model`` (hub weights through timm's cache) or its
    local ``weights`` file, the encoder's ``name`` (default: the model name, or the weights file's stem),
    ``batch_size`` patches per forward pass, the ``device``, ``amp`` (bf16/fp16 where the hardware has it, else
    fp32) and ``overwrite`` (encode slides whose features are up to date again)."""

    model: str = Field(min_length=1)
    weights: Path | None = None
    name: str | None = None
    batch_size: int = Field(256, ge=1)
    device: Device = "auto"
    amp: bool = True
    overwrite: bool = False
