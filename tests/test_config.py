"""Config loading: typed validation, one-line errors that name the valid keys and values, overrides, safe YAML."""

from __future__ import annotations

import time
from pathlib import Path
from typing import get_args

import pytest
import yaml

from pathoucc.config import (
    Compression,
    Device,
    KdePool,
    Schedule,
    Source,
    Split,
    load_config,
)
from pathoucc.errors import MAX_MESSAGE, PathouccError
from pathoucc.files import parse_yaml
from pathoucc.options import TileOptions, validate_options

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


def test_presence_count_head_refuses_kde_options_and_too_few_clusters(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {count_head: presence, kde_pool: mean+max, mlp: [64]}\n")
    with pytest.raises(PathouccError, match="kde_pool, mlp set for a KDE count head"):
        load_config(path)
    path.write_text("model: {count_head: presence, presence_clusters: 3}\nbags: {ucc_max: 4}\n")
    with pytest.raises(PathouccError, match=r"presence_clusters \(3\) cannot count to bags.ucc_max \(4\)"):
        load_config(path)
    assert load_config(path, ["model.presence_clusters=4"]).model.count_head == "presence"


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


BOMB = "".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
               for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True))  # 9**9 'lol's from ~350 bytes


def test_alias_bomb_is_refused_fast_and_short(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 400
    start = time.perf_counter()
    with pytest.raises(PathouccError) as err:
        load_config(path)
    assert time.perf_counter() - start < 2
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "alias" in msg and "\n" not in msg and len(msg) < 300
    with pytest.raises(PathouccError, match="alias"):  # the same bomb as a --set value
        load_config(None, ["name=" + BOMB.replace("\n", ", ").join("{}")])


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: &m {widths: [4, 8], num_features: 6}\n"
                    "bags: {bag_size: &size 16, ucc_max: 4}\n"
                    "eval: {batch_size: *size}\n")
    cfg = load_config(path)
    assert cfg.model.widths == [4, 8] and cfg.model.num_features == 6 and cfg.eval.batch_size == 16
    assert parse_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\n") == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}


@pytest.mark.parametrize(("text", "match"), [("name: &a [*a]\n", "recursive alias"),
                                             ("name: " + "[" * 100_000 + "\n", "nested more than 100 levels"),
                                             ("".join(" " * i + "a:\n" for i in range(200)), "nested more than")])
def test_recursive_alias_and_deep_nesting_are_one_line_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(PathouccError, match=match) as err:
        load_config(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("value", ["x" * 10_000, list(range(3_000)), [[["x" * 10_000]]] * 100])
def test_a_huge_bad_value_is_quoted_short(tmp_path: Path, value) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": value}}))
    with pytest.raises(PathouccError) as err:
        load_config(path)
    msg = str(err.value)
    assert len(msg) < 500 and "\n" not in msg and "train.lr" in msg and ("…" in msg or "..." in msg)
    assert len(str(PathouccError("y" * 10_000, path))) <= MAX_MESSAGE


CHOICES = [("train.device", "gpu", Device), ("eval.split", "train", Split), ("data.source", "csv", Source),
           ("model.kde_pool", "max", KdePool), ("train.schedule", "linear", Schedule)]


@pytest.mark.parametrize(("key", "bad", "choice"), CHOICES, ids=[c[0] for c in CHOICES])
def test_a_bad_choice_names_the_key_and_the_valid_values(tmp_path: Path, key: str, bad: str, choice) -> None:
    path = tmp_path / "c.yaml"
    section, name = key.split(".")
    path.write_text(yaml.safe_dump({section: {name: bad}}))
    with pytest.raises(PathouccError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {key}: ") and f"(got '{bad}')" in msg
    assert all(f"'{value}'" in msg for value in get_args(choice))
    assert load_config(path, [f"{key}={get_args(choice)[-1]}"]).to_dict()[section][name] == get_args(choice)[-1]


def test_a_bad_tile_option_choice_lists_the_valid_values() -> None:
    with pytest.raises(PathouccError) as err:
        validate_options(TileOptions, {"compression": "zip"})
    assert str(err.value) == "--compression: Input should be 'gzip', 'lzf' or 'none' (got 'zip')"
    assert get_args(Compression) == ("gzip", "lzf", "none")
