"""Fill the wheel folder that ``tools/gpu_check.sh`` installs from on a GPU machine without a package index.

    python tools/fill_gpu_wheels.py [--dest tools/gpu-wheels] [--python-version 3.11] [--with-augment]

The GPU machine has torch, timm, h5py, scikit-learn, typer, rich, scipy and tifffile (and what they need). This
walks pathoucc's runtime requirements and theirs, as installed here, leaves out everything those packages already
bring (but pydantic, which only recent typer brings), pins the rest to the versions installed here and downloads
their wheels (``pip download --no-deps``: the list is the closure) for the GPU machine's Python and platform, with a
``requirements.txt`` the script installs. albumentations (and OpenCV, ~50 MB) is needed only with ``data.augment``:
left out unless ``--with-augment``. The folder is not committed (``.gitignore``); run this where an index is
reachable.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESENT = ("torch", "timm", "h5py", "scikit-learn", "typer", "rich", "scipy", "tifffile")
AUGMENT = ("albumentations",)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str) -> list[str]:
    """The names ``dist`` requires (no extras, markers that hold here)."""
    from packaging.requirements import Requirement

    out = []
    for text in md.requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append(_norm(req.name))
    return out


def closure(roots: list[str]) -> set[str]:
    """``roots`` and everything they require, transitively (as installed here)."""
    seen: set[str] = set()
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(md.PackageNotFoundError):
            todo += _requirements(name)
    return seen


def needed(present: tuple[str, ...] = PRESENT, with_augment: bool = False) -> dict[str, str]:
    """``{distribution: version installed here}`` that pathoucc needs at run time and ``present`` does not bring."""
    roots = [r for r in _requirements("pathoucc") if with_augment or r not in AUGMENT]
    # what the present packages bring, except pydantic: recent typer requires it, older typer (on the GPU machine,
    # perhaps) does not, and pathoucc needs it
    have = closure(list(present)) - (closure(["pydantic"]) - closure([p for p in present if p != "typer"]))
    missing = {}
    for name in sorted(closure(roots) - have):
        try:
            missing[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / "tools" / "gpu-wheels")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--platform", default="manylinux2014_x86_64")
    parser.add_argument("--with-augment", action="store_true", help="also albumentations and OpenCV")
    parser.add_argument("--list", action="store_true", help="only print what would be downloaded")
    args = parser.parse_args()

    pins = [f"{name}=={version}" for name, version in needed(with_augment=args.with_augment).items()]
    if args.list:
        print("\n".join(pins))
        return
    args.dest.mkdir(parents=True, exist_ok=True)
    # binary wheels for the GPU machine's Python and platform; pure-Python ones fit any
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(args.dest), "--only-binary=:all:",
            "--python-version", args.python_version, "--platform", args.platform,
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "any"]
    subprocess.run([*base, *pins], check=True)
    (args.dest / "requirements.txt").write_text("\n".join(pins) + "\n")
    size = sum(p.stat().st_size for p in args.dest.glob("*.whl"))
    print(f"{len(pins)} wheels, {size / 2**20:.1f} MiB -> {args.dest}")


if __name__ == "__main__":
    main()
