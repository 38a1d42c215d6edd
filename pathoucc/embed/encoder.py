"""The frozen encoder of ``pathoucc features``: any timm model, with weights from the Hugging Face hub (through
timm and its cache: ``HF_HUB_OFFLINE=1`` with a filled cache needs no network) or from a local file, and the input
size and normalisation of its pretrained config.

A local weights file is a state dict (``.pt``/``.pth``, read with ``weights_only=True``, or ``.safetensors``),
optionally wrapped as timm's hub ``config.json`` describes a model: ``{"state_dict": ..., "architecture": timm
name, "model_args": {timm.create_model keyword arguments}, "pretrained_cfg": {"mean": [...], "std": [...],
"input_size": [3, H, W]}}`` (what ``tools/train_standin_encoder.py`` writes); without a ``pretrained_cfg`` the
model's own one from timm's registry applies. The weights digest is the SHA-256 of the local file, or of the
loaded state dict (names, dtypes, shapes and bytes) for hub weights.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathoucc.errors import PathouccError, quote
from pathoucc.files import read_torch

__all__ = ["FrozenEncoder", "load_encoder", "state_digest"]

_INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


@dataclass
class FrozenEncoder:
    """An encoder in eval mode and how to feed it.

    name : what the features are called (the ``encoder`` attribute; the folder ``features_<folder_name>``): the
    timm model name, or the local name given with a weights file. model : the timm model (``num_classes=0``:
    pooled features). weights_digest : hex SHA-256 (see the module). input_size : (H, W) px the model is fed;
    mean, std : per RGB channel, for inputs in [0, 1]; interpolation : how patches are resized to ``input_size``.
    """

    name: str
    model: nn.Module
    weights_digest: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @property
    def folder_name(self) -> str:
        """``name`` as a folder-name part (see :func:`safe_name`)."""
        return safe_name(self.name)

    @property
    def num_features(self) -> int:
        """D: the length of one patch's feature vector."""
        return int(self.model.num_features)


def load_encoder(model: str, weights: str | Path | None = None, name: str | None = None) -> FrozenEncoder:
    """The timm model ``model`` (e.g. ``resnet18.a1_in1k``, ``hf-hub:timm/...``) with hub weights through timm's
    cache, or with the state dict in ``weights``; ``name`` defaults to the model name (hub) or the file's stem.

    A model name timm does not know, hub weights not in the cache while offline, a weights file that is missing,
    unreadable or does not fit the model: a one-line :class:`PathouccError` naming the model or the file."""
    import timm  # heavy: imported on use

    path = None if weights is None else Path(weights)
    if path is not None and not path.is_file():
        raise PathouccError("encoder weights file not found", path)
    state, file_cfg, model_args = _read_weights(path, model) if path is not None else ({}, {}, {})
    try:
        net = timm.create_model(model, pretrained=path is None, num_classes=0, **model_args)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise PathouccError(f"timm does not know the model {quote(model)} (see timm.list_models())") from None
        raise
    except TypeError as exc:  # model_args the architecture does not take
        raise PathouccError(f"model_args do not fit timm model {quote(model)}: {exc}", path) from None
    except Exception as exc:  # the hub: not cached while offline, no network, no such repository
        if path is not None:
            raise
        raise _hub_error(model, exc) from None
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    if path is None and not any(cfg.get(k) for k in ("hf_hub_id", "url", "file")):
        raise PathouccError(f"timm has no pretrained weights for the model {quote(model)} (timm would start it "
                            "from random weights); name a pretrained tag (e.g. resnet18.a1_in1k) or give --weights")
    if path is None:
        digest = state_digest(net.state_dict())
    else:
        _load_into(net, state, model, path)
        cfg.update(file_cfg)
        digest = _file_digest(path)
    net.eval().requires_grad_(False)
    size = tuple(int(v) for v in (cfg.get("input_size") or (3, 224, 224))[-2:])
    mean = _triple(cfg.get("mean"), 0.0, "mean", path or model)
    std = _triple(cfg.get("std"), 1.0, "std", path or model)
    if min(size) < 1 or min(std) <= 0:
        raise PathouccError(f"pretrained_cfg has input_size {size} and std {std}; both must be positive",
                            path or model)
    label = (name or (path.stem if path is not None else model)).strip()
    safe_name(label)  # refuses a name that cannot name a folder
    return FrozenEncoder(name=label, model=net, weights_digest=digest, input_size=(size[0], size[1]),
                         mean=mean, std=std, interpolation=_INTERPOLATIONS.get(cfg.get("interpolation"), "bilinear"))


def safe_name(label: str) -> str:
    """``label`` as a folder-name part: characters other than letters, digits, ``.``, ``_`` and ``-`` become
    ``_`` (``hf-hub:timm/vit_small`` -> ``hf-hub_timm_vit_small``)."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", label.strip()).strip(".")
    if not out:
        raise PathouccError(f"encoder name {quote(label)} has no letters or digits to name a folder with")
    return out


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_weights(path: Path, model: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict, pretrained_cfg overrides, timm model_args) of a local weights file for timm model ``model``."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open  # installed with timm

        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception as exc:
            raise PathouccError(f"cannot read weights ({type(exc).__name__})", path) from None
        return state, {}, {}
    obj = read_torch(path, "weights file")
    cfg: dict[str, Any] = {}
    args: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("architecture"), str) and obj["architecture"] != model:
        raise PathouccError(f"the weights are of timm model {quote(obj['architecture'])}, not {quote(model)} "
                            "(give --model with that name)", path)
    if isinstance(obj, dict) and isinstance(obj.get("model_args"), dict):
        args = {str(k): tuple(v) if isinstance(v, list) else v for k, v in obj["model_args"].items()}
    if isinstance(obj, dict) and isinstance(obj.get("pretrained_cfg"), dict):
        cfg = {k: obj["pretrained_cfg"][k] for k in ("mean", "std", "input_size", "interpolation")
               if k in obj["pretrained_cfg"]}
    if isinstance(obj, dict):
        obj = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PathouccError("not a state dict (a mapping of tensor names to tensors)", path)
    return obj, cfg, args


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], model: str, path: Path) -> None:
    """Load ``state`` into ``net`` exactly (classifier tensors aside: the features have none)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {len(own)} tensors missing (e.g. {missing[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(own[k].shape)} in the model)")
        raise PathouccError(f"weights do not fit timm model {quote(model)}: {'; '.join(parts)}", path)
    net.load_state_dict({k: state[k] for k in own})


def _triple(value: Any, default: float, what: str, where: object) -> tuple[float, float, float]:
    values = [float(v) for v in (value if value is not None else [default])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise PathouccError(f"pretrained_cfg {what} has {len(values)} values, expected 3 (RGB) or 1", str(where))
    return values[0], values[1], values[2]


def _hub_error(model: str, exc: Exception) -> PathouccError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    kind = type(exc).__name__
    if offline or "offline" in str(exc).lower() or "LocalEntryNotFound" in kind:
        from huggingface_hub import constants

        return PathouccError(f"the weights of timm model {quote(model)} are not in the Hugging Face cache "
                             f"({constants.HF_HUB_CACHE}) and the hub cannot be reached (HF_HUB_OFFLINE is "
                             f"{'set' if offline else 'unset'}); fill the cache on a machine online or give "
                             "--weights FILE")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return PathouccError(f"cannot load the weights of timm model {quote(model)} from the hub ({kind}: {first})")
