"""Patches -> feature files (``pathoucc features``): a frozen timm encoder (hub weights through timm's cache, or
a local file) encodes the patches of tile files or CLAM/TRIDENT coords files, one TRIDENT-layout HDF5 per slide.

encoder (load_encoder, FrozenEncoder), extract (embed_patches), write (the TRIDENT layout), run (embed_files).
"""

from pathoucc.embed.encoder import FrozenEncoder, load_encoder
from pathoucc.embed.extract import embed_patches
from pathoucc.embed.run import EmbedReport, embed_files
from pathoucc.embed.write import feature_path, write_features

__all__ = ["EmbedReport", "FrozenEncoder", "embed_files", "embed_patches", "feature_path", "load_encoder",
           "write_features"]
