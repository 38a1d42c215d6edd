"""Hub weights through timm and the Hugging Face cache, with no network: a cache filled here by hand (the layout
``huggingface_hub`` keeps: ``models--<org>--<name>/refs/main`` -> ``snapshots/<commit>/<file>``), read with
``HF_HUB_OFFLINE=1``; the encoder takes the weights written there and the input size and normalisation of the
model's pretrained config. The environment is read when huggingface_hub is imported: each check runs in a fresh
interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, one_line_error

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_CFG = {"input_size": [3, 48, 48], "mean": [0.25, 0.5, 0.75], "std": [0.1, 0.2, 0.3],
           "interpolation": "bicubic", "num_classes": 1000, "classifier": "fc"}


def fill_cache(hub: Path, repo: str, state: dict, config: dict | None = None) -> None:
    """Put ``state`` (and ``config.json``) into the cache ``hub`` as huggingface_hub would have downloaded it."""
    from safetensors.torch import save_file

    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))


def offline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "PYTHONPATH": str(ROOT)}
    env.pop("HF_ENDPOINT", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=240,
                          cwd=tmp_path)


CHECK = """
import json, sys
import torch
from pathoucc.embed.encoder import load_encoder, state_digest
from pathoucc.errors import PathouccError
out = {}
for name in sys.argv[1:]:
    try:
        enc = load_encoder(name)
    except PathouccError as exc:
        out[name] = {"error": str(exc)}
        continue
    out[name] = {"name": enc.name, "input_size": list(enc.input_size), "mean": list(enc.mean), "std": list(enc.std),
                 "interpolation": enc.interpolation, "digest": enc.weights_digest,
                 "state": state_digest(enc.model.state_dict())}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tiny_states() -> dict:
    import timm

    torch.manual_seed(0)
    registry = timm.create_model("test_resnet.r160_in1k", pretrained=False)  # with its 1000-class head
    torch.manual_seed(1)
    custom = timm.create_model("test_resnet", pretrained=False)
    return {"registry": registry.state_dict(), "custom": custom.state_dict()}


def test_timm_models_load_offline_from_a_filled_cache(tmp_path, tiny_states):
    import timm

    from pathoucc.embed.encoder import state_digest

    hub = tmp_path / "hf" / "hub"
    fill_cache(hub, "timm/test_resnet.r160_in1k", tiny_states["registry"])
    fill_cache(hub, "someone/tiny-pathology-encoder", tiny_states["custom"],
               {"architecture": "test_resnet", "num_classes": 1000, "pretrained_cfg": HUB_CFG})
    names = ["test_resnet.r160_in1k", "hf-hub:someone/tiny-pathology-encoder", "test_vit.r160_in1k"]
    proc = offline(tmp_path, "-c", CHECK, *names)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    # a model of timm's registry: its weights from the cache, the registry's pretrained config
    cfg = timm.create_model("test_resnet.r160_in1k", pretrained=False).pretrained_cfg
    reg = got["test_resnet.r160_in1k"]
    assert reg["input_size"] == list(cfg["input_size"][1:]) == [160, 160]
    assert reg["mean"] == pytest.approx(cfg["mean"]) and reg["std"] == pytest.approx(cfg["std"])
    headless = {k: v for k, v in tiny_states["registry"].items() if not k.startswith("fc.")}
    assert reg["state"] == state_digest(headless) == reg["digest"]

    # a hub repository with its own config.json: the normalisation and input size come from its pretrained_cfg
    hub_model = got["hf-hub:someone/tiny-pathology-encoder"]
    assert hub_model["name"] == "hf-hub:someone/tiny-pathology-encoder"
    assert hub_model["input_size"] == [48, 48] and hub_model["interpolation"] == "bicubic"
    assert hub_model["mean"] == pytest.approx(HUB_CFG["mean"]) and hub_model["std"] == pytest.approx(HUB_CFG["std"])
    headless = {k: v for k, v in tiny_states["custom"].items() if not k.startswith("fc.")}
    assert hub_model["state"] == state_digest(headless)

    # not in the cache while offline: one line naming the model and the cache
    err = got["test_vit.r160_in1k"]["error"]
    assert "'test_vit.r160_in1k'" in err and "not in the Hugging Face cache" in err and str(hub) in err
    assert "HF_HUB_OFFLINE is set" in err


def test_features_command_offline(tmp_path, tiny_states):
    """The command end to end from the cache; an uncached model is one line, exit 2, no output folder."""
    import h5py
    import numpy as np

    from pathoucc.slides.tilefile import FORMAT_VERSION

    hub = tmp_path / "hf" / "hub"
    fill_cache(hub, "someone/tiny-pathology-encoder", tiny_states["custom"],
               {"architecture": "test_resnet", "num_classes": 1000, "pretrained_cfg": HUB_CFG})
    tiles = tmp_path / "s1.h5"  # a minimal tile file: 5 random 32-px patches
    rng = np.random.default_rng(0)
    with h5py.File(tiles, "w") as f:
        f["coords"] = np.arange(10, dtype=np.int64).reshape(5, 2) * 32
        f["patches"] = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        f.attrs.update({"patch_size": 32, "patch_level": 0, "downsample": 1.0, "stride": 32,
                        "level_dimensions": [320, 320], "slide_path": str(tmp_path / "s1.svs"),
                        "slide_dimensions": [320, 320], "mpp": [0.25, 0.25], "format_version": FORMAT_VERSION})
    proc = offline(tmp_path, "-m", "pathoucc.cli", "features", str(tiles), "--out", "out", "--model",
                   "hf-hub:someone/tiny-pathology-encoder", "--fp32")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "out" / "features_hf-hub_someone_tiny-pathology-encoder" / "s1.h5") as f:
        assert f["features"].shape == (5, 96) and f["features"].dtype == np.float32  # test_resnet: 96 features
        assert f.attrs["encoder"] == f["features"].attrs["encoder"] == "hf-hub:someone/tiny-pathology-encoder"
        assert f["coords"].attrs["level0_magnification"] == 40 and f["coords"].attrs["target_magnification"] == 40

    proc = offline(tmp_path, "-m", "pathoucc.cli", "features", str(tiles), "--out", "out2", "--model",
                   "test_vit.r160_in1k")
    assert proc.returncode == 2
    one_line_error(proc.stderr, "'test_vit.r160_in1k'", "not in the Hugging Face cache")
    assert not (tmp_path / "out2").exists()
