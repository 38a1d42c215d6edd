"""``create_model``: a :class:`~pathoucc.models.ucc.UCCModel` from a :class:`~pathoucc.config.ModelConfig`."""

from __future__ import annotations

from pathoucc.config import ModelConfig
from pathoucc.errors import PathouccError
from pathoucc.models.decoder import ConvDecoder, FeatureDecoder
from pathoucc.models.encoders import ConvEncoder, FeatureProjection, ResidualEncoder, TimmEncoder
from pathoucc.models.kde import KDE
from pathoucc.models.presence import PresenceCount
from pathoucc.models.ucc import UCCModel

__all__ = ["BUILTIN_BACKBONES", "create_encoder", "create_model", "input_shape"]

BUILTIN_BACKBONES = ("conv", "resnet", "mlp")


def input_shape(cfg: ModelConfig) -> tuple[int, ...]:
    """The shape of one instance the model takes: ``(D,)`` for ``mlp`` (feature vectors), else ``(C, H, W)``."""
    if cfg.backbone == "mlp":
        if cfg.input_dim is None:
            raise PathouccError("model.input_dim is unset: the length of the feature vectors (taken from the "
                                "feature files when training)")
        return (cfg.input_dim,)
    return cfg.in_chans, cfg.input_size, cfg.input_size


def create_encoder(cfg: ModelConfig):
    """``conv`` (fast plain CNN), ``resnet`` (the paper's wide-residual encoder), ``mlp`` (a projection of feature
    vectors of ``input_dim`` values through ``widths``) or any timm model name."""
    if cfg.backbone == "conv":
        return ConvEncoder(cfg.in_chans, tuple(cfg.widths), cfg.input_size, cfg.blocks_per_stage)
    if cfg.backbone == "resnet":
        return ResidualEncoder(cfg.in_chans, tuple(cfg.widths), cfg.input_size, cfg.blocks_per_stage)
    if cfg.backbone == "mlp":
        return FeatureProjection(input_shape(cfg)[0], tuple(cfg.widths))
    return TimmEncoder(cfg.backbone, cfg.in_chans, cfg.pretrained_file)


def create_model(cfg: ModelConfig, num_ucc: int, ucc_min: int = 1) -> UCCModel:
    """Build the UCC model described by ``cfg`` predicting ``num_ucc`` counts from ``ucc_min`` (by the KDE and
    MLP, or with ``count_head: presence`` as the number of present latent clusters); with an ``mlp`` backbone
    the decoder (if any) reconstructs the input feature vector."""
    encoder = create_encoder(cfg)
    decoder = None
    if cfg.decoder and cfg.backbone == "mlp":
        decoder = FeatureDecoder(cfg.num_features, input_shape(cfg)[0], tuple(cfg.decoder_widths))
    elif cfg.decoder:
        decoder = ConvDecoder(cfg.num_features, cfg.in_chans, cfg.input_size, tuple(cfg.decoder_widths),
                              cfg.decoder_residual)
    kde = KDE(cfg.num_bins, cfg.sigma, cfg.kde_pool)
    presence = None
    if cfg.count_head == "presence":
        presence = PresenceCount(cfg.num_features, cfg.presence_clusters, num_ucc, ucc_min)
    return UCCModel(encoder, cfg.num_features, kde, list(cfg.mlp), num_ucc, decoder, cfg.feature_norm,
                    cfg.iic_clusters, presence)
