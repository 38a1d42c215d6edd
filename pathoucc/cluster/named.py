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

__all__ = ["NamedFit", "fit_with_examples", "named_cluster_run"]


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


def fit_with_examples(model: torch.nn.Module, cfg: Config, examples_path: str | Path, k: int | None = None,
                      classes: list[str] | None = None, tile_paths: list[str | Path] | None = None,
                      fit_tiles: list[str | Path] | None = None, batch_size: int = 256,
                      device: torch.device | str = "cpu", progress: bool = False, amp: bool | None = None,
                      slide_dir: str | Path | None = None) -> NamedFit:
    """The ``examples`` fit (see the module docstring). ``tile_paths``: more tile files to find examples in (the
    slides being segmented); ``fit_tiles``: the unlabelled training patches (default: the run's training data);
    ``classes``: the class names allowed (default: those of the examples, in order of appearance)."""
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
    dtype = inference_dtype(cfg, device, amp)
    found: dict[str, np.ndarray] = {}
    notes: list[str] = []
    features, labels, where = [], [], []
    trained = {str(Path(p).resolve()) for p in training}
    for path in files:
        with open_tiles(path, slide_dir) as tiles:
            lab = label_examples(examples, names, tiles.coords, tiles.patch_size * tiles.downsample,
                                 tiles.slide_path, examples_path)
            notes += lab.notes
            rows = np.flatnonzero(lab.labels >= 0)
            if rows.size:
                features.append(extract_features(model, tiles, batch_size, device, rows, dtype))
                labels.append(lab.labels[rows])
                where += [path in trained] * len(rows)
            found[path] = lab.labels
    if not labels:
        raise PathouccError(f"none of the {len(examples)} labelled examples lies on a tissue patch of the "
                            f"{len(files)} tile file(s) (coordinates are level-0 pixels of the slide)", examples_path)
    all_labels, in_training = np.concatenate(labels), np.asarray(where)
    for c in np.unique(all_labels).tolist():
        if training and not in_training[all_labels == c].any():
            notes.append(f"{examples_path.name}: class {names[c]!r} has examples only on slides outside the "
                         "training tiles; its centre starts from them (they are still not scored)")
    k = _named_k(cfg, k, names, fit_tiles)
    if len(np.unique(all_labels)) > k:
        raise PathouccError(f"{len(np.unique(all_labels))} named classes have examples but k={k}: each needs its "
                            "own cluster; raise --k or drop classes", examples_path)
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
