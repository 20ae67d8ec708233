"""Logit distillation: KL divergence between temperature-softened teacher and student distributions.

UDON (SPEC §1) uses ``KL(softmax(c_t/τ) ‖ softmax(c_s/τ))`` on the raw cosine logits with τ = 0.1, summed over
classes and averaged over the batch, teacher side detached. MLFD (SPEC §4) uses Hinton et al.'s soft
cross-entropy with the ``T²`` factor: :func:`soft_cross_entropy_distillation`.

References: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015; Ypsilantis et al., "UDON",
NeurIPS 2024, Eq. (4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_logit_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``KL(softmax(t/τ) ‖ softmax(s/τ))`` summed over classes, averaged over the batch; teacher detached.

    Args:
        student_logits: ``(batch, classes)``.
        teacher_logits: ``(batch, classes)``.
        temperature: τ, applied to both sides.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    # In float32: half-precision logits divided by a small temperature lose most of their resolution.
    teacher_log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student_log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)


def soft_cross_entropy_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T² · mean_batch(−Σ softmax(t/T) · log_softmax(s/T))``: Hinton's soft cross-entropy, teacher detached.

    The ``T²`` factor keeps the gradient magnitude independent of the temperature (MLFD, SPEC §4).

    Args:
        student_logits: ``(batch, classes)``.
        teacher_logits: ``(batch, classes)``.
        temperature: T.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    teacher_p = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student_log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return temperature**2 * -(teacher_p * student_log_p).sum(dim=-1).mean()


class _TemperatureDistillationLoss(nn.Module):
    """A logit-distillation function with a fixed temperature, as a module returning ``{"loss": ...}``."""

    default_temperature: float

    def __init__(self, temperature: float | None = None) -> None:
        super().__init__()
        temperature = self.default_temperature if temperature is None else temperature
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    @staticmethod
    def distill(
        student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
        student_logits: ``(batch, classes)``.
        teacher_logits: ``(batch, classes)``; detached inside.
        """
        return {"loss": self.distill(student_logits, teacher_logits, self.temperature)}


class LogitDistillationLoss(_TemperatureDistillationLoss):
    """KL logit distillation (:func:`kl_logit_distillation`).

    Args:
        temperature: τ applied to teacher and student logits (UDON: 0.1 on cosine logits).
    """

    default_temperature = 0.1
    distill = staticmethod(kl_logit_distillation)


class SoftCrossEntropyDistillationLoss(_TemperatureDistillationLoss):
    """Soft cross-entropy distillation with the ``T²`` factor (:func:`soft_cross_entropy_distillation`).

    Args:
        temperature: T (MLFD released default: 2).
    """

    default_temperature = 2.0
    distill = staticmethod(soft_cross_entropy_distillation)
