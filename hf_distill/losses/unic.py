"""UNIC's feature-distillation loss (Sariyildiz et al., ECCV 2024; SPEC §3).

Per image, teacher and token type: ``0.5·(1 − cos(pred, target)) + 0.5·SmoothL1(pred, target, β=1)``, the
smooth-L1 averaged over dimensions and patch losses averaged over patches. A teacher's loss per image is the
mean of its CLS and patch losses (the authors' released code; ``token_reduction="sum"`` gives the paper's
equation, which sums them). Teacher dropping then weighs the teachers per image.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_distill.losses.teacher_dropping import teacher_dropping_loss


def feature_distillation_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    beta: float = 1.0,
    cosine_weight: float = 0.5,
    smooth_l1_weight: float = 0.5,
) -> torch.Tensor:
    """Per-image cosine + smooth-L1 loss.

    Args:
        prediction: ``(batch, dim)`` or ``(batch, tokens, dim)``.
        target: same shape; treated as a constant.
        beta: smooth-L1 threshold.
        cosine_weight: weight of ``1 − cos``.
        smooth_l1_weight: weight of the dimension-averaged smooth-L1.

    Returns:
        ``(batch,)`` losses (token losses averaged over tokens).
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    # In float32: standardised float32 targets are not rounded to a half-precision prediction's dtype.
    prediction, target = prediction.float(), target.detach().float()
    cosine = F.cosine_similarity(prediction, target, dim=-1)
    smooth_l1 = F.smooth_l1_loss(prediction, target, beta=beta, reduction="none").mean(dim=-1)
    loss = cosine_weight * (1.0 - cosine) + smooth_l1_weight * smooth_l1
    return loss.mean(dim=1) if loss.dim() == 2 else loss


class UnicLoss(nn.Module):
    """UNIC's multi-teacher feature-distillation loss with teacher dropping (SPEC §3).

    Args:
        teacher_names: teachers in a fixed order.
        drop_prob: teacher-dropping probability ``p`` (released code 0.5; the paper's large models 0.25; 0
            disables dropping and every teacher counts equally).
        token_reduction: ``"mean"`` of the CLS and patch losses (released code, default) or ``"sum"`` (paper).
        beta: smooth-L1 threshold.

    Calling it as ``loss(model, inputs, generator)`` runs the student (a ``UnicStudentModel``) on
    ``inputs["pixel_values"]`` and compares its predictions with ``inputs["targets"]`` (teacher →
    ``{"cls": (B, D), "patch": (B, N, D)}``, already standardised by the trainer).
    """

    def __init__(
        self,
        teacher_names: list[str],
        drop_prob: float = 0.5,
        token_reduction: str = "mean",
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        if token_reduction not in ("mean", "sum"):
            raise ValueError(f"token_reduction must be 'mean' or 'sum', got {token_reduction!r}")
        if not teacher_names:
            raise ValueError("UnicLoss needs at least one teacher name")
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1), got {drop_prob}")
        self.teacher_names = list(teacher_names)
        self.drop_prob = drop_prob
        self.token_reduction = token_reduction
        self.beta = beta

    def forward(
        self, model: nn.Module, inputs: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Args:
            model: the (possibly wrapped) student.
            inputs: ``pixel_values`` (the student's normalised input) and ``targets``.
            generator: optional RNG for teacher dropping.

        Returns:
            ``"loss"`` plus, per teacher, ``<name>/cls``, ``<name>/patch``, ``<name>/loss`` and
            ``<name>/keep_rate``.
        """
        output = model(pixel_values=inputs["pixel_values"], output_predictions=True)
        return self.from_predictions(output.predictions, inputs["targets"], generator)

    def from_predictions(
        self,
        predictions: dict[str, dict[str, torch.Tensor]],
        targets: dict[str, dict[str, torch.Tensor]],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss from the student's predictions (same structure as the targets); see :meth:`forward`."""
        components: dict[str, torch.Tensor] = {}
        per_teacher = []
        for name in self.teacher_names:
            cls_loss = feature_distillation_loss(predictions[name]["cls"], targets[name]["cls"], self.beta)
            patch_loss = feature_distillation_loss(
                predictions[name]["patch"], targets[name]["patch"], self.beta
            )
            combined = cls_loss + patch_loss
            per_teacher.append(combined / 2 if self.token_reduction == "mean" else combined)
            components[f"{name}/cls"] = cls_loss.detach().mean()
            components[f"{name}/patch"] = patch_loss.detach().mean()
        dropped = teacher_dropping_loss(
            torch.stack(per_teacher, dim=1), self.drop_prob, self.teacher_names, generator
        )
        return {**dropped, **components}


__all__ = ["UnicLoss", "feature_distillation_loss"]
