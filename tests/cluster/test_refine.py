"""Count-consistent self-training (pathoucc.cluster.refine): pseudo-labels that respect each region's count, a
fine-tune that learns them through the training loop, and its place in a run (model-ucc.pt / model.pt, the same
result when run again or resumed after an interruption, `pathoucc refine`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import one_line_error, region_pool, run_cli
from slide_fixtures import CELL

from pathoucc.cluster import refine as refine_module
from pathoucc.cluster.evaluate import evaluate_run
from pathoucc.cluster.features import extract_features
from pathoucc.cluster.kmeans import fit_kmeans
from pathoucc.cluster.metrics import clustering_accuracy
from pathoucc.cluster.refine import count_consistent_labels, refine_model
from pathoucc.config import ModelConfig, config_from_dict
from pathoucc.data.pool import InstancePool
from pathoucc.data.sources import load_pools
from pathoucc.data.stream import StreamingPool
from pathoucc.errors import PathouccError, TrainingInterrupted
from pathoucc.models import create_model
from pathoucc.pipeline import refine_run, train_run
from pathoucc.run import REFINE_CHECKPOINT, read_weights
from pathoucc.slides.tiler import tile_slide
from pathoucc.training.train import train_ucc


def _distances(nearest: list[int], k: int = 3) -> np.ndarray:
    """Distances where patch i is nearest to cluster nearest[i] (0.0), then to the next cluster (1.0), ..."""
    d = np.full((len(nearest), k), 9.0, np.float32)
    for i, c in enumerate(nearest):
        d[i, c], d[i, (c + 1) % k] = 0.0, 1.0
    return d


def test_pseudo_labels_keep_the_regions_most_common_clusters() -> None:
    #               region 0 (ucc 1)  | region 1 (ucc 2)       | outside | region 2 (ucc 3, 1 cluster seen)
    nearest = [0, 0, 0, 1, 0, 0, 1, 1, 2, 2, 2, 1, 1, 1]
    region = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, -1, 2, 2]
    labels = count_consistent_labels(_distances(nearest), np.array(region), np.array([1, 2, 3]))
    # region 0: cluster 0 holds 3 of 4; its stray patch (nearest 1) takes the only kept cluster
    assert labels[:4].tolist() == [0, 0, 0, 0]
    # region 1: clusters 2 (3 patches) and 0 (2, tied with 1: the lower index) are kept; a patch nearest 1 takes
    # its next nearest kept cluster (distance 1.0 to cluster 2)
    assert labels[4:11].tolist() == [0, 0, 2, 2, 2, 2, 2]
    assert labels[11] == -1  # outside every region: no label
    assert labels[12:].tolist() == [1, 1]  # fewer clusters than the count: the ones seen are kept
    for r, ucc in enumerate([1, 2, 3]):
        assert len(set(labels[np.array(region) == r].tolist())) <= ucc


def test_pseudo_labels_reject_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="do not match"):
        count_consistent_labels(np.zeros((3, 2)), np.zeros(4, np.int64), np.ones(1, np.int64))
    with pytest.raises(ValueError, match="has no count"):
        count_consistent_labels(np.zeros((2, 2)), np.array([0, 1]), np.ones(1, np.int64))


def test_refinement_learns_count_corrected_clusters(digits) -> None:
    pool = region_pool(digits)
    cfg = config_from_dict({
        "seed": 0, "data": {"source": "tiles"},
        "model": {"backbone": "conv", "widths": [8, 16], "in_chans": 1, "input_size": 8, "num_features": 6,
                  "mlp": [8]},
        "train": {"amp": False, "log_every": 10}, "eval": {"n_init": 2, "batch_size": 256},
        "refine": {"steps": 100, "rounds": 3, "lr": 3e-3, "batch_size": 64},
    })
    torch.manual_seed(0)
    model = create_model(cfg.model, 2)  # untrained: features of random convolutions

    def accuracy() -> float:
        features = extract_features(model, pool, 256)
        return clustering_accuracy(pool.labels, fit_kmeans(features, 4, 0, 2).labels_)

    before = accuracy()
    ucc_weights = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    summary = refine_model(model, cfg, pool, k=4)
    after = accuracy()
    assert summary["k"] == 4 and len(summary["rounds"]) == 3 and summary["rounds"][0]["patches"] == len(pool)
    # the counts correct k-means: in this data the pseudo-labels of each round beat the clusters they came from
    # (measured 0.52 -> 0.59, 0.74 -> 0.77, 0.67 -> 0.74)
    for r in summary["rounds"]:
        assert r["pseudo_label_accuracy"] > r["kmeans_accuracy"] and 0 < r["changed_by_counts"] < 1
    # and the fine-tuned features cluster better than the untrained ones (measured 0.49 -> 0.77)
    assert after > before + 0.2
    for k, v in model.classifier.state_dict().items():  # the count classifier is not trained here
        assert torch.equal(v, ucc_weights[k])


def test_refine_needs_count_regions(digits) -> None:
    images, labels = digits
    cfg = config_from_dict({"data": {"source": "tiles"}, "refine": {"steps": 5}})
    model = create_model(ModelConfig(in_chans=1, input_size=8, widths=[8], mlp=[4]), 2)
    with pytest.raises(PathouccError, match="count-labelled regions"):
        refine_model(model, cfg, InstancePool(images[:50], labels[:50]), k=3)


def test_refine_on_built_bags_uses_fixed_bags(tiny_config, tmp_path) -> None:
    """MNIST/IDX: the refinement deals the training instances into fixed bags of the config's size and counts."""
    from pathoucc.pipeline import train_run

    tiny_config["refine"] = {"steps": 4, "rounds": 2, "batch_size": 32}
    report = train_run(config_from_dict(tiny_config), tmp_path / "run")
    rounds = report.refine["rounds"]
    assert len(rounds) == 2 and rounds[0]["patches"] > 0.9 * 1197  # the training split (80 % of 1497), in bags
    assert 0 <= rounds[0]["changed_by_counts"] < 1 and "pseudo_label_accuracy" in rounds[0]
    assert "count_kmeans" in rounds[0]  # refine.count_iters: 30 by default
    assert not _same_weights(tmp_path / "run" / "model.pt", tmp_path / "run" / "model-ucc.pt")


def test_refine_config_keys() -> None:
    with pytest.raises(PathouccError, match=r"unknown key 'refine.round'.*valid keys here: steps, rounds"):
        config_from_dict({"refine": {"round": 2}})


@pytest.fixture(scope="module")
def region_tiles(digit_slide, tmp_path_factory) -> Path:
    """The digit slide tiled with 4 x 4-patch regions labelled from its mask."""
    return tile_slide(digit_slide["slide"], tmp_path_factory.mktemp("refine") / "tiles", patch_size=CELL,
                      stride=CELL, level=0, region_size=4 * CELL, annotations=digit_slide["mask"], workers=1)


def test_refinement_streams_tiles_exactly_as_in_memory(region_tiles: Path) -> None:
    weights = []
    for streaming in (False, True):
        cfg = config_from_dict({
            "seed": 1, "data": {"source": "tiles", "train_tiles": [str(region_tiles)], "streaming": streaming,
                                "augment": [{"name": "HorizontalFlip", "p": 0.5}]},
            "model": {"backbone": "conv", "widths": [8], "in_chans": 3, "input_size": CELL, "num_features": 4,
                      "mlp": [4]},
            "train": {"amp": False}, "eval": {"n_init": 1}, "refine": {"steps": 4, "batch_size": 16},
        })
        pool = load_pools(cfg.data, ("train",))["train"]
        assert isinstance(pool, StreamingPool) == streaming
        torch.manual_seed(0)
        model = create_model(cfg.model, 4)
        refine_model(model, cfg, pool, k=3)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_refined_run_keeps_the_ucc_model_and_repeats_exactly(region_tiles: Path, tmp_path: Path) -> None:
    tiles = region_tiles
    cfg = config_from_dict({
        "name": "refined", "seed": 0,
        "data": {"source": "tiles", "train_tiles": [str(tiles)], "val_fraction": 0.2},
        "bags": {"bag_size": 4, "bags_per_batch": 2, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8, 16], "in_chans": 3, "input_size": CELL, "num_features": 6,
                  "mlp": [8]},
        "train": {"steps": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 5, "val_bags": 2},
        "eval": {"k": 10, "n_init": 1, "batch_size": 128},
        "refine": {"steps": 12, "batch_size": 32},
    })
    run = train_ucc(cfg, tmp_path / "run")
    assert (run / "model-ucc.pt").is_file() and not (run / "model.pt").exists()  # refine_run writes model.pt
    with pytest.raises(PathouccError, match=r"no refined model \(model\.pt\).*run `pathoucc refine .*run`"):
        evaluate_run(run)
    refine_run(run)
    ucc, refined = read_weights(run / "model-ucc.pt")["model"], read_weights(run / "model.pt")["model"]
    assert not torch.equal(ucc["head.weight"], refined["head.weight"])  # the features moved
    assert torch.equal(ucc["classifier.0.weight"], refined["classifier.0.weight"])
    summary = json.loads((run / "refine.json").read_text())
    assert summary["k"] == 10 and summary["steps"] == 12 and len(summary["rounds"]) == 1
    assert summary["rounds"][0]["patches"] > 0 and "pseudo_label_accuracy" in summary["rounds"][0]
    assert [json.loads(x)["step"] for x in (run / "refine.jsonl").read_text().splitlines()] == [5, 10, 12]
    assert (run / "refine_curves.png").stat().st_size > 0
    # --resume of a finished run: training is done; files of the old weights go (a k-means fitted on them), and
    # the refinement, always from model-ucc.pt, repeats bit for bit
    (run / "kmeans-k10.npz").write_bytes(b"fitted on older features")
    train_ucc(cfg, run, resume=True)
    assert not (run / "kmeans-k10.npz").exists() and not (run / "model.pt").exists()
    refine_run(run)
    again = read_weights(run / "model.pt")["model"]
    assert all(torch.equal(refined[k], again[k]) for k in refined)
    # switching the refinement off on --resume: model.pt is the UCC model again, no stale refinement files
    cfg.refine.steps = 0
    train_ucc(cfg, run, resume=True)
    assert torch.equal(read_weights(run / "model.pt")["model"]["head.weight"], ucc["head.weight"])
    assert not any((run / n).exists() for n in ("model-ucc.pt", "refine.json", "refine.jsonl"))
    with pytest.raises(PathouccError, match=r"no model-ucc\.pt to refine"):
        refine_run(run)


def _slides_config(tiles: Path, **refine) -> dict:
    return {
        "name": "slides", "seed": 0,
        "data": {"source": "tiles", "train_tiles": [str(tiles)], "test_tiles": [str(tiles)], "val_fraction": 0.2},
        "bags": {"bag_size": 4, "bags_per_batch": 2, "ucc_min": 1, "ucc_max": 4},
        "model": {"backbone": "conv", "widths": [8], "in_chans": 3, "input_size": CELL, "num_features": 4,
                  "mlp": [4]},
        "train": {"steps": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 2, "val_bags": 2},
        "eval": {"k": 10, "n_init": 1},
        "refine": {"steps": 6, "batch_size": 16} | refine,
    }


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = read_weights(a)["model"], read_weights(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_train_is_the_python_call_and_refine_re_refines(monkeypatch, capsys, region_tiles: Path,
                                                             tmp_path: Path) -> None:
    config = tmp_path / "slides.yaml"
    config.write_text(yaml.safe_dump(_slides_config(region_tiles)))
    run = tmp_path / "run"
    code, out, _ = run_cli(monkeypatch, capsys, "train", str(config), "--out", str(run))
    assert code == 0 and "refined: 1 round(s) of 6 steps" in out and "clustering" in out
    # the Python call does what the command does: the same files, the same weights, the same scores
    report = train_run(config_from_dict(_slides_config(region_tiles)), tmp_path / "python")
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(p.name for p in report.run_dir.iterdir())
    assert {"model.pt", "model-ucc.pt", "refine.json", "metrics.json"} <= set(names) and REFINE_CHECKPOINT not in names
    for name in ("model.pt", "model-ucc.pt", "checkpoint.pt"):
        assert _same_weights(run / name, report.run_dir / name), name
    assert report.scores == json.loads((run / "metrics.json").read_text())["test"] | {
        "seconds": report.scores["seconds"]}
    assert report.refine["rounds"][0]["changed_by_counts"] == json.loads(
        (run / "refine.json").read_text())["rounds"][0]["changed_by_counts"]
    # re-refining without retraining: `train --resume --set refine.*` and `pathoucc refine RUN --set refine.*`
    code, out, _ = run_cli(monkeypatch, capsys, "train", str(config), "--out", str(run), "--resume",
                           "--set", "refine.rounds=2")
    assert code == 0 and "refined: 2 round(s) of 6 steps" in out
    assert len(json.loads((run / "refine.json").read_text())["rounds"]) == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["refine"]["rounds"] == 2
    ucc_before = (run / "model-ucc.pt").read_bytes()
    code, out, _ = run_cli(monkeypatch, capsys, "refine", str(run), "--set", "refine.rounds=1", "--device", "cpu")
    assert code == 0 and "refined: 1 round(s) of 6 steps" in out and "clustering" not in out
    assert (run / "model-ucc.pt").read_bytes() == ucc_before  # no retraining
    assert _same_weights(run / "model.pt", report.run_dir / "model.pt")  # one round again: the first result
    assert yaml.safe_load((run / "config.yaml").read_text())["refine"]["rounds"] == 1
    assert not (run / "metrics.json").exists()  # the scores of the earlier model.pt went with it
    code, out, _ = run_cli(monkeypatch, capsys, "refine", "--help")
    assert code == 0 and "--set" in out and "--device" in out
    code, _, err = run_cli(monkeypatch, capsys, "refine", str(run), "--set", "train.lr=0.1")
    assert code == 2
    one_line_error(err, "train.lr=0.1", "only refine.* settings")


class _Killed(BaseException):
    """Stands for a hard kill: nothing in the process reacts."""


@pytest.mark.parametrize(("stop", "at", "saved"), [("SIGINT", (2, 3), (2, 4)), ("kill", (1, 5), (1, 4)),
                                                   ("kill", (2, 1), (1, 6))])
def test_interrupted_refinement_resumes_to_the_same_weights(monkeypatch, region_tiles: Path, tmp_path: Path,
                                                            stop: str, at: tuple, saved: tuple) -> None:
    """Stopped at step ``at`` = (round, step): a signal finishes the step and saves; a kill leaves the last
    checkpoint (every 2 steps, and at each round's end). Either way refine_run continues to the same weights, log
    and summary as a refinement never stopped."""
    cfg = config_from_dict(_slides_config(region_tiles, rounds=2, steps=6) | {"name": "resume"})
    cfg.train.log_every = 1
    train_ucc(cfg, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "stopped")
    refine_run(tmp_path / "full")
    original = refine_module.refine_step

    def stopping_step(state, batch, lr, steps, **terms) -> dict:
        if (state.meta["round"], state.step) == at:
            if stop == "kill":
                raise _Killed
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step still finishes
        return original(state, batch, lr, steps, **terms)

    monkeypatch.setattr(refine_module, "refine_step", stopping_step)
    with pytest.raises(TrainingInterrupted if stop == "SIGINT" else _Killed):
        refine_run(tmp_path / "stopped")
    monkeypatch.undo()
    state = read_weights(tmp_path / "stopped" / REFINE_CHECKPOINT)
    assert (state["round"], state["step"]) == saved and not (tmp_path / "stopped" / "model.pt").exists()
    refine_run(tmp_path / "stopped")
    assert _same_weights(tmp_path / "full" / "model.pt", tmp_path / "stopped" / "model.pt")
    assert not (tmp_path / "stopped" / REFINE_CHECKPOINT).exists()

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                for line in (run / "refine.jsonl").read_text().splitlines()]

    assert records(tmp_path / "full") == records(tmp_path / "stopped")
    assert [(r["round"], r["step"]) for r in records(tmp_path / "full")] == [(1 + i // 6, 1 + i % 6) for i in range(12)]

    def summary(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in json.loads((run / "refine.json").read_text())["rounds"]]

    assert summary(tmp_path / "full") == summary(tmp_path / "stopped")


def test_regions_counting_more_classes_than_k_are_a_logged_count(digits, caplog) -> None:
    """A region whose count exceeds the clusters the run can find keeps all of them (its patches keep their
    nearest cluster); the refinement says how many such regions there are and goes on."""
    images, labels = digits
    region = np.repeat(np.arange(10), 20)
    counts = np.array([1, 2, 3, 4, 5, 1, 2, 5, 2, 1])  # two regions count 5 > k = 4
    pool = InstancePool(images[:200], labels[:200], region, counts)
    cfg = config_from_dict({"data": {"source": "tiles"}, "refine": {"steps": 2, "batch_size": 16},
                            "model": {"in_chans": 1, "input_size": 8, "widths": [8], "mlp": [4], "num_features": 4},
                            "eval": {"n_init": 1}})
    model = create_model(cfg.model, 2)
    with caplog.at_level("WARNING", logger="pathoucc.cluster.refine"):
        summary = refine_model(model, cfg, pool, k=4)
    assert len(summary["rounds"]) == 1
    assert "2 of 10 regions count more classes than the k=4 clusters" in caplog.text
