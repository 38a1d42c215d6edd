"""A train state: the weights, the optimiser, the loss scaler, the random generators and where the loop is; it
saves itself to the run folder's checkpoint (through :func:`pathoucc.run.save_weights`) and loads itself back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pathoucc.run import save_weights

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Everything one loop changes, and so everything a checkpoint holds.

    modules : the modules saved, by name (``{"model": model}``; the refinement adds ``"classifier"``).
    net : what the step trains through: the model, or its DistributedDataParallel wrapper.
    optimizer, scaler : the optimiser and the fp16 loss scaler (disabled outside fp16).
    device, amp_dtype : where the step runs and its autocast type (None: fp32).
    step, elapsed : steps done, training seconds (validation excluded).
    rng : a numpy generator the steps draw from (saved with torch's global generator), or None.
    meta : saved as is beside the state (config, world size, ...).
    """

    modules: dict[str, nn.Module]
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None = None
    step: int = 0
    elapsed: float = 0.0
    rng: np.random.Generator | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimise(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``: gradients cleared, backward (scaled under fp16), step, scaler update."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        state = {name: module.state_dict() for name, module in self.modules.items()}
        state |= {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                  "torch_rng": torch.get_rng_state(), "step": self.step, "elapsed": self.elapsed}
        if self.rng is not None:
            state["numpy_rng"] = json.dumps(self.rng.bit_generator.state)
        return state | self.meta

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (``meta`` stays as set by the caller)."""
        for name, module in self.modules.items():
            module.load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.rng is not None:
            self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])

    def save(self, path: str | Path) -> None:
        """Write the checkpoint ``path`` atomically (the previous one stays if the disk is full)."""
        save_weights(self.state_dict(), path)
