"""``pathoucc features`` as a Python call: patch files in, one TRIDENT-layout feature file per slide out.

Every input is opened first (a tile file of ``pathoucc tile``, or a CLAM/TRIDENT coords file whose pixels are
read from its slide); a slide whose feature file exists with the same encoder, weights digest and coordinates is
skipped, one with another digest or other coordinates (stale) is encoded again and the report says why. Each file
is written atomically: an interrupted or failed slide leaves no file, and the next run encodes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathoucc.embed.encoder import FrozenEncoder, load_encoder
from pathoucc.embed.extract import embed_patches
from pathoucc.embed.write import coords_attributes, feature_path, slide_name, stamp_of, write_features
from pathoucc.errors import PathouccError
from pathoucc.files import ensure_writable_dir
from pathoucc.options import FeatureOptions
from pathoucc.runtime import autocast_dtype, progress_bar, select_device
from pathoucc.slides.outputs import remove_orphans
from pathoucc.slides.patchfile import PatchFile
from pathoucc.slides.tilefile import open_tiles

__all__ = ["EmbedReport", "embed_files"]


@dataclass
class EmbedReport:
    """Outcome of :func:`embed_files`: the feature files written (``redone``: which of them replaced stale ones,
    and why), skipped (up to date), the inputs that failed (with the one-line reason), the patches encoded and
    the seconds spent encoding and writing them (``patches / seconds`` is the throughput)."""

    encoder: str
    folder: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    redone: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    patches: int = 0
    seconds: float = 0.0

    @property
    def patches_per_s(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else 0.0


def embed_files(paths: list[str | Path], out: str | Path, options: FeatureOptions, *,
                slides: str | Path | None = None, encoder: FrozenEncoder | None = None, progress: bool = False,
                on_error=None) -> EmbedReport:
    """Encode the patches of every file in ``paths`` into ``<out>/features_<encoder>/<slide>.h5``.

    ``slides``: the slide (or a folder of slides) of CLAM/TRIDENT coords files (default: found by name next to
    them). ``encoder``: an already loaded encoder (default: from ``options``). A file that cannot be read is
    recorded in ``failed`` (and passed to ``on_error(path, message)``) while the others go on."""
    import time

    enc = encoder or load_encoder(options.model, options.weights, options.name)
    device = select_device(options.device)
    dtype = autocast_dtype(device, options.amp)
    enc.model.to(device)
    folder = ensure_writable_dir(Path(out) / f"features_{enc.folder_name}")
    report = EmbedReport(encoder=enc.name, folder=folder)

    def fail(path: Path, message: str) -> None:
        report.failed.append((path, message))
        if on_error is not None:
            on_error(path, message)

    todo: list[tuple[PatchFile, Path]] = []
    owners: dict[Path, Path] = {}
    for path in map(Path, paths):
        try:
            patches = open_tiles(path, slide=slides)
        except PathouccError as exc:
            fail(path, str(exc))
            continue
        target = feature_path(out, enc.folder_name, slide_name(patches))
        if target in owners:
            fail(path, str(PathouccError(f"holds the patches of slide '{target.stem}' as {owners[target]} does; "
                                         "their feature files would collide", path)))
            continue
        owners[target] = path
        why = None if options.overwrite else _stale(target, enc, patches.coords)
        if why == "":
            report.skipped.append(target)
            continue
        if why is not None:
            report.redone.append((target, why))
        todo.append((patches, target))

    total = sum(len(p) for p, _ in todo)
    with progress_bar(progress, f"features_{enc.folder_name}", total) as advance:
        for patches, target in todo:
            start = time.perf_counter()
            try:
                with patches:
                    features = embed_patches(patches, enc, device, dtype, options.batch_size, advance)
                remove_orphans(target)  # temporary files of a killed run
                write_features(target, features, patches.coords, coords_attributes(patches),
                               slide_name(patches), enc.name, enc.weights_digest)
            except PathouccError as exc:
                report.redone = [(p, w) for p, w in report.redone if p != target]
                fail(patches.path, str(exc))
                continue
            report.seconds += time.perf_counter() - start
            report.patches += len(patches)
            report.written.append(target)
    return report


def _stale(target: Path, enc: FrozenEncoder, coords: np.ndarray) -> str | None:
    """None: no feature file yet (or an unreadable one); "": up to date; else why it must be encoded again."""
    if not target.exists():
        return None
    stamp = stamp_of(target)
    if stamp is None:
        return "the existing file is unreadable or incomplete"
    name, digest, old = stamp
    if name != enc.name:
        return f"it was written by encoder '{name}'"
    if digest != enc.weights_digest:
        return f"the weights changed (digest {digest[:12]}… -> {enc.weights_digest[:12]}…)"
    if old.shape != coords.shape or not np.array_equal(old, coords):
        return f"the patches changed ({len(old)} -> {len(coords)} patches, or other positions)"
    return ""
