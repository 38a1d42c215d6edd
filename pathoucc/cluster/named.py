"""The ``examples`` fit of a run on slides: its training patches plus a few labelled ones -> clusters with names.

:func:`fit_with_examples` reads a labelled-examples file (:mod:`pathoucc.slides.annotations.examples`), finds the
patches it labels in the run's training tile files and in the tile files given (the slides being segmented),
extracts their features, and fits constrained k-means (:mod:`.constrained`) on them together with the ``train``
fit's seeded subset of training patches. It returns, per tile file, which patches are examples: they keep their
class in the fit and are never scored.

Skips and errors: an example that labels no tissue patch is skipped with a note (and counted); no labelled patch
at all, a class not in ``classes``, two classes for one patch, or more classes with examples than ``k`` are
one-line errors. A class whose examples all lie on slides outside the training tiles is used, with a note (its
centre starts on those slides; their example patches are still not scored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pathoucc.cluster.constrained import named_cluster_model
from pathoucc.cluster.features import default_batch_size, extract_features, inference_dtype, resolve_device
from pathoucc.cluster.kmeans import ClusterModel, default_k, train_features
from pathoucc.config import Config
from pathoucc.errors import PathouccError
from pathoucc.run import kmeans_path, load_run
from pathoucc.slides.annotations.examples import class_list, label_examples, read_examples
from pathoucc.slides.tilefile import open_tiles

__all__ = ["LocatedExamples", "NamedFit", "fit_with_examples", "locate_examples", "named_cluster_run"]


@dataclass
class NamedFit:
    """The named k-means, the examples of each tile file (``examples[str(resolved path)]`` (N,) int64: the
    cluster the patch's class has, -1 = not an example) and the notes (skips), one line each."""

    kmeans: ClusterModel
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _named_k(cfg: Config, k: int | None, classes: list[str], fit_tiles: list[str | Path] | None) -> int:
    """``k`` if given, else ``eval.k`` or the training classes (:func:`default_k`), else the number of classes."""
    if k:
        return k
    try:
        return max(default_k(cfg, fit_tiles), 2)
    except PathouccError:
        return max(len(classes), 2)


@dataclass
class LocatedExamples:
    """Where a labelled-examples file's patches are: per tile file (``labels[str(resolved path)]`` (N,) int64, the
    index of the patch's class in ``names``, -1 = not an example), the training tile files among them, the notes,
    and ``k``, the clusters of the fit."""

    path: Path
    names: list[str]
    labels: dict[str, np.ndarray]
    training: set[str]
    notes: list[str]
    k: int


def locate_examples(cfg: Config, examples_path: str | Path, classes: list[str] | None = None,
                    tile_paths: list[str | Path] | None = None, fit_tiles: list[str | Path] | None = None,
                    slide_dir: str | Path | None = None, k: int | None = None) -> LocatedExamples:
    """Read ``examples_path`` and find the patches it labels in the training tile files (``fit_tiles`` or the
    run's) and ``tile_paths``; no model is needed, so a run checks its examples before it trains. The errors of
    the module docstring (``k``: the clusters to fit, default as :func:`fit_with_examples`) are raised here."""
    examples_path = Path(examples_path)
    training = [str(p) for p in (fit_tiles or (cfg.data.train_tiles if cfg.data.source == "tiles" else []))]
    files = list(dict.fromkeys(str(Path(p).resolve()) for p in [*training, *(tile_paths or [])]))
    if not files:
        raise PathouccError("labelled examples name patches of slides, but there are no tile files to look in "
                            "(the run trains on no tile files; give them)", examples_path)
    slide_dir = slide_dir if slide_dir is not None else cfg.data.slide_dir
    stems = []
    for path in files:
        with open_tiles(path, slide_dir) as tiles:
            stems.append(Path(tiles.slide_path).stem)
    examples = read_examples(examples_path, stems)
    names = class_list(examples, classes, examples_path)
    found: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for path in files:
        with open_tiles(path, slide_dir) as tiles:
            lab = label_examples(examples, names, tiles.coords, tiles.patch_size * tiles.downsample,
                                 tiles.slide_path, examples_path)
        notes += lab.notes
        found[path] = lab.labels
    present = np.unique(np.concatenate([lab[lab >= 0] for lab in found.values()]))
    if not present.size:
        raise PathouccError(f"none of the {len(examples)} labelled examples lies on a tissue patch of the "
                            f"{len(files)} tile file(s) (coordinates are level-0 pixels of the slide)", examples_path)
    if len(present) > (k := _named_k(cfg, k, names, fit_tiles)):
        raise PathouccError(f"{len(present)} named classes have examples but k={k}: each needs its "
                            "own cluster; raise --k or drop classes", examples_path)
    return LocatedExamples(examples_path, names, found, {str(Path(p).resolve()) for p in training}, notes, k)


def fit_with_examples(model: torch.nn.Module, cfg: Config, examples_path: str | Path, k: int | None = None,
                      classes: list[str] | None = None, tile_paths: list[str | Path] | None = None,
                      fit_tiles: list[str | Path] | None = None, batch_size: int = 256,
                      device: torch.device | str = "cpu", progress: bool = False, amp: bool | None = None,
                      slide_dir: str | Path | None = None) -> NamedFit:
    """The ``examples`` fit (see the module docstring). ``tile_paths``: more tile files to find examples in (the
    slides being segmented); ``fit_tiles``: the unlabelled training patches (default: the run's training data);
    ``classes``: the class names allowed (default: those of the examples, in order of appearance)."""
    slide_dir = slide_dir if slide_dir is not None else cfg.data.slide_dir
    located = locate_examples(cfg, examples_path, classes, tile_paths, fit_tiles, slide_dir, k)
    examples_path, names, found, notes = located.path, located.names, located.labels, list(located.notes)
    dtype = inference_dtype(cfg, device, amp)
    features, labels, where = [], [], []
    for path, lab in found.items():
        rows = np.flatnonzero(lab >= 0)
        if rows.size:
            with open_tiles(path, slide_dir) as tiles:
                features.append(extract_features(model, tiles, batch_size, device, rows, dtype))
            labels.append(lab[rows])
            where += [path in located.training] * len(rows)
    all_labels, in_training = np.concatenate(labels), np.asarray(where)
    for c in np.unique(all_labels).tolist():
        if located.training and not in_training[all_labels == c].any():
            notes.append(f"{examples_path.name}: class {names[c]!r} has examples only on slides outside the "
                         "training tiles; its centre starts from them (they are still not scored)")
    k = located.k
    unlabelled, source = train_features(model, cfg, fit_tiles, batch_size, device, progress, amp=amp)
    source = f"{source} + {len(all_labels)} labelled example patches ({examples_path})"
    cm, more = named_cluster_model(unlabelled, np.concatenate(features), all_labels, names, k, cfg.seed, source)
    to_cluster = np.full(len(names), -1, np.int64)
    present = np.unique(all_labels)
    to_cluster[present] = np.arange(len(present))  # named centres come first, in class order
    return NamedFit(cm, {p: np.where(lab >= 0, to_cluster[np.maximum(lab, 0)], -1) for p, lab in found.items()},
                    notes + more)


def named_cluster_run(run_dir: str | Path, examples_path: str | Path, k: int | None = None,
                      classes: list[str] | None = None, tile_paths: list[str | Path] | None = None,
                      batch_size: int | None = None, device: torch.device | str = "auto", progress: bool = False,
                      amp: bool | None = None) -> tuple[NamedFit, Path]:
    """``pathoucc cluster --examples``: the run's ``examples`` fit (on ``tile_paths`` if given, else its training
    data; examples looked up in both), saved as ``kmeans-k{K}.npz`` with the cluster names."""
    dev = resolve_device(device)
    cfg, model = load_run(run_dir, dev)
    fit = fit_with_examples(model, cfg, examples_path, k, classes, tile_paths, fit_tiles=tile_paths,
                            batch_size=batch_size or default_batch_size(cfg), device=dev, progress=progress, amp=amp)
    path = kmeans_path(run_dir, fit.kmeans.k)
    fit.kmeans.save(path)
    return fit, path
