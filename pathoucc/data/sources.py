"""Where instance pools come from: MNIST (fetched), a folder of IDX files, HDF5 tile files (``pathoucc tile``:
patches as instances, regions as bags) or feature files (:mod:`.features`: feature vectors as instances, the
regions of their annotations as bags). :func:`load_pools` picks the source named by the config."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from pathoucc.config import DataConfig
from pathoucc.data.features import pool_from_features
from pathoucc.data.idx import read_idx_folder
from pathoucc.data.mnist import load_mnist
from pathoucc.data.pool import InstancePool, Pool
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError
from pathoucc.slides.patchfile import PatchFile
from pathoucc.slides.tilefile import open_tiles


def load_pools(cfg: DataConfig,
               splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Pool]:
    """Load the requested splits of the configured source as :class:`InstancePool` objects (tile files with
    ``data.streaming``, and feature files: :class:`StreamingPool` objects, which read instances on demand)."""
    if cfg.source in ("mnist", "idx"):
        if cfg.source == "mnist":
            arrays = load_mnist(cfg.root)
        else:
            arrays = _split_idx(read_idx_folder(cfg.root), cfg.val_fraction, Path(cfg.root))
        return {s: InstancePool(*arrays[s]) for s in splits}
    if cfg.source == "features":
        if not cfg.features:
            raise PathouccError("data.features is empty: list the feature files (or their folders) to train on")
        return region_splits(partial(pool_from_features, cfg=cfg), cfg.features, cfg.test_features,
                             cfg.val_fraction, splits)
    return load_tile_pools(cfg, splits)


def _split_idx(arrays: dict[str, tuple[np.ndarray, np.ndarray]], val_fraction: float,
               root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if "train" not in arrays or "test" not in arrays:
        raise PathouccError(f"IDX folder needs train-* and t10k-*/test-* files, found splits {sorted(arrays)}", root)
    x, y = arrays["train"]
    n_val = round(len(x) * val_fraction)
    out = dict(arrays)
    out["train"] = (x[: len(x) - n_val], y[: len(x) - n_val])
    out["val"] = (x[len(x) - n_val :], y[len(x) - n_val :])
    return out


def _read_all(tiles: PatchFile, chunk: int = 4096) -> np.ndarray:
    return np.concatenate([tiles.read(slice(i, i + chunk)) for i in range(0, tiles.num_patches, chunk)])


def pool_from_tiles(paths: list[str], need_regions: bool, slide_dir: str | None = None,
                    streaming: bool = False) -> Pool:
    """Concatenate the patches of ``paths`` into one pool; region indices are renumbered across files.
    ``slide_dir`` holds the slides of CLAM/TRIDENT coordinate files among ``paths``. With ``streaming`` the pool
    reads patches from the files on demand (:class:`StreamingPool`) instead of holding them in memory."""
    images, labels, region, ucc, sizes = [], [], [], [], []
    size, shape = None, None
    for path in paths:
        with open_tiles(path, slide_dir) as tiles:
            if size is not None and tiles.patch_size != size:
                raise PathouccError(f"patch size {tiles.patch_size} differs from the other tile files ({size})", path)
            if shape is not None and tiles.shape != shape:
                raise PathouccError(f"instances of shape {tiles.shape} differ from the other files' {shape}", path)
            size, shape = tiles.patch_size, tiles.shape
            if need_regions and (tiles.region is None or tiles.region_count is None):
                raise PathouccError("tile file has no regions (bags) with counts: tile it with --mask, --geojson "
                                    "or --regions-csv" + (" (a CLAM/TRIDENT coordinate file has none: it serves "
                                                          "segment, cluster and test_tiles)"
                                                          if not tiles.stores_patches else ""), path)
            if not streaming:
                images.append(_read_all(tiles))
            n = tiles.num_patches
            sizes.append(n)
            labels.append(tiles.labels if tiles.labels is not None else np.full(n, -1, np.int64))
            if tiles.region is not None and tiles.region_count is not None:
                offset = sum(len(u) for u in ucc)
                region.append(np.where(tiles.region >= 0, tiles.region + offset, -1))
                ucc.append(tiles.region_count)
            else:
                region.append(np.full(n, -1, np.int64))
    meta = (np.concatenate(labels).astype(np.int64),
            np.concatenate(region).astype(np.int64) if ucc else None,
            np.concatenate(ucc).astype(np.int64) if ucc else None)
    if streaming:
        return StreamingPool(paths, sizes, int(size or 0), *meta, slide_dir=slide_dir, shape=shape)
    return InstancePool(np.concatenate(images), *meta)


def _subset_regions(pool: Pool, keep: np.ndarray) -> Pool:
    """The instances of the regions ``keep`` (renumbered 0..len(keep)-1)."""
    assert pool.region is not None and pool.region_count is not None
    new_id = np.full(len(pool.region_count), -1, np.int64)
    new_id[keep] = np.arange(len(keep))
    member = (pool.region >= 0) & (new_id[np.maximum(pool.region, 0)] >= 0)
    return pool.subset(member, new_id[pool.region[member]], pool.region_count[keep])


def load_tile_pools(cfg: DataConfig, splits: tuple[str, ...]) -> dict[str, Pool]:
    """``train``/``val``: the regions of ``cfg.train_tiles``, ``val_fraction`` of them held out (seeded);
    ``test``: every patch of ``cfg.test_tiles`` (falls back to the training tiles when none are given)."""
    if {"train", "val"} & set(splits) and not cfg.train_tiles:
        raise PathouccError("data.train_tiles is empty: list the tile files (.h5) to train on")
    build = partial(pool_from_tiles, slide_dir=cfg.slide_dir, streaming=cfg.streaming)
    return region_splits(build, cfg.train_tiles, cfg.test_tiles, cfg.val_fraction, splits)


def region_splits(build: Callable[..., Pool], train: list[str], test: list[str], val_fraction: float,
                  splits: tuple[str, ...]) -> dict[str, Pool]:
    """``train``/``val``: the regions of the files ``train`` (``build(paths, need_regions=True)``),
    ``val_fraction`` of them held out (seeded); ``test``: every instance of ``test`` (else of ``train``)."""
    out: dict[str, Pool] = {}
    if {"train", "val"} & set(splits):
        pool = build(train, need_regions=True)
        assert pool.region_count is not None
        order = np.random.default_rng(0).permutation(len(pool.region_count))
        n_val = round(len(order) * val_fraction)
        out["train"] = _subset_regions(pool, np.sort(order[n_val:]))
        out["val"] = _subset_regions(pool, np.sort(order[:n_val]))
    if "test" in splits:
        out["test"] = build(test or train, need_regions=False)
    return {s: out[s] for s in splits}
