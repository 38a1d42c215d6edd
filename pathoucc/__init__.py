"""pathoucc: weakly supervised clustering of instances from bag-level unique class counts.

The public API, one name per stage (see docs/architecture.md)::

    tile_slides / tile_slide, TileOptions      1 slides -> HDF5 tile files
    load_pools, InstancePool                   2 instances to draw bags from
    create_model, UCCModel                     3 the model
    load_config, Config, train_ucc             4 UCC training into a run folder
    load_run                                   the run folder: config and trained model
    extract_features, ClusterModel, cluster_run   5 features and the run's k-means (KMeansFit: which features)
    refine_run, count_consistent_labels        5 self-training on count-consistent pseudo-labels
    train_run, TrainReport                     the pipeline (``pathoucc train``): train, refine, score
    embed_files, load_encoder, FeatureOptions  4 frozen-encoder feature files (``pathoucc features``)
    evaluate_run, evaluate_raw_pixels          5 held-out scores (EvalResult)
    segment_run, SegmentOptions                6 cluster maps of slides

Names are imported on first use, so ``import pathoucc`` stays light (no torch until a model is needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "pathoucc.config", "TileOptions": "pathoucc.options", "SegmentOptions": "pathoucc.options",
    "load_config": "pathoucc.config", "PathouccError": "pathoucc.errors",
    "tile_slide": "pathoucc.slides.tiler", "tile_slides": "pathoucc.slides.tiler",
    "open_tiles": "pathoucc.slides.tilefile", "InstancePool": "pathoucc.data.pool",
    "load_pools": "pathoucc.data.sources", "create_model": "pathoucc.models", "UCCModel": "pathoucc.models",
    "load_run": "pathoucc.run", "train_ucc": "pathoucc.training.train", "train_run": "pathoucc.pipeline",
    "TrainReport": "pathoucc.pipeline", "refine_run": "pathoucc.pipeline", "extract_features": "pathoucc.cluster",
    "ClusterModel": "pathoucc.cluster", "cluster_run": "pathoucc.cluster", "KMeansFit": "pathoucc.cluster",
    "count_consistent_labels": "pathoucc.cluster.counted", "evaluate_run": "pathoucc.cluster",
    "EvalResult": "pathoucc.cluster", "evaluate_raw_pixels": "pathoucc.cluster", "segment_run": "pathoucc.segment",
    "embed_files": "pathoucc.embed", "load_encoder": "pathoucc.embed", "FeatureOptions": "pathoucc.options",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pathoucc' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
