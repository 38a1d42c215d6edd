"""Training end to end on tiny data: outputs, reproducibility, resume after a kill, evaluation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from pathoucc.cluster.evaluate import evaluate_raw_pixels, evaluate_run
from pathoucc.config import config_from_dict
from pathoucc.errors import PathouccError
from pathoucc.pipeline import TrainReport, train_run
from pathoucc.run import CHECKPOINT, load_run
from pathoucc.training import train as train_module
from pathoucc.training.schedule import cosine, lr_factor, refine_lr_factor
from pathoucc.training.train import train_ucc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["model"]


def test_train_writes_a_complete_run(tmp_path: Path, tiny_config: dict) -> None:
    run = tmp_path / "run"
    report = train_run(config_from_dict(tiny_config), run)  # what `pathoucc train` does: train, then score
    assert isinstance(report, TrainReport) and report.run_dir == run and report.refine is None
    result = report.scores
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "model.pt", "training_curves.png", "metrics.json",
                 "train.log"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"ucc_loss", "ucc_acc", "recon_loss", "lr"} <= set(records[0])
    assert "val_ucc_loss" in records[2] and "val_ucc_acc" in records[5]
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert saved == result and result["num_instances"] == 300
    # 6 steps from seed 3 measured 0.36 on this set; a clustering by chance matches the largest class (~0.1)
    assert result["accuracy"] > 0.25
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*"))


def test_same_seed_same_result(tmp_path: Path, tiny_config: dict) -> None:
    train_ucc(config_from_dict(tiny_config), tmp_path / "a", progress=False)
    train_ucc(config_from_dict(tiny_config), tmp_path / "b", progress=False)
    for k, v in _weights(tmp_path / "a").items():
        torch.testing.assert_close(v, _weights(tmp_path / "b")[k], rtol=0, atol=0)
    tiny_config["seed"] = 4
    train_ucc(config_from_dict(tiny_config), tmp_path / "c", progress=False)
    assert not torch.equal(_weights(tmp_path / "a")["head.weight"], _weights(tmp_path / "c")["head.weight"])


class _Killed(BaseException):
    """Stands for a hard kill (SIGKILL, power loss): nothing in the process gets to react."""


# a KeyboardInterrupt raised inside a step (a second Ctrl-C) writes nothing mid-step: the last periodic checkpoint
# stands, as after a kill; a single Ctrl-C or SIGTERM finishes the step first (tests/test_resume.py)
@pytest.mark.parametrize(("stop", "checkpoint_step"), [(_Killed, 4), (KeyboardInterrupt, 4)])
def test_stopped_run_resumes_to_the_same_weights(tmp_path: Path, tiny_config: dict, monkeypatch, stop,
                                                 checkpoint_step) -> None:
    cfg = config_from_dict(tiny_config)
    train_ucc(cfg, tmp_path / "full", progress=False)

    original = train_module.ucc_step

    def dying_step(state, batch, cfg) -> dict:
        if state.step == 5:
            raise stop
        return original(state, batch, cfg)

    monkeypatch.setattr(train_module, "ucc_step", dying_step)
    with pytest.raises(stop):
        train_ucc(cfg, tmp_path / "killed", progress=False)
    # the last periodic checkpoint (every 2 steps) survives
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)["step"] == checkpoint_step
    assert not (tmp_path / "killed" / "model.pt").exists()
    monkeypatch.setattr(train_module, "ucc_step", original)

    with pytest.raises(PathouccError, match="already holds a checkpoint"):
        train_ucc(cfg, tmp_path / "killed", progress=False)
    train_ucc(cfg, tmp_path / "killed", resume=True, progress=False)
    for k, v in _weights(tmp_path / "full").items():
        torch.testing.assert_close(v, _weights(tmp_path / "killed")[k], rtol=0, atol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_needs_a_checkpoint(tmp_path: Path, tiny_config: dict) -> None:
    with pytest.raises(PathouccError, match="no checkpoint to resume from"):
        train_ucc(config_from_dict(tiny_config), tmp_path / "new", resume=True)


def test_corrupt_checkpoint_is_reported(tmp_path: Path, tiny_config: dict) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT).write_bytes(b"\x00garbage")
    with pytest.raises(PathouccError, match=r"checkpoint\.pt: corrupt"):
        train_ucc(config_from_dict(tiny_config), run, resume=True)


def test_time_budget_stops_training(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["train"] |= {"steps": 100_000, "max_minutes": 0.001}
    train_ucc(config_from_dict(tiny_config), tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] < 100


def test_evaluate_run_and_raw_pixel_baseline(tmp_path: Path, tiny_config: dict) -> None:
    cfg = config_from_dict(tiny_config)
    train_ucc(cfg, tmp_path / "run", progress=False)
    val = evaluate_run(tmp_path / "run", split="val")
    assert val["split"] == "val" and val["num_instances"] == 299
    raw = evaluate_raw_pixels(cfg)
    # k-means on the raw 8×8 digits is a strong baseline on this tiny set: well above chance
    assert raw["accuracy"] > 0.5 and raw["method"] == "kmeans-raw-pixels"
    _, model = load_run(tmp_path / "run")
    assert not model.training


def test_wrong_input_shape_is_reported(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["model"]["input_size"] = 28
    with pytest.raises(PathouccError, match=r"model expects 1×28×28 instances, data has 1×8×8"):
        train_ucc(config_from_dict(tiny_config), tmp_path / "run")


def test_augmentations_from_the_config(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["data"]["augment"] = [{"name": "HorizontalFlip", "p": 0.5}]
    train_ucc(config_from_dict(tiny_config), tmp_path / "run", progress=False)
    tiny_config["data"]["augment"] = [{"name": "NoSuchTransform"}]
    with pytest.raises(PathouccError, match="NoSuchTransform"):
        train_ucc(config_from_dict(tiny_config), tmp_path / "run2", progress=False)


def test_onecycle_warms_up_then_anneals(tiny_config: dict) -> None:
    tiny_config["train"] |= {"steps": 100, "schedule": "onecycle"}
    cfg = config_from_dict(tiny_config)
    factors = [lr_factor(cfg, s) for s in range(101)]
    assert factors[0] == pytest.approx(1 / 25)  # torch's OneCycleLR: starts at lr / div_factor
    assert max(factors) == factors[30] == pytest.approx(1.0)  # the peak after 30 % of the steps
    assert all(a < b for a, b in itertools.pairwise(factors[:31]))  # rises ...
    assert all(a > b for a, b in itertools.pairwise(factors[30:]))  # ... then falls
    assert factors[100] == pytest.approx(1 / 25 / 1e4)  # to lr / (div_factor * final_div_factor)
    tiny_config["train"]["warmup_steps"] = 10
    assert lr_factor(config_from_dict(tiny_config), 10) == pytest.approx(1.0)
    tiny_config["train"]["schedule"] = "cosine"  # unchanged: linear warm-up, cosine to zero
    cosine = config_from_dict(tiny_config)
    assert lr_factor(cosine, 0) == pytest.approx(0.1) and lr_factor(cosine, 100) == pytest.approx(0.0)


def test_time_budget_drives_the_schedule(tiny_config) -> None:
    """Under max_minutes the cosine schedule reaches zero when the budget runs out, whatever the step count."""
    cfg = config_from_dict(tiny_config | {"train": tiny_config["train"] | {
        "steps": 1000, "max_minutes": 1.0, "schedule": "cosine"}})
    assert lr_factor(cfg, 10, elapsed_s=0.0) == pytest.approx(lr_factor(cfg, 10))
    assert lr_factor(cfg, 10, elapsed_s=30.0) == pytest.approx(0.5)
    assert lr_factor(cfg, 10, elapsed_s=60.0) == pytest.approx(0.0)


def test_one_cosine_serves_training_and_refinement(tiny_config: dict) -> None:
    assert cosine(1.0, 0.0, 0.5) == pytest.approx(0.5) and cosine(2.0, 1.0, 7.0) == 1.0  # past the end: end
    assert [refine_lr_factor(s, 4) for s in range(5)] == pytest.approx([1.0, 0.8536, 0.5, 0.1464, 0.0], abs=1e-4)
    cfg = config_from_dict(tiny_config | {"train": tiny_config["train"] | {"steps": 4, "schedule": "cosine"}})
    assert [lr_factor(cfg, s) for s in range(5)] == [refine_lr_factor(s, 4) for s in range(5)]


def test_a_count_loss_left_at_chance_is_measured(tmp_path: Path) -> None:
    """The warning's measure: the last tenth of the logged count losses over ln(counts)."""
    log_path = tmp_path / "metrics.jsonl"
    stuck = [{"step": 20 * i, "ucc_loss": math.log(4) + 0.01 * (-1) ** i} for i in range(1, 51)]
    log_path.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 0, "val_ucc_loss": 9.0}, *stuck]))
    assert train_module.loss_over_chance(log_path, 4) == pytest.approx(1.0, abs=0.005)
    learnt = [{"step": 20 * i, "ucc_loss": math.log(4) / i} for i in range(1, 51)]
    log_path.write_text("".join(json.dumps(r) + "\n" for r in learnt))
    assert train_module.loss_over_chance(log_path, 4) == pytest.approx(sum(1 / i for i in range(46, 51)) / 5)
    assert train_module.loss_over_chance(tmp_path / "none.jsonl", 4) is None


def test_training_that_learns_nothing_from_the_counts_warns(tmp_path: Path, tiny_config: dict, caplog) -> None:
    tiny_config["train"].update(lr=1e-9, steps=6)  # no step moves the weights: the loss stays at chance
    with caplog.at_level("WARNING", logger="pathoucc"):
        train_ucc(config_from_dict(tiny_config), tmp_path / "run")
    assert "the count loss ended at" in caplog.text and "of chance (ln" in caplog.text
