"""``create_model``: a :class:`~pathoucc.models.ucc.UCCModel` from a :class:`~pathoucc.config.ModelConfig`."""

from __future__ import annotations

from pathoucc.config import ModelConfig
from pathoucc.models.decoder import ConvDecoder
from pathoucc.models.encoders import ConvEncoder, ResidualEncoder, TimmEncoder
from pathoucc.models.kde import KDE
from pathoucc.models.ucc import UCCModel

__all__ = ["BUILTIN_BACKBONES", "create_encoder", "create_model"]

BUILTIN_BACKBONES = ("conv", "resnet")


def create_encoder(cfg: ModelConfig):
    """``conv`` (fast plain CNN), ``resnet`` (the paper's wide-residual encoder) or any timm model name."""
    if cfg.backbone == "conv":
        return ConvEncoder(cfg.in_chans, tuple(cfg.widths), cfg.input_size, cfg.blocks_per_stage)
    if cfg.backbone == "resnet":
        return ResidualEncoder(cfg.in_chans, tuple(cfg.widths), cfg.input_size, cfg.blocks_per_stage)
    return TimmEncoder(cfg.backbone, cfg.in_chans, cfg.pretrained_file)


def create_model(cfg: ModelConfig, num_ucc: int) -> UCCModel:
    """Build the UCC model described by ``cfg`` with a ``num_ucc``-way ucc classifier."""
    encoder = create_encoder(cfg)
    decoder = None
    if cfg.decoder:
        decoder = ConvDecoder(cfg.num_features, cfg.in_chans, cfg.input_size, tuple(cfg.decoder_widths),
                              cfg.decoder_residual)
    kde = KDE(cfg.num_bins, cfg.sigma, cfg.kde_pool)
    return UCCModel(encoder, cfg.num_features, kde, list(cfg.mlp), num_ucc, decoder, cfg.feature_norm)
