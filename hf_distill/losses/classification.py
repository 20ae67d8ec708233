"""Cosine classifiers and their margin losses (NormFace, CosFace, ArcFace).

The classifier holds one weight vector per class; features and weights are both L2-normalised, so its outputs
are cosine logits in [-1, 1]. The loss multiplies them by a scale ``s`` after an optional additive margin on
the true class (UDON, SPEC §1: s = 16, margin 0, i.e. NormFace).

References: Wang et al., "NormFace", ACM MM 2017; Wang et al., "CosFace", CVPR 2018; Deng et al., "ArcFace",
CVPR 2019.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hf_distill.layers.classifier import CosineClassifier

MARGIN_TYPES = ("none", "cosface", "arcface")

__all__ = ["MARGIN_TYPES", "CosineClassificationLoss", "CosineClassifier", "apply_margin"]


def apply_margin(cosine: torch.Tensor, labels: torch.Tensor, margin: float, margin_type: str) -> torch.Tensor:
    """Return the cosine logits with the margin applied to each row's true class.

    Args:
        cosine: ``(batch, num_classes)`` cosine logits.
        labels: ``(batch,)`` class indices.
        margin: the margin ``m``.
        margin_type: ``"none"`` (NormFace), ``"cosface"`` (``cos θ − m``) or ``"arcface"`` (``cos(θ + m)``).
    """
    if margin_type not in MARGIN_TYPES:
        raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got '{margin_type}'")
    if margin_type == "none" or margin == 0.0:
        return cosine
    target = cosine.gather(1, labels[:, None])
    if margin_type == "cosface":
        adjusted = target - margin
    else:
        # cos(θ + m) is not monotonic once θ + m > π; past that point continue linearly (keeps the penalty
        # growing with θ) as the ArcFace paper's implementation note suggests.
        theta = torch.acos(target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        linear = target - margin * math.sin(margin)
        adjusted = torch.where(target > math.cos(math.pi - margin), torch.cos(theta + margin), linear)
    return cosine.scatter(1, labels[:, None], adjusted)


class CosineClassificationLoss(nn.Module):
    """Cross-entropy on scaled cosine logits with an optional margin: ``CE(s · margin(c), y)``.

    Args:
        scale: the scale ``s`` (UDON: 16).
        margin: the additive margin ``m`` (0 for NormFace).
        margin_type: ``"none"``, ``"cosface"`` or ``"arcface"``.
    """

    def __init__(self, scale: float = 16.0, margin: float = 0.0, margin_type: str = "none") -> None:
        super().__init__()
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got '{margin_type}'")
        self.scale = scale
        self.margin = margin
        self.margin_type = margin_type

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss": cross-entropy, "accuracy": top-1 of the raw cosine logits}``.

        Args:
            cosine: ``(batch, num_classes)`` cosine logits from a :class:`CosineClassifier`.
            labels: ``(batch,)`` class indices in ``[0, num_classes)``.
        """
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cosine.shape[1]):
            raise ValueError(
                f"labels must lie in [0, {cosine.shape[1]}) for this classifier, got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        logits = self.scale * apply_margin(cosine, labels, self.margin, self.margin_type)
        loss = F.cross_entropy(logits, labels)
        accuracy = (cosine.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}
