"""Large-bag benchmark on MNIST: the paper's bag setting over seeds, and accuracy against bag size.

    python tools/bench_bags.py seeds --config configs/mnist-bag32.yaml --seeds 0 1 2 --out bench/bag32
    python tools/bench_bags.py sweep --sizes 4 8 16 32 64 128 --minutes 5 --out bench/bag-sweep
    python tools/bench_bags.py sweep --sizes 64 --minutes 3 --split val --out bench/cliff --set model.sigma=0.05

``seeds`` trains the config once per seed and scores k-means (k = 10) on the official 10 000 test images.
``sweep`` trains the same config with every bag size under the same wall-clock budget (``train.max_minutes``;
the cosine schedule then follows the clock), with ``instances_per_batch = max(640, 10 * bag_size)`` so a
one-digit bag never repeats an instance, and scores ``--split`` (``val``, the last 10 000 training images, to
choose settings; ``test`` to report them). Each training runs in its own process (its peak RSS is its own).
Writes ``results.json`` and ``results.md`` into ``--out`` (and the sweep's ``bag-size-sweep.png``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_mnist import run_child  # noqa: E402
from repo_paths import command, header_lines, machine, relative  # noqa: E402


def _config(path: Path, overrides: list[str]) -> dict:
    from pathoucc.config import load_config

    cfg = load_config(path, overrides).to_dict()
    cfg["data"]["root"] = relative(cfg["data"]["root"])
    return cfg


def _row(res: dict, **extra) -> dict:
    m = res["metrics"]
    return extra | {"accuracy": m["accuracy"], "nmi": m["nmi"], "ari": m["ari"], "wall_s": res["wall_s"],
                    "peak_rss_gb": res["peak_rss_gb"]}


def seeds(args: argparse.Namespace) -> dict:
    data = f"data.root={args.data_root}"
    runs = []
    for seed in args.seeds:
        over = [data, f"seed={seed}", *args.overrides]
        res = run_child(args.config, args.out / f"seed{seed}", over)
        cfg = _config(args.config, over)
        runs.append(_row(res, seed=seed, bag_size=cfg["bags"]["bag_size"]))
        print(json.dumps(runs[-1]), flush=True)
    accs = [r["accuracy"] for r in runs]
    return {"benchmark": "bag-size seeds", "config_file": relative(args.config),
            "overrides": args.overrides, "config": _config(args.config, [data, *args.overrides]), "runs": runs,
            "median_accuracy": statistics.median(accs),
            "max_wall_min": max(r["wall_s"] for r in runs) / 60,
            "max_peak_rss_gb": max(r["peak_rss_gb"] for r in runs)}


def sweep(args: argparse.Namespace) -> dict:
    data = f"data.root={args.data_root}"
    runs, configs = [], {}
    for size in args.sizes:
        over = [data, f"seed={args.seeds[0]}", f"bags.bag_size={size}",
                f"bags.instances_per_batch={max(640, 10 * size)}", f"train.max_minutes={args.minutes}",
                f"eval.split={args.split}", *args.overrides,
                f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}"]
        res = run_child(args.config, args.out / f"bag{size}", over)
        steps = _last_step(args.out / f"bag{size}")
        runs.append(_row(res, bag_size=size, steps=steps, seed=args.seeds[0]))
        configs[str(size)] = _config(args.config, over)
        print(json.dumps(runs[-1]), flush=True)
    return {"benchmark": "bag-size sweep", "config_file": relative(args.config), "overrides": args.overrides,
            "budget_min": args.minutes, "split": args.split,
            "configs": configs, "runs": runs}


def _last_step(run: Path) -> int:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return max(r["step"] for r in lines)


def write_markdown(r: dict, path: Path) -> None:
    lines = [*header_lines(r),
             f"| bag size | seed | steps | {r.get('split', 'test')} accuracy | NMI | ARI | wall-clock (min) | "
             "peak RSS (GB) |",
             "|---|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        lines.append(f"| {run['bag_size']} | {run['seed']} | {run.get('steps', '')} | {run['accuracy']:.4f} | "
                     f"{run['nmi']:.4f} | {run['ari']:.4f} | {run['wall_s'] / 60:.1f} | {run['peak_rss_gb']:.2f} |")
    if "median_accuracy" in r:
        lines += ["", f"Median test accuracy: **{r['median_accuracy']:.4f}**; longest run "
                  f"{r['max_wall_min']:.1f} min; highest peak RSS {r['max_peak_rss_gb']:.2f} GB."]
    path.write_text("\n".join(lines) + "\n")


def _label(r: dict) -> str:
    return ", ".join(r.get("overrides") or []) or "kde_pool=mean, as committed"


def plot(r: dict, path: Path, baseline: dict | None = None) -> None:
    """Accuracy and NMI against bag size; ``baseline``: an earlier sweep drawn dashed for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [x["bag_size"] for x in r["runs"]]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for sweep, style, name in ((r, "-", _label(r)), *(((baseline, "--", _label(baseline)),) if baseline else ())):
        at = [x["bag_size"] for x in sweep["runs"]]
        ax.plot(at, [x["accuracy"] for x in sweep["runs"]], style + "o", color="C0", label=f"accuracy ({name})")
        ax.plot(at, [x["nmi"] for x in sweep["runs"]], style + "s", color="C1", label=f"NMI ({name})")
    lowest = min(x["accuracy"] for sweep in (r, baseline or r) for x in sweep["runs"])
    ax.axhline(0.984, color="grey", ls="--", lw=1, label="published UCC, bags of 32 (98.4 %)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("instances per bag (every bag of the run)")
    ax.set_ylabel(f"MNIST {r.get('split', 'test')} (10 000 images)")
    ax.set_title(f"same budget: {r['budget_min']:g} min of training on {r['machine']['cpus']} CPU cores", fontsize=9)
    ax.set_ylim(min(0.8, lowest - 0.02), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["seeds", "sweep"])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/mnist-bag32.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--minutes", type=float, default=5.0, help="sweep: training budget per bag size")
    parser.add_argument("--steps", type=int, default=100_000, help="sweep: step cap (the budget ends first)")
    parser.add_argument("--out", type=Path, default=Path("bench/bags"))
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--baseline", type=Path, help="sweep: an earlier sweep's results.json, drawn dashed")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="sweep: the split scored (val to choose settings, test to report them)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override a.b=value applied to every run (e.g. model.sigma=0.05)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"date": date.today().isoformat(), "machine": machine(),
              "command": command("bench_bags.py", sys.argv[1:])}
    result |= seeds(args) if args.mode == "seeds" else sweep(args)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, args.out / "results.md")
    if args.mode == "sweep":
        baseline = json.loads(args.baseline.read_text()) if args.baseline else None
        plot(result, args.out / "bag-size-sweep.png", baseline)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
