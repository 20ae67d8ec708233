"""Cosine classifier: a linear classifier on the unit sphere (NormFace; used by UDON and the UnED baselines).

Reference: Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", ACM MM 2017.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """Linear classifier on the unit sphere: ``cos(feature, class weight)`` for every class.

    Args:
        in_features: dimension of the features.
        num_classes: number of classes.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the class weights from N(0, 1/in_features) (their norm is irrelevant: they are normalised)."""
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.in_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine logits of shape ``(batch, num_classes)``.

        Args:
            features: ``(batch, in_features)``; normalised here, so unnormalised input is fine.
        """
        # Float32 even under autocast: the cosines are scaled (UDON: x16) into a softmax, and a half-precision
        # product would move the logits by up to ~0.06.
        with torch.autocast(features.device.type, enabled=False):
            return F.linear(F.normalize(features.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


__all__ = ["CosineClassifier"]
