"""MNIST benchmark: clustering accuracy, wall-clock time and peak memory of ``configs/mnist.yaml`` over seeds,
and accuracy against training time for ``mnist.yaml`` and ``mnist-paper.yaml`` under the same time budget.

    python tools/bench_mnist.py --out bench/mnist --seeds 0 1 2

Each training runs in its own process (so its peak RSS is its own). Weight snapshots taken during training are
scored afterwards on the official 10 000-image test set, so the curves cost the training nothing. Writes
``results.json``, ``results.md`` (tables) and ``accuracy-vs-time.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from repo_paths import command, header_lines, relative  # noqa: E402


def child(config: str, out: str, overrides: list[str]) -> None:
    """Train in this process; print wall-clock seconds and peak RSS as JSON on the last line."""
    from pathoucc.cluster.evaluate import evaluate_run
    from pathoucc.config import load_config
    from pathoucc.training.train import train_ucc

    start = time.perf_counter()
    metrics = evaluate_run(train_ucc(load_config(config, overrides), out))
    wall = time.perf_counter() - start
    rss_gb = peak_rss_gb()
    print(json.dumps({"wall_s": wall, "peak_rss_gb": rss_gb, "metrics": metrics}))


def peak_rss_gb() -> float:
    """This process's peak resident memory: VmHWM (``ru_maxrss`` of an exec'd child also counts its parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_child(config: Path, out: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", str(config), str(out), *overrides]
    print("$", " ".join(relative(c) for c in cmd[1:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def curve(run: Path) -> list[dict]:
    from pathoucc.cluster.evaluate import evaluate_snapshots

    return evaluate_snapshots(run, "test")


def time_to(rows: list[dict], accuracy: float) -> float | None:
    return next((r["elapsed_s"] for r in rows if r["accuracy"] >= accuracy), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/mnist.yaml")
    parser.add_argument("--paper-config", type=Path, default=ROOT / "configs/mnist-paper.yaml")
    parser.add_argument("--snapshot-every", type=int, default=250, help="steps between weight snapshots")
    parser.add_argument("--paper-snapshot-every", type=int, default=50)
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--skip-paper", action="store_true",
                        help="only the seeds of --config (no same-budget run of --paper-config)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = f"data.root={args.data_root}"

    runs = []
    for seed in args.seeds:
        out = args.out / f"mnist-seed{seed}"
        res = run_child(args.config, out, [data, f"seed={seed}", f"train.snapshot_every={args.snapshot_every}"])
        res |= {"seed": seed, "curve": curve(out)}
        runs.append(res)
        print(f"seed {seed}: accuracy {res['metrics']['accuracy']:.4f}, {res['wall_s'] / 60:.1f} min, "
              f"{res['peak_rss_gb']:.2f} GB", flush=True)

    # the paper's setting with the same training-time budget as our median run
    budget_s = statistics.median(r["curve"][-1]["elapsed_s"] for r in runs)
    paper = None
    if not args.skip_paper:
        out = args.out / "mnist-paper"
        paper = run_child(args.paper_config, out, [data, f"seed={args.seeds[0]}",
                                                   f"train.max_minutes={budget_s / 60}",
                                                   f"train.snapshot_every={args.paper_snapshot_every}"])
        paper["curve"] = curve(out)

    from pathoucc.cluster.evaluate import evaluate_raw_pixels
    from pathoucc.config import load_config

    raw = evaluate_raw_pixels(load_config(args.config, [data]), "test")
    configs = {relative(args.config): load_config(args.config, [data]).to_dict()}
    if paper is not None:
        configs[relative(args.paper_config)] = load_config(args.paper_config, [data]).to_dict()
    for c in configs.values():
        c["data"]["root"] = relative(c["data"]["root"])

    accs = [r["metrics"]["accuracy"] for r in runs]
    paper_best = max(r["accuracy"] for r in paper["curve"]) if paper else None
    ours_t = [time_to(r["curve"], paper_best) for r in runs] if paper else None
    result = {
        "date": date.today().isoformat(),
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "command": command("bench_mnist.py", sys.argv[1:]),
        "configs": configs,  # as loaded; each run adds its seed, snapshot and budget overrides (see "command")
        "runs": runs, "paper": paper, "raw_pixels": raw,
        "median_accuracy": statistics.median(accs), "budget_s": budget_s,
        "paper_best_accuracy": paper_best, "ours_time_to_paper_best_s": ours_t,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, args.out / "results.md")
    plot(result, args.out / "accuracy-vs-time.png")
    print((args.out / "results.md").read_text())


def write_markdown(r: dict, path: Path) -> None:
    lines = [*header_lines(r),
             "| run | seed | test accuracy | NMI | ARI | train steps | wall-clock (min) | peak RSS (GB) |",
             "|---|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        m = run["metrics"]
        lines.append(f"| mnist.yaml | {run['seed']} | {m['accuracy']:.4f} | {m['nmi']:.4f} | {m['ari']:.4f} | "
                     f"{run['curve'][-1]['step']} | {run['wall_s'] / 60:.1f} | {run['peak_rss_gb']:.2f} |")
    p = r["paper"]
    if p is not None:
        m = p["metrics"]
        lines.append(f"| mnist-paper.yaml (same budget) | {r['runs'][0]['seed']} | {m['accuracy']:.4f} | "
                     f"{m['nmi']:.4f} | {m['ari']:.4f} | {p['curve'][-1]['step'] if p['curve'] else 0} | "
                     f"{p['wall_s'] / 60:.1f} | {p['peak_rss_gb']:.2f} |")
    raw = r["raw_pixels"]
    lines.append(f"| k-means on raw pixels | – | {raw['accuracy']:.4f} | {raw['nmi']:.4f} | {raw['ari']:.4f} "
                 "| – | – | – |")
    lines += ["", f"Median test accuracy of mnist.yaml: **{r['median_accuracy']:.4f}**. Training-time budget "
              f"(median of mnist.yaml): {r['budget_s'] / 60:.1f} min."]
    if p is not None:
        lines += [f"Best accuracy of mnist-paper.yaml within that budget: {r['paper_best_accuracy']:.4f}; "
                  "mnist.yaml reached it after "
                  + ", ".join("never" if t is None else f"{t / 60:.2f} min" for t in r["ours_time_to_paper_best_s"])
                  + " (per seed)."]
    path.write_text("\n".join(lines) + "\n")


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in r["runs"]:
        c = run["curve"]
        ax.plot([x["elapsed_s"] / 60 for x in c], [x["accuracy"] for x in c], "-o", ms=3,
                label=f"mnist.yaml seed {run['seed']}")
    if r["paper"] is not None:
        c = r["paper"]["curve"]
        ax.plot([x["elapsed_s"] / 60 for x in c], [x["accuracy"] for x in c], "-s", ms=3, label="mnist-paper.yaml")
    ax.axhline(0.984, color="grey", ls="--", lw=1, label="published UCC (98.4 %)")
    ax.axhline(r["raw_pixels"]["accuracy"], color="grey", ls=":", lw=1, label="k-means on raw pixels")
    ax.set_xlabel("training time on this CPU (min)")
    ax.set_ylabel("clustering accuracy, MNIST test")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
