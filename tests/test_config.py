"""Config loading: typed validation, one-line errors that name the valid keys, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathoucc.config import load_config
from pathoucc.errors import PathouccError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.bags.ucc_max >= cfg.bags.ucc_min


def test_unknown_key_names_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(PathouccError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "train.stepz" in msg
    assert "steps" in msg and "lr" in msg


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("trainer: {}\n")
    with pytest.raises(PathouccError, match=r"unknown key 'trainer'.*bags.*model"):
        load_config(path)


def test_wrong_type_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: fast\n")
    with pytest.raises(PathouccError, match=r"train\.lr.*'fast'"):
        load_config(path)


def test_cross_field_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("bags: {ucc_min: 3, ucc_max: 2}\n")
    with pytest.raises(PathouccError, match="ucc_max"):
        load_config(path)


def test_overrides_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")
    cfg = load_config(path, ["train.lr=0.5", "model.widths=[4, 8]", "seed=7", "model.decoder=false"])
    assert cfg.train.lr == 0.5 and cfg.model.widths == [4, 8] and cfg.seed == 7 and cfg.model.decoder is False
    with pytest.raises(PathouccError, match=r"key\.path=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(PathouccError, match=r"unknown key 'train\.nope'"):
        load_config(path, ["train.nope=1"])


@pytest.mark.parametrize(
    ("text", "match"),
    [("train: [1, 2\n", "invalid YAML at line"), ("- a\n- b\n", "must be a mapping")],
)
def test_bad_yaml(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(PathouccError, match=match):
        load_config(path)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(PathouccError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(PathouccError, match="invalid YAML"):
        load_config(path)
