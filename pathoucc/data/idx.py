"""Reader and writer for the IDX format in which MNIST and its look-alikes ship (``*-idx?-ubyte[.gz]``)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from pathoucc.errors import PathouccError
from pathoucc.files import atomic_path

# IDX type codes -> numpy big-endian dtypes.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array of its stated shape and dtype."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise PathouccError("file not found", path) from None
    except (OSError, EOFError) as exc:
        raise PathouccError(f"cannot read IDX file ({exc})", path) from None
    return parse_idx(raw, path)


def parse_idx(raw: bytes, path: str | Path = "IDX data") -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file; ``path`` only names the source in errors."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise PathouccError("not an IDX file (bad magic number)", path)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PathouccError("truncated IDX header", path)
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise PathouccError(
            f"IDX payload is {len(raw) - header} bytes, header shape {shape} needs {expected}", path
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.dtype(_DTYPES[code])).tobytes()
    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):
            with gzip.open(tmp, "wb", compresslevel=6) as fh:
                fh.write(payload)
        else:
            tmp.write_bytes(payload)


_IDX_NAME = re.compile(r"^(?P<split>.+?)[-.](?P<kind>images|labels)[-.]idx(?P<ndim>\d)[-.]ubyte(\.gz)?$")


def read_idx_folder(folder: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a folder of IDX files into ``{split: (images, labels)}``.

    Files are paired by their prefix: ``train-images-idx3-ubyte.gz`` with ``train-labels-idx1-ubyte.gz``,
    ``t10k-…`` with ``t10k-…`` (the split is called ``test``). Images are ``(N, H, W)`` uint8, labels ``(N,)``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PathouccError("dataset folder not found", folder)
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        m = _IDX_NAME.match(path.name)
        if m:
            split = {"t10k": "test"}.get(m["split"], m["split"])
            found.setdefault(split, {}).setdefault(m["kind"], path)
    splits = {}
    for split, files in found.items():
        if set(files) != {"images", "labels"}:
            missing = ({"images", "labels"} - set(files)).pop()
            raise PathouccError(f"split '{split}' has no {missing} file", folder)
        images, labels = read_idx(files["images"]), read_idx(files["labels"])
        if len(images) != len(labels):
            raise PathouccError(f"split '{split}': {len(images)} images but {len(labels)} labels", folder)
        splits[split] = (images, labels.astype(np.int64))
    if not splits:
        raise PathouccError("no *-idx?-ubyte[.gz] files found", folder)
    return splits
