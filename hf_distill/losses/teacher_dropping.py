"""Teacher dropping (UNIC, SPEC §3), vectorised over the batch.

For every image, the teacher with the largest loss is always kept and every other teacher is dropped with
probability ``p`` (released code: 0.5; the paper's large models: 0.25). The kept entries get coefficient 1,
the dropped ones 0; coefficients are divided by their total over batch × teachers and detached, and the loss
is the coefficient-weighted sum. The authors' code loops over images in Python; here one random draw and one
``scatter`` cover the whole batch.
"""

from __future__ import annotations

import torch


def teacher_dropping_coefficients(
    losses: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Normalised, detached coefficients ``(batch, teachers)``.

    Args:
        losses: ``(batch, teachers)`` per-image, per-teacher losses.
        drop_prob: probability of dropping a teacher that is not the image's max-loss teacher.
        generator: optional RNG for the draw (must live on ``losses.device``).
    """
    if losses.dim() != 2:
        raise ValueError(f"losses must be (batch, teachers), got shape {tuple(losses.shape)}")
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
    losses = losses.detach()
    keep = torch.rand(losses.shape, device=losses.device, generator=generator) >= drop_prob
    keep.scatter_(1, losses.argmax(dim=1, keepdim=True), True)
    # Float32 whatever the losses' dtype: 1 / (number kept) is not a bf16 number for most counts.
    coefficients = keep.float()
    return coefficients / coefficients.sum()


def teacher_dropping_loss(
    losses: torch.Tensor,
    drop_prob: float,
    teacher_names: list[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Coefficient-weighted loss with per-teacher diagnostics.

    Args:
        losses: ``(batch, teachers)`` per-image, per-teacher losses (with gradients).
        drop_prob: drop probability ``p`` of the non-max teachers.
        teacher_names: names for the logged components (default ``teacher_<i>``).
        generator: optional RNG for the draw.

    Returns:
        ``{"loss": ..., "<name>/loss": mean loss of that teacher, "<name>/keep_rate": fraction kept}``.
    """
    coefficients = teacher_dropping_coefficients(losses, drop_prob, generator)
    names = teacher_names or [f"teacher_{i}" for i in range(losses.shape[1])]
    if len(names) != losses.shape[1]:
        raise ValueError(f"{len(names)} teacher names for {losses.shape[1]} loss columns")
    output = {"loss": (coefficients * losses.float()).sum()}
    kept = (coefficients > 0).float().mean(dim=0)
    detached = losses.detach().mean(dim=0)
    for index, name in enumerate(names):
        output[f"{name}/loss"] = detached[index]
        output[f"{name}/keep_rate"] = kept[index]
    return output


__all__ = ["teacher_dropping_coefficients", "teacher_dropping_loss"]
