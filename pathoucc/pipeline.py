"""The pipeline as Python calls, each doing exactly what its command does: :func:`train_run` is
``pathoucc train`` (the UCC training, the refinement when ``refine.steps`` > 0, the held-out scores) and
:func:`refine_run` is ``pathoucc refine`` (the refinement of a trained run, again or continued)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathoucc.cluster.evaluate import EvalResult, evaluate_run
from pathoucc.cluster.kmeans import default_k
from pathoucc.cluster.labelled import PoolExamples, pool_examples
from pathoucc.cluster.named import NamedFit, fit_with_examples, locate_examples, named_cluster_run
from pathoucc.cluster.refine import refine_model
from pathoucc.config import Config, config_from_dict, load_config, save_config
from pathoucc.data.fixed_bags import with_fixed_bags
from pathoucc.data.labelled import labelled_subset
from pathoucc.data.pool import Pool
from pathoucc.data.sources import load_pools
from pathoucc.errors import PathouccError
from pathoucc.files import write_json
from pathoucc.overrides import apply_overrides, parse_override
from pathoucc.run import (
    CONFIG,
    MODEL,
    MODEL_UCC,
    REFINE,
    REFINE_CHECKPOINT,
    REFINE_CURVES,
    REFINE_LOG,
    RESUMABLE,
    clear_weight_outputs,
    config_diff,
    kmeans_path,
    load_checkpoint,
    load_run,
    save_model,
)
from pathoucc.runtime import select_device
from pathoucc.training.distributed import World, joined
from pathoucc.training.plots import plot_refine_curves
from pathoucc.training.train import train_ucc

__all__ = ["TrainReport", "refine_run", "train_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_run` (``pathoucc train``) did.

    run_dir : the run folder.
    refine : the refinement's summary (``refine.json``: ``k``, ``steps`` and per round ``round``, ``patches``,
        ``changed_by_counts``, ``final_loss``, ``seconds``, with patch labels ``kmeans_accuracy`` and
        ``pseudo_label_accuracy``), or None without ``refine.steps``.
    scores : the held-out scores of ``eval.split`` (:class:`~pathoucc.cluster.evaluate.EvalResult`, as in
        ``metrics.json``: with patch labels accuracy, NMI, ARI; without, cluster sizes and count-consistency).
    named : with labelled examples, the run's named k-means (``kmeans-k{K}.npz``, what ``pathoucc segment``
        uses) and its notes; else None.

    Under torchrun, ``refine``, ``scores`` and ``named`` are None on the ranks other than 0 (rank 0 reports
    for the job).
    """

    run_dir: Path
    refine: dict[str, Any] | None
    scores: EvalResult | None
    named: NamedFit | None = None


def train_run(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = False,
              examples: str | Path | None = None, classes: list[str] | None = None) -> TrainReport:
    """Train ``cfg`` into ``run_dir`` (continuing its checkpoint with ``resume``), refine it when ``refine.steps``
    > 0 (an interrupted refinement continues; a finished one runs again from ``model-ucc.pt``), and score it on
    ``cfg.eval.split`` with the device of ``train.device``.

    ``examples`` (a QuPath GeoJSON / ``slide,x,y,class`` CSV of labelled patches of the training slides;
    ``classes``: the names allowed) names the clusters: checked against the training tiles before training, then
    the run's k-means is fitted with them (``pathoucc cluster --examples``). They never enter the training.
    """
    if examples is not None:
        if cfg.data.source != "tiles":
            raise PathouccError("--examples labels patches of tile files; MNIST/IDX runs name their clusters "
                                "with data.labelled_fraction or data.labels_per_class", examples)
        locate_examples(cfg, examples, classes, k=cfg.eval.k)  # a bad file fails before the training
    with joined(cfg.train.device) as world:  # under torchrun: one process group for training and refinement
        run_dir = train_ucc(cfg, run_dir, resume=resume, progress=progress)
        refined = refine_run(run_dir, device=cfg.train.device, progress=progress) if cfg.refine.steps else None
        scores = evaluate_run(run_dir, device=select_device(cfg.train.device)) if world.main else None
        named = None
        if examples is not None and world.main:
            named, _ = named_cluster_run(run_dir, examples, cfg.eval.k, classes, device=cfg.train.device,
                                         progress=progress)
    return TrainReport(run_dir, refined if world.main else None, scores, named)


def refine_run(run_dir: str | Path, overrides: list[str] | None = None, device: str | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Refine the UCC model of a run folder (``model-ucc.pt``, written by the training when ``refine.steps`` > 0)
    with its config's ``refine`` settings, changed by ``overrides`` (``["refine.rounds=2"]``; then saved to
    ``config.yaml``), on ``device`` (auto, cpu or cuda; default ``train.device``). An interrupted refinement with
    the same settings continues from ``refine-checkpoint.pt``. Writes ``model.pt``, ``refine.json``,
    ``refine.jsonl`` and ``refine_curves.png``; returns the summary of
    :func:`~pathoucc.cluster.refine.refine_model`."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL_UCC).is_file():
        raise PathouccError(f"run folder has no {MODEL_UCC} to refine (train it with refine.steps > 0)", run_dir)
    ucc_cfg, model = load_run(run_dir, "cpu", MODEL_UCC)
    cfg = _refine_config(run_dir, ucc_cfg, overrides or [])
    if not cfg.refine.steps:
        raise PathouccError("the run's config has refine.steps 0: nothing to refine", run_dir / CONFIG)
    ckpt = run_dir / REFINE_CHECKPOINT
    with joined(device or cfg.train.device) as world:  # under torchrun: every rank fine-tunes, rank 0 writes
        resume = _resumable(ckpt, cfg, world)
        world.barrier()  # every rank has read the run folder before rank 0 changes it
        torch_device = world.device(select_device(device or cfg.train.device))
        pool = load_pools(cfg.data, ("train",))["train"]
        if pool.region is None:  # MNIST/IDX: bags built from labels; the refinement needs fixed ones
            pool = with_fixed_bags(pool, cfg.bags.bag_size, cfg.bags.ucc_min, cfg.bags.ucc_max, cfg.seed)
        k = cfg.eval.k or default_k(cfg)
        examples = pool_examples(cfg, k, len(pool)) if cfg.refine.examples else None  # its errors before any change
        pairs = _pairwise_labels(cfg, pool, examples)
        if world.main:
            # model.pt, k-means and refinement of earlier weights go; an interrupted refinement's state stays
            clear_weight_outputs(run_dir, keep=(MODEL_UCC, REFINE_CHECKPOINT, REFINE_LOG) if resume else (MODEL_UCC,))
            if overrides:
                save_config(cfg, run_dir / CONFIG)
        summary = refine_model(model.to(torch_device), cfg, pool, k, torch_device, run_dir / REFINE_LOG, progress,
                               checkpoint=ckpt, resume=resume, world=world,
                               examples=None if examples is None or not cfg.refine.fix_examples
                               else examples.clusters, pairs=pairs)
        if world.main:
            if examples is not None:  # the run's k-means named by the same examples (the ``examples`` fit)
                named = fit_with_examples(model, cfg, str(cfg.refine.examples), k, cfg.refine.example_classes,
                                          batch_size=cfg.eval.batch_size, device=torch_device)
                named.kmeans.save(kmeans_path(run_dir, k))
                summary["examples"] = {"labelled_patches": int((examples.clusters >= 0).sum()),
                                       "names": named.kmeans.cluster_names, "notes": examples.notes + named.notes}
                for note in summary["examples"]["notes"]:
                    log.warning("%s", note)
            write_json(run_dir / REFINE, summary)
            plot_refine_curves(run_dir / REFINE_LOG, run_dir / REFINE_CURVES)
            save_model(model, cfg, run_dir / MODEL)
            ckpt.unlink(missing_ok=True)
        world.barrier()
    return summary


def _pairwise_labels(cfg: Config, pool: Pool, examples: PoolExamples | None) -> np.ndarray | None:
    """The labelled patches' classes ``(len(pool),)`` (-1 elsewhere) for ``refine.pairwise_weight`` > 0: those of
    ``refine.examples``, or of ``data.labelled_fraction`` / ``labels_per_class`` (MNIST/IDX, the subset the
    evaluation names the clusters with); None when the term is off."""
    if not cfg.refine.pairwise_weight:
        return None
    if examples is not None:
        return examples.clusters
    rows = labelled_subset(pool.labels, cfg.data.labelled_fraction, cfg.data.labels_per_class, cfg.seed)
    pairs = np.full(len(pool), -1, np.int64)
    pairs[rows] = pool.labels[rows]
    return pairs


REFINE_KEYS = ("refine", "data.labelled_fraction", "data.labels_per_class")  # what `pathoucc refine --set` may change


def _refine_config(run_dir: Path, ucc_cfg: Config, overrides: list[str]) -> Config:
    """The run's config (``config.yaml``, else the UCC model's) with ``refine.*`` ``overrides`` (and the labelled
    share of MNIST/IDX, which the UCC training never reads) applied."""
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if not any(key == k or key.startswith(f"{k}.") for k in REFINE_KEYS):
            raise PathouccError(f"--set {text}: only refine.* settings (and data.labelled_fraction / "
                                "labels_per_class) change when re-refining a run (train a new run for others)",
                                run_dir)
    base = load_config(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else ucc_cfg
    return config_from_dict(apply_overrides(base.to_dict(), overrides), str(run_dir / CONFIG))


def _resumable(path: Path, cfg: Config, world: World) -> dict[str, Any] | None:
    """The refinement checkpoint ``path`` if it continues with ``cfg`` on this many processes, else None."""
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    same = tuple(key for key in RESUMABLE if not key.startswith("refine."))  # keys that change no number
    diff = config_diff(config_from_dict(json.loads(state["config"]), str(path)), cfg, ignore=same)
    if diff or int(state["world_size"]) != world.size:
        log.info("%s: the refinement starts again (%s)", path, "; ".join(diff) or "another number of processes")
        return None
    return state
