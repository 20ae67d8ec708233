"""Reusable building blocks shared by the methods' models."""

from hf_distill.layers.classifier import CosineClassifier
from hf_distill.layers.grid import align_spatial, resize_grid, resize_token_grid
from hf_distill.layers.normalization import (
    BACKBONE_NORM_MODES,
    BackboneNormMixin,
    resolve_backbone_norm,
    running_stat_modules,
    set_backbone_train_mode,
)
from hf_distill.layers.pixels import PixelNormalize
from hf_distill.layers.projector import Projector, ProjectorLadder

__all__ = [
    "BACKBONE_NORM_MODES",
    "BackboneNormMixin",
    "CosineClassifier",
    "PixelNormalize",
    "Projector",
    "ProjectorLadder",
    "align_spatial",
    "resize_grid",
    "resize_token_grid",
    "resolve_backbone_norm",
    "running_stat_modules",
    "set_backbone_train_mode",
]
