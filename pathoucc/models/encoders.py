"""Feature extractors (encoders): built-in CNNs for small grey images, any timm model (no code needed), and the
projection of precomputed feature vectors (``mlp``, for foundation-model feature files)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pathoucc.errors import PathouccError
from pathoucc.files import read_torch


class PreActBlock(nn.Module):
    """Wide-ResNet style pre-activation residual block (BN-ReLU-conv ×2), optional stride."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(torch.relu(self.bn2(o)))
        return o + skip


class ResidualEncoder(nn.Module):
    """Stem conv then residual stages (stride 1, 2, 2, …); output is flattened ``(B, C·H'·W')``.

    ``widths=(16, 32, 64, 128)`` with ``in_size=28`` is the paper's MNIST encoder (flatten size 6272).
    """

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128), in_size: int = 28,
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)]
        size, c = in_size, widths[0]
        for i, w in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            for b in range(blocks_per_stage):
                layers.append(PreActBlock(c, w, stride if b == 0 else 1))
                c = w
            size = (size + stride - 1) // stride
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_shape = (c, size, size)
        self.num_features = c * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvEncoder(nn.Module):
    """A fast plain CNN: [conv-BN-ReLU ×convs_per_stage, max-pool] per stage, flattened output."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (32, 64, 128), in_size: int = 28,
                 convs_per_stage: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_chans, in_size
        for i, w in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.out_shape = (c, size, size)
        self.num_features = c * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FeatureProjection(nn.Module):
    """The encoder of feature vectors: ``(B, D)`` float -> ``(B, widths[-1])`` through [Linear, LayerNorm, GELU]
    per hidden width (no image encoder: the features were computed once, by a frozen foundation model). LayerNorm
    is per vector, so a bag's other members never change an instance's projection."""

    def __init__(self, input_dim: int, widths: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = input_dim
        for w in widths:
            layers += [nn.Linear(c, w), nn.LayerNorm(w), nn.GELU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.out_shape = (c,)
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TimmEncoder(nn.Module):
    """Any timm model by name, pooled to a vector; optional local weights file (never downloads).

    With pretrained weights, inputs in [0, 1] are normalised with the mean and std of the model's pretrained
    config (timm's ``pretrained_cfg``, e.g. ImageNet's), on the device, inside the model, so training, features
    and segmentation all see what the weights were trained on. Without, inputs stay in [0, 1]."""

    def __init__(self, name: str, in_chans: int = 3, pretrained_file: str | None = None) -> None:
        super().__init__()
        import timm  # heavy: imported only for timm backbones

        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
        except RuntimeError as exc:  # unknown model name
            raise PathouccError(f"timm model '{name}': {exc}") from None
        self.normalise = bool(pretrained_file)
        if pretrained_file:
            load_weights(self.model, pretrained_file)
        mean, std = input_stats(self.model, in_chans)
        # not saved with the weights: derived from the backbone's name (model files stay as they were)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.num_features = self.model.num_features
        self.out_shape = (self.num_features,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(x)


def input_stats(model: nn.Module, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` ``(1, C, 1, 1)`` of a timm model's pretrained config (read from timm's registry, no
    download); (0, 1) when it has none. A config for 3 channels is averaged for another channel count."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    stats = []
    for key, default in (("mean", 0.0), ("std", 1.0)):
        v = torch.tensor([float(c) for c in cfg.get(key) or [default]], dtype=torch.float32)
        stats.append((v if len(v) == in_chans else v.mean().expand(in_chans)).reshape(1, in_chans, 1, 1).clone())
    return stats[0], stats[1]


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (``.pth``/``.pt`` via ``weights_only`` torch.load, or ``.safetensors``) into ``model``.

    Classifier weights whose shapes do not fit are dropped; other missing keys are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise PathouccError("pretrained weights file not found", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # installed with timm; needed only for .safetensors files

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise PathouccError(f"cannot read weights ({type(exc).__name__}: {exc})".splitlines()[0], path) from None
    else:
        state = read_torch(path, "weights file")
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in state]
    if missing:
        raise PathouccError(f"weights do not fit the model: {len(missing)} tensors missing, e.g. {missing[0]}", path)
    model.load_state_dict(state)
