"""Relational distillation: match the student's batch similarity matrix to the teacher's.

UDON (SPEC §1, Eq. (5) of the paper): ``S = E·Eᵀ`` is the B×B cosine-similarity matrix of L2-normalised
embeddings; the loss is the squared difference between student and teacher matrices, summed over each row and
averaged over rows, with the teacher side detached. Teacher and student dimensions may differ (256 vs 64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def similarity_matrix(embeddings: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``E·Eᵀ`` for ``(batch, dim)`` embeddings, normalising them first when asked.

    Args:
        embeddings: ``(batch, dim)``.
        normalize: L2-normalise the rows first, giving cosine similarities.
    """
    # Float32 even under autocast: the loss is the small difference of two such matrices.
    with torch.autocast(embeddings.device.type, enabled=False):
        embeddings = embeddings.float()
        if normalize:
            embeddings = F.normalize(embeddings, dim=-1)
        return embeddings @ embeddings.T


def relational_distillation_loss(
    student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Row-summed, row-averaged squared error between student and (detached) teacher similarity matrices.

    Args:
        student_embeddings: ``(batch, d_s)``.
        teacher_embeddings: ``(batch, d_t)``.
        normalize: L2-normalise both before taking similarities.
    """
    if student_embeddings.shape[0] != teacher_embeddings.shape[0]:
        raise ValueError(
            f"student and teacher batches differ: {student_embeddings.shape[0]} vs {teacher_embeddings.shape[0]}"
        )
    student = similarity_matrix(student_embeddings, normalize)
    teacher = similarity_matrix(teacher_embeddings.detach(), normalize)
    return (student - teacher).pow(2).sum(dim=1).mean()


class RelationalDistillationLoss(nn.Module):
    """:func:`relational_distillation_loss` as a module returning ``{"loss": ...}``.

    Args:
        normalize: L2-normalise the embeddings before taking similarities.
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(
        self, student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Args:
        student_embeddings: ``(batch, d_s)``.
        teacher_embeddings: ``(batch, d_t)``; detached inside.
        """
        return {"loss": relational_distillation_loss(student_embeddings, teacher_embeddings, self.normalize)}
