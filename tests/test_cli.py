"""The command line: thin over the functions, one-line errors without tracebacks, non-zero exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import one_line_error, run_cli

from pathoucc.errors import PathouccError


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


def test_train_refuses_slide_examples_on_built_bags(monkeypatch, capsys, tmp_path: Path, tiny_yaml: Path) -> None:
    examples = tmp_path / "examples.csv"
    examples.write_text("slide,x,y,class\ns,1,1,a\n")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tiny_yaml), "--out", str(tmp_path / "run"),
                           "--examples", str(examples))
    assert code == 2
    one_line_error(err, "examples.csv", "--examples labels patches of tile files", "data.labelled_fraction")
    assert not (tmp_path / "run").exists()


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
    one_line_error(err, *needles)


def test_unwritable_output_folder(monkeypatch, capsys, tmp_path: Path, tiny_yaml: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tiny_yaml), "--out", str(blocker / "run"))
    assert code == 2
    one_line_error(err, "cannot create output folder")


def test_corrupt_checkpoint_leaves_nothing_behind(monkeypatch, capsys, tmp_path: Path, tiny_yaml: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_text("not a checkpoint")
    code, _, err = run_cli(monkeypatch, capsys, "train", str(tiny_yaml), "--out", str(run), "--resume")
    assert code == 2
    one_line_error(err, "checkpoint.pt", "corrupt")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_console_script_exit_code_and_debug(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pathoucc.cli", "train", str(tmp_path / "none.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "none.yaml" in proc.stderr
    proc = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_an_alias_bomb_config_is_a_short_fast_error(monkeypatch, capsys, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
                            for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)))
    start = time.perf_counter()
    code, _, err = run_cli(monkeypatch, capsys, "train", str(bomb))
    assert code == 2 and time.perf_counter() - start < 5 and len(err) < 300
    one_line_error(err, "bomb.yaml", "alias")


@pytest.mark.parametrize(
    ("args", "option", "valid"),
    [(["cluster", "run", "--device", "gpu"], "--device", ["auto", "cpu", "cuda"]),
     (["segment", "run", "t.h5", "--device", "tpu"], "--device", ["auto", "cpu", "cuda"]),
     (["tile", "s.svs", "--out", "o", "--compression", "zip"], "--compression", ["gzip", "lzf", "none"])],
)
def test_a_bad_choice_is_one_line_listing_the_valid_values(monkeypatch, capsys, args, option, valid) -> None:
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    one_line_error(err, option, repr(args[-1]), *(repr(v) for v in valid), f"pathoucc {args[0]} --help")


def test_usage_errors_are_one_line(monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "train", "c.yaml", "--bogus")
    assert code == 2
    one_line_error(err, "No such option: --bogus")
    code, _, err = run_cli(monkeypatch, capsys, "tile", "s.svs")
    assert code == 2
    one_line_error(err, "Missing option '--out'")


def test_debug_is_the_global_flag_only(monkeypatch, capsys, tmp_path: Path) -> None:
    missing = str(tmp_path / "none.yaml")
    with pytest.raises(PathouccError, match="config file not found"):  # before the command: re-raised
        run_cli(monkeypatch, capsys, "--debug", "train", missing)
    code, _, err = run_cli(monkeypatch, capsys, "train", missing)  # the next call starts without it
    assert code == 2
    one_line_error(err, "none.yaml")
    code, _, err = run_cli(monkeypatch, capsys, "train", missing, "--debug")  # after it: refused, saying where
    assert code == 2
    one_line_error(err, "--debug goes before the command")
    code, _, err = run_cli(monkeypatch, capsys, "train", missing, "--set", "--debug")  # a value, not the flag
    assert code == 2
    one_line_error(err, "none.yaml")
    monkeypatch.setenv("COLUMNS", "200")  # --help documents where --debug goes
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0 and "Give it before the command: pathoucc --debug train" in out
