"""Reusable building blocks shared by the methods' models."""

from hf_distill.layers.normalization import (
    BACKBONE_NORM_MODES,
    BackboneNormMixin,
    resolve_backbone_norm,
    running_stat_modules,
    set_backbone_train_mode,
)

__all__ = [
    "BACKBONE_NORM_MODES",
    "BackboneNormMixin",
    "resolve_backbone_norm",
    "running_stat_modules",
    "set_backbone_train_mode",
]
