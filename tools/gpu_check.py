"""The measuring half of ``tools/gpu_check.sh``: each stage runs in this process and prints one JSON line with its
throughput and the peak GPU memory; ``summary`` turns those lines into the table the shell script ends with.

    python tools/gpu_check.py train CONFIG OUT [--set a.b=v ...]        UCC training (pathoucc train), timed
    python tools/gpu_check.py tiles OUT.h5 --patches N --size P        a tile file of MNIST digits (no slide)
    python tools/gpu_check.py weights MODEL OUT.pt                     random weights of a timm model, saved
    python tools/gpu_check.py features TILES... --out DIR --model M --weights W   pathoucc features, timed
    python tools/gpu_check.py summary RESULTS.jsonl                    the table

Under ``torchrun`` the ``train`` stage also reports the process group's backend (``nccl`` on CUDA) and the world
size; only rank 0 prints. ``--require-cuda`` makes a stage fail on a machine without CUDA (the shell script sets
it unless ``GPU_CHECK_ALLOW_CPU=1``, which the tests use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cuda_reset() -> str:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.get_device_name(0)
    return "cpu"


def _peak_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def emit(record: dict, results: Path | None) -> None:
    """Print ``record`` as one JSON line (and append it to ``results``) on rank 0 only."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    line = json.dumps(record)
    print(line, flush=True)
    if results is not None:
        with results.open("a") as f:
            f.write(line + "\n")


def train_stage(config: Path, out: Path, overrides: list[str], stage: str) -> dict:
    """``pathoucc train CONFIG --out OUT --set ...``; training throughput from its ``metrics.jsonl``."""
    import torch.distributed as dist

    from pathoucc.config import load_config
    from pathoucc.pipeline import train_run
    from pathoucc.runtime import autocast_dtype, select_device

    backends: list[str] = []
    init = dist.init_process_group

    def spy(backend=None, *args, **kwargs):  # the backend the run asks for (nccl on CUDA)
        backends.append(str(backend))
        return init(backend, *args, **kwargs)

    dist.init_process_group = spy
    collective = _collective_check() if "LOCAL_RANK" in os.environ else None
    cfg = load_config(config, overrides)
    device = _cuda_reset()
    start = time.perf_counter()
    report = train_run(cfg, out)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "elapsed_s" in r and "step" in r]
    steps, elapsed = (rows[-1]["step"], rows[-1]["elapsed_s"]) if rows else (0, seconds)
    per_step = cfg.bags.instances_per_batch or cfg.bags.bag_size * cfg.bags.bags_per_batch
    amp = autocast_dtype(select_device(cfg.train.device), cfg.train.amp)
    scores = dict(report.scores) if report.scores is not None else {}
    return {"stage": stage, "device": device, "amp": str(amp).removeprefix("torch.") if amp else "fp32",
            "steps": steps, "train_s": round(elapsed, 3), "total_s": round(seconds, 1),
            "steps_per_s": round(steps / elapsed, 2) if elapsed else None,
            "instances_per_s": round(steps * per_step / elapsed) if elapsed else None,
            "peak_gpu_gb": _peak_gb(), "backend": backends[0] if backends else None,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")), "all_reduce": collective,
            "accuracy": scores.get("accuracy")}


def _collective_check() -> str | None:
    """Under torchrun with one process, pathoucc trains without a process group (WORLD_SIZE 1); join one here
    (NCCL on CUDA, gloo otherwise), all-reduce a tensor on the device and leave: ``"nccl ok"`` or what failed.
    With more processes pathoucc joins the group itself (the spy above records its backend)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    try:
        t = torch.full((4,), 2.0, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
        dist.all_reduce(t)
        return f"{backend} ok" if torch.allclose(t.cpu(), torch.full((4,), 2.0)) else f"{backend}: wrong sum"
    finally:
        dist.destroy_process_group()


def tiles_stage(out: Path, patches: int, size: int, data_dir: Path, region: int = 8) -> dict:
    """A tile file (``pathoucc tile``'s format) of MNIST training digits drawn at ``size`` px in purple on pink,
    with their labels, in square regions of ``region`` x ``region`` patches holding 1-4 digit classes each, and
    those regions as a regions CSV next to it (``slide,x,y,width,height,ucc``): features and the UCC head on them
    without a slide or OpenSlide reading."""
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pathoucc.data.mnist import load_mnist
    from pathoucc.files import atomic_path, write_text
    from pathoucc.slides.tilefile import FORMAT_VERSION

    splits = load_mnist(data_dir, download=False)  # the official training set: train + val
    images = np.concatenate([splits["train"][0], splits["val"][0]])
    labels = np.concatenate([splits["train"][1], splits["val"][1]])
    rng = np.random.default_rng(0)
    per = region * region
    n_regions = max(1, patches // per)
    cols = int(np.ceil(np.sqrt(n_regions)))
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    chosen, coords, rows = [], [], []
    for r in range(n_regions):
        classes = rng.choice(10, 1 + r % 4, replace=False)
        pick = np.concatenate([classes, rng.choice(classes, per - len(classes))])
        chosen += [int(rng.choice(by_class[c])) for c in rng.permutation(pick)]
        x0, y0 = (r % cols) * region * size, (r // cols) * region * size
        coords += [(x0 + (i % region) * size, y0 + (i // region) * size) for i in range(per)]
        rows.append([out.stem, x0, y0, region * size, region * size, len(classes)])
    ink = torch.from_numpy(np.asarray(images[chosen]).reshape(len(chosen), 1, 28, 28)).float() / 255
    ink = F.interpolate(ink, size=(size, size), mode="bilinear", align_corners=False)
    pink, purple = torch.tensor([240, 200, 220.]).view(1, 3, 1, 1), torch.tensor([90, 30, 120.]).view(1, 3, 1, 1)
    rgb = (pink * (1 - ink) + purple * ink).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    side = cols * region * size
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f["coords"] = np.asarray(coords, np.int64)
        f.create_dataset("patches", data=rgb, chunks=(min(64, len(rgb)), size, size, 3))
        f["labels"] = np.asarray(labels[chosen], np.int64)
        f.attrs.update({"patch_size": size, "patch_level": 0, "downsample": 1.0, "stride": size,
                        "level_dimensions": [side, side], "slide_path": str(out.with_suffix(".tif")),
                        "slide_dimensions": [side, side], "mpp": [0.5, 0.5], "format_version": FORMAT_VERSION})
    lines = [",".join(map(str, row)) for row in [["slide", "x", "y", "width", "height", "ucc"], *rows]]
    write_text(out.with_name(out.stem + "_regions.csv"), "\n".join(lines) + "\n")
    return {"stage": "tiles", "patches": len(rgb), "size": size, "regions": n_regions, "file": str(out)}


def weights_stage(model: str, out: Path) -> dict:
    """Random (seeded) weights of a timm model as a local weights file: an encoder of real size, no network."""
    import timm
    import torch

    from pathoucc.files import write_torch

    torch.manual_seed(0)
    net = timm.create_model(model, pretrained=False, num_classes=0)
    write_torch(net.state_dict(), out)
    return {"stage": "weights", "model": model, "parameters": sum(p.numel() for p in net.parameters())}


def features_stage(files: list[Path], out: Path, model: str, weights: Path | None, batch_size: int) -> dict:
    """``pathoucc features`` (the library call), timed: patches/s of encoding and writing."""
    from pathoucc.embed import embed_files, load_encoder
    from pathoucc.options import FeatureOptions

    options = FeatureOptions(model=model, weights=weights, batch_size=batch_size, overwrite=True)
    encoder = load_encoder(model, weights)
    device = _cuda_reset()
    report = embed_files(files, out, options, encoder=encoder)
    if report.failed:
        raise SystemExit(f"features failed: {report.failed}")
    from pathoucc.runtime import autocast_dtype, select_device

    amp = autocast_dtype(select_device(options.device), options.amp)
    return {"stage": "features", "device": device, "amp": str(amp).removeprefix("torch.") if amp else "fp32",
            "model": model, "patches": report.patches,
            "input_size": list(encoder.input_size), "dim": encoder.num_features,
            "seconds": round(report.seconds, 2), "patches_per_s": round(report.patches_per_s),
            "peak_gpu_gb": _peak_gb(), "folder": str(report.folder)}


def summary_table(records: list[dict]) -> str:
    """The check's results as a table: stage, device/precision, throughput, peak GPU memory."""
    lines = [f"{'stage':<12} {'device':<28} {'precision':<9} {'throughput':>22} {'peak GPU GB':>11}"]
    for r in records:
        if r["stage"] in ("tiles", "weights"):
            continue
        speed = (f"{r['patches_per_s']} patches/s" if "patches_per_s" in r
                 else f"{r.get('instances_per_s')} instances/s")
        backend = r.get("backend") or r.get("all_reduce")
        extra = f" ({backend}, world {r['world_size']})" if backend else ""
        peak = "-" if r.get("peak_gpu_gb") is None else f"{r['peak_gpu_gb']:.2f}"
        lines.append(f"{r['stage']:<12} {(r.get('device') or '')[:28]:<28} {r.get('amp', ''):<9} {speed:>22} "
                     f"{peak:>11}{extra}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=None, help="append each stage's JSON line here")
    parser.add_argument("--require-cuda", action="store_true")
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("train")
    p.add_argument("config", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--name", default="train", help="the stage's name in the table")
    p = sub.add_parser("tiles")
    p.add_argument("out", type=Path)
    p.add_argument("--patches", type=int, default=4096)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--data-dir", type=Path, default=ROOT / "data")
    p = sub.add_parser("weights")
    p.add_argument("model")
    p.add_argument("out", type=Path)
    p = sub.add_parser("features")
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p = sub.add_parser("summary")
    p.add_argument("file", type=Path)
    args = parser.parse_args()

    if args.stage == "summary":
        records = [json.loads(line) for line in args.file.read_text().splitlines() if line.strip()]
        print(summary_table(records))
        return
    if args.require_cuda and args.stage in ("train", "features"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: this check is for a GPU machine (GPU_CHECK_ALLOW_CPU=1 runs it anyway)")
    if args.stage == "train":
        record = train_stage(args.config, args.out, args.overrides, args.name)
    elif args.stage == "tiles":
        record = tiles_stage(args.out, args.patches, args.size, args.data_dir)
    elif args.stage == "weights":
        record = weights_stage(args.model, args.out)
    else:
        record = features_stage(args.files, args.out, args.model, args.weights, args.batch_size)
    emit(record, args.results)


if __name__ == "__main__":
    main()
