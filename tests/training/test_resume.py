"""Resume safety: a differing config is refused, a torn metrics line is dropped, a full disk leaves the previous
checkpoint intact, signals stop at a step boundary (in process and from outside), augmentations are seeded."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pathoucc.config import config_from_dict
from pathoucc.errors import PathouccError, TrainingInterrupted
from pathoucc.files import atomic_path, write_json
from pathoucc.run import CHECKPOINT, CONFIG, RESUMABLE, config_diff, read_weights, save_weights
from pathoucc.training import train as train_module
from pathoucc.training.train import train_ucc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k, v in wa.items():
        torch.testing.assert_close(v, wb[k], rtol=0, atol=0, msg=k)


def _step(run: Path) -> int:
    return int(torch.load(run / CHECKPOINT, weights_only=True)["step"])


class _Killed(BaseException):
    """Stands for a hard kill: nothing in the process reacts."""


def _kill_at(monkeypatch, step: int) -> None:
    original = train_module.ucc_step

    def dying_step(state, batch, cfg) -> dict:
        if state.step == step:
            raise _Killed
        return original(state, batch, cfg)

    monkeypatch.setattr(train_module, "ucc_step", dying_step)


# ------------------------------------------------------------------------------------------- config differences
def test_config_diff_names_keys_and_both_values(tiny_config: dict) -> None:
    run = config_from_dict(tiny_config)
    given = json.loads(json.dumps(tiny_config))
    given["bags"]["bag_size"] = 16
    given["model"]["backbone"] = "resnet"
    given["train"] |= {"steps": 100, "max_minutes": 5, "log_every": 7, "checkpoint_every": 9}
    assert config_diff(run, config_from_dict(given)) == [
        'bags.bag_size: 8 (run) vs 16 (given)', 'model.backbone: "conv" (run) vs "resnet" (given)']
    assert config_diff(run, config_from_dict(tiny_config)) == []
    assert "train.steps" in RESUMABLE and "train.lr" not in RESUMABLE
    assert config_diff(run, config_from_dict(given), ignore=()) [-1].startswith("train.steps: 6 (run) vs 100")


def test_resume_with_a_differing_config_is_refused(tmp_path: Path, tiny_config: dict) -> None:
    run = tmp_path / "run"
    tiny_config["train"]["steps"] = 4
    train_ucc(config_from_dict(tiny_config), run, progress=False)
    before = (run / CONFIG).read_bytes()
    changed = json.loads(json.dumps(tiny_config))
    changed["bags"]["bag_size"] = 16
    changed["train"]["lr"] = 0.01
    with pytest.raises(PathouccError) as info:
        train_ucc(config_from_dict(changed), run, resume=True, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(run / CONFIG))
    assert "bags.bag_size: 8 (run) vs 16 (given)" in msg and "train.lr: 0.001 (run) vs 0.01 (given)" in msg
    assert (run / CONFIG).read_bytes() == before  # the run folder still says how its model was trained
    # without config.yaml, the checkpoint's own config is the reference
    (run / CONFIG).unlink()
    with pytest.raises(PathouccError, match=r"checkpoint\.pt: --resume with a config that differs.*bag_size"):
        train_ucc(config_from_dict(changed), run, resume=True, progress=False)
    # a longer budget is what --resume is for
    tiny_config["train"]["steps"] = 6
    train_ucc(config_from_dict(tiny_config), run, resume=True, progress=False)
    assert yaml.safe_load((run / CONFIG).read_text())["train"]["steps"] == 6 and _step(run) == 6


def test_torn_metrics_line_does_not_stop_a_resume(tmp_path: Path, tiny_config: dict, monkeypatch, caplog) -> None:
    cfg = config_from_dict(tiny_config)
    train_ucc(cfg, tmp_path / "full", progress=False)
    _kill_at(monkeypatch, 5)
    with pytest.raises(_Killed):
        train_ucc(cfg, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    with (tmp_path / "killed" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "ucc_lo')  # the half-written line of a killed writer
    train_ucc(cfg, tmp_path / "killed", resume=True, progress=False)
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "dropped 1 unreadable line" in caplog.text
    _assert_same_weights(tmp_path / "full", tmp_path / "killed")


# ------------------------------------------------------------------------------------------------- a full disk
_TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1019840 vs 1019728")


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), _TORCH_FULL])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, failure) -> None:
    path = tmp_path / CHECKPOINT
    save_weights({"model": {"w": torch.ones(3)}, "step": 2}, path)
    real_save = torch.save

    def full_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # some bytes reach the temporary file, then the disk is full
        raise failure

    monkeypatch.setattr(torch, "save", full_save)
    monkeypatch.setattr("shutil.disk_usage", lambda _p: type("Usage", (), {"free": 4096})())
    with pytest.raises(PathouccError) as info:
        save_weights({"model": {"w": torch.zeros(3)}, "step": 4}, path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: no space left on device (") and "previous file is unchanged" in msg
    assert "\n" not in msg
    state = read_weights(path)
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left


def test_other_torch_write_errors_are_not_called_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    def failing_save(*_a, **_k):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(PathouccError, match=r"model\.pt: cannot write \(torch: PytorchStreamWriter failed"):
        save_weights({"model": {}}, tmp_path / "model.pt")


def test_full_disk_in_any_atomic_write(tmp_path: Path, monkeypatch) -> None:
    write_json(tmp_path / "metrics.json", {"ok": 1})

    def full(self, *_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(PathouccError, match=r"metrics\.json: no space left on device \(No space left on device\)"):
        write_json(tmp_path / "metrics.json", {"ok": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"ok": 1}
    # other errors of the writer itself pass through unchanged (e.g. a slide that cannot be read while tiling)
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.h5"):
        raise FileNotFoundError(errno.ENOENT, "slide gone")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_full_disk_during_training_stops_with_the_last_checkpoint(tmp_path: Path, tiny_config: dict,
                                                                 monkeypatch) -> None:
    real_save, calls = torch.save, []

    def save_once(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_once)
    run = tmp_path / "run"
    with pytest.raises(PathouccError, match=r"checkpoint\.pt: no space left on device"):
        train_ucc(config_from_dict(tiny_config), run, progress=False)
    monkeypatch.undo()
    assert _step(run) == 2 and not (run / "model.pt").exists()
    train_ucc(config_from_dict(tiny_config), run, resume=True, progress=False)
    assert _step(run) == 6


# ------------------------------------------------------------------------------------------ signals and seeds
def test_signal_stops_at_the_next_step_boundary(tmp_path: Path, tiny_config: dict, monkeypatch) -> None:
    cfg = config_from_dict(tiny_config)
    train_ucc(cfg, tmp_path / "full", progress=False)
    original, before = train_module.ucc_step, signal.getsignal(signal.SIGINT)

    def step_with_ctrl_c(state, batch, cfg) -> dict:
        if state.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step still finishes
        return original(state, batch, cfg)

    monkeypatch.setattr(train_module, "ucc_step", step_with_ctrl_c)
    with pytest.raises(TrainingInterrupted) as info:
        train_ucc(cfg, tmp_path / "stopped", progress=False)
    assert (info.value.signal_name, info.value.step, info.value.exit_code) == ("SIGINT", 5, 130)
    assert str(info.value) == "interrupted by SIGINT at step 5; checkpoint saved; continue with --resume"
    assert _step(tmp_path / "stopped") == 5 and signal.getsignal(signal.SIGINT) is before
    monkeypatch.undo()
    train_ucc(cfg, tmp_path / "stopped", resume=True, progress=False)
    _assert_same_weights(tmp_path / "full", tmp_path / "stopped")


# the command line with every step slowed down (sleeping changes no number), so a signal lands mid-run
_SLOW_CLI = """
import sys, time
from pathoucc.training import train
step = train.ucc_step
train.ucc_step = lambda state, batch, cfg: (time.sleep(0.05), step(state, batch, cfg))[1]
from pathoucc.cli import main
main()
"""


def test_sigterm_from_outside_then_resume_gives_the_uninterrupted_weights(tmp_path: Path, tiny_config: dict) -> None:
    tiny_config["train"] |= {"steps": 40, "checkpoint_every": 1000, "val_every": 1000, "num_threads": 1}
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config))
    run = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, "train", str(cfg_path), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 60
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    stopped_at = _step(run)
    assert 3 <= stopped_at < 40
    assert err.strip().splitlines()[-1] == (f"interrupted by SIGTERM at step {stopped_at}; checkpoint saved; "
                                            "continue with --resume")
    assert not (run / "model.pt").exists()
    threads = torch.get_num_threads()
    try:
        cfg = config_from_dict(tiny_config)
        train_ucc(cfg, run, resume=True, progress=False)
        train_ucc(cfg, tmp_path / "full", progress=False)
    finally:
        torch.set_num_threads(threads)
    _assert_same_weights(tmp_path / "full", run)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 41))


def test_augmented_runs_are_seeded_and_resume_exactly(tmp_path: Path, tiny_config: dict, monkeypatch) -> None:
    tiny_config["data"]["augment"] = [{"name": "HorizontalFlip", "p": 0.5},
                                      {"name": "RandomBrightnessContrast", "p": 0.8}]
    cfg = config_from_dict(tiny_config)
    train_ucc(cfg, tmp_path / "a", progress=False)
    train_ucc(cfg, tmp_path / "b", progress=False)
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    _kill_at(monkeypatch, 3)
    with pytest.raises(_Killed):
        train_ucc(cfg, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    assert _step(tmp_path / "killed") == 2
    train_ucc(cfg, tmp_path / "killed", resume=True, progress=False)
    _assert_same_weights(tmp_path / "a", tmp_path / "killed")
    # the augmentations do something: without them the weights differ
    tiny_config["data"]["augment"] = []
    train_ucc(config_from_dict(tiny_config), tmp_path / "plain", progress=False)
    assert not torch.equal(_weights(tmp_path / "a")["head.weight"], _weights(tmp_path / "plain")["head.weight"])
