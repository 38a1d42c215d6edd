"""Models: ``create_model`` (:mod:`.factory`) builds a :class:`UCCModel` (:mod:`.ucc`) from an encoder
(:mod:`.encoders`), a KDE layer (:mod:`.kde`) and an optional decoder (:mod:`.decoder`)."""

from __future__ import annotations

from pathoucc.models.factory import BUILTIN_BACKBONES, create_encoder, create_model, input_shape
from pathoucc.models.kde import KDE
from pathoucc.models.ucc import UCCModel

__all__ = ["BUILTIN_BACKBONES", "KDE", "UCCModel", "create_encoder", "create_model", "input_shape"]
