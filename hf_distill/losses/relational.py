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


RELATIONAL_SCALES = ("fixed", "authors")


def relational_distillation_loss(
    student_embeddings: torch.Tensor,
    teacher_embeddings: torch.Tensor,
    normalize: bool = True,
    scale: str = "fixed",
    reference_rows: int = 32,
    num_processes: int | None = None,
) -> torch.Tensor:
    """Squared error between student and (detached) teacher similarity matrices, averaged over rows.

    The paper sums each row's squared errors, so the loss grows with the batch. How that is scaled (SPEC §6):

    - ``"fixed"`` (default): the mean over all ``B×B`` entries times ``reference_rows`` — the row sum of a
      ``reference_rows``-image batch whatever the per-process batch and the number of processes. With 32 it
      equals the authors' weight at their global batch of 128.
    - ``"authors"`` (the released code): each process sums rows over its own batch and multiplies by
      ``num_processes / 4``, so the weight changes with the per-process batch size.

    Args:
        student_embeddings: ``(batch, d_s)``.
        teacher_embeddings: ``(batch, d_t)``.
        normalize: L2-normalise both before taking similarities.
        scale: ``"fixed"`` or ``"authors"``.
        reference_rows: row length the ``"fixed"`` scale is expressed in.
        num_processes: processes of the run for ``"authors"`` (default: the ``torch.distributed`` world size).
    """
    if student_embeddings.shape[0] != teacher_embeddings.shape[0]:
        raise ValueError(
            f"student and teacher batches differ: {student_embeddings.shape[0]} vs {teacher_embeddings.shape[0]}"
        )
    if scale not in RELATIONAL_SCALES:
        raise ValueError(f"relational scale must be one of {RELATIONAL_SCALES}, got {scale!r}")
    # Float32 even under autocast: the entries are differences of cosines close to each other.
    with torch.autocast(student_embeddings.device.type, enabled=False):
        student = similarity_matrix(student_embeddings.float(), normalize)
        teacher = similarity_matrix(teacher_embeddings.detach().float(), normalize)
        squared = (student - teacher).pow(2)
        if scale == "fixed":
            return squared.mean() * reference_rows
        if num_processes is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_processes = torch.distributed.get_world_size() if distributed else 1
        return squared.sum(dim=1).mean() * (num_processes / 4)


class RelationalDistillationLoss(nn.Module):
    """:func:`relational_distillation_loss` as a module returning ``{"loss": ...}``.

    Args:
        normalize: L2-normalise the embeddings before taking similarities.
        scale: ``"fixed"`` (default) or ``"authors"``; see :func:`relational_distillation_loss`.
        reference_rows: row length of the ``"fixed"`` scale.
    """

    def __init__(self, normalize: bool = True, scale: str = "fixed", reference_rows: int = 32) -> None:
        super().__init__()
        if scale not in RELATIONAL_SCALES:
            raise ValueError(f"relational scale must be one of {RELATIONAL_SCALES}, got {scale!r}")
        self.normalize = normalize
        self.scale = scale
        self.reference_rows = reference_rows

    def forward(
        self, student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Args:
        student_embeddings: ``(batch, d_s)``.
        teacher_embeddings: ``(batch, d_t)``; detached inside.
        """
        loss = relational_distillation_loss(
            student_embeddings, teacher_embeddings, self.normalize, self.scale, self.reference_rows
        )
        return {"loss": loss}
