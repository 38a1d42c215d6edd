"""The command line: thin over the functions, one-line errors without tracebacks, non-zero exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pathoucc.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["pathoucc", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def _one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture()
def tiny_yaml(tmp_path: Path, tiny_config: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


def test_train_and_evaluate_via_cli(monkeypatch, capsys, tmp_path: Path, tiny_yaml: Path) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "train", str(tiny_yaml), "--out", str(tmp_path / "run"),
                           "--set", "train.steps=4")
    assert code == 0 and "accuracy" in out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["steps"] == 4
    code, out, _ = run_cli(monkeypatch, capsys, "evaluate", str(tmp_path / "run"), "--split", "val")
    assert code == 0 and "tiny (val)" in out
    assert set(json.loads((tmp_path / "run" / "metrics.json").read_text())) == {"test", "val"}
    code, out, _ = run_cli(monkeypatch, capsys, "baseline", str(tiny_yaml), "--out", str(tmp_path / "raw.json"))
    assert code == 0 and json.loads((tmp_path / "raw.json").read_text())["method"] == "kmeans-raw-pixels"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "nope.yaml"], ["nope.yaml", "config file not found"]),
        (["train", "{cfg}", "--set", "train.stepz=1"], ["unknown key 'train.stepz'", "steps"]),
        (["train", "{cfg}", "--set", "train.lr=abc"], ["train.lr", "'abc'"]),
        (["train", "{cfg}", "--resume", "--out", "{tmp}/fresh"], ["fresh", "no checkpoint"]),
        (["evaluate", "{tmp}"], ["no trained model"]),
        (["evaluate", "{tmp}/missing"], ["run folder not found"]),
    ],
)
def test_bad_input_is_one_line(monkeypatch, capsys, tmp_path: Path, tiny_yaml: Path, args, needles) -> None:
    args = [a.format(cfg=tiny_yaml, tmp=tmp_path) for a in args]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    _one_line_error(err, *needles)


def test_unwritable_output_folder(monkeypatch, capsys, tmp_path: Path, tiny_yaml: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tiny_yaml), "--out", str(blocker / "run"))
    assert code == 2
    _one_line_error(err, "cannot create output folder")


def test_corrupt_checkpoint_leaves_nothing_behind(monkeypatch, capsys, tmp_path: Path, tiny_yaml: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_text("not a checkpoint")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tiny_yaml), "--out", str(run), "--resume")
    assert code == 2
    _one_line_error(err, "checkpoint.pt", "corrupt")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_console_script_exit_code_and_debug(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pathoucc.cli", "train", str(tmp_path / "none.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "none.yaml" in proc.stderr
    proc = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
