"""MLFD's losses: the student's hard labels, the joint teacher's soft labels and its fused maps at several levels.

``L = γ·CE(y, s) + α·T²·SoftCE(softmax(t/T), log_softmax(s/T)) + Σ_c β_c·MSE(student map_c, fused map_c)``
(Iordache, Alexe, Ionescu, "Multi-Level Feature Distillation of Joint Teachers Trained on Distinct Image
Datasets", WACV 2025; SPEC §4 step 4). Released defaults: α = 0.6, β = 0.2 (one level), γ = 0.2, T = 2.

Student maps must already have the teacher's channel count (the student-side 1×1 adaptors live in
:class:`~hf_distill.models.mlfd.MlfdClassifierModel`); their grids are aligned here to the teacher's with
:func:`~hf_distill.layers.align_spatial`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

from hf_distill.layers import align_spatial
from hf_distill.losses.logit import soft_cross_entropy_distillation
from hf_distill.models.mlfd.configuration_mlfd import JointTeacherConfig
from hf_distill.teachers.cache import map_column


def feature_map_mse(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Mean squared error between a student map, resized to the teacher's grid, and the detached teacher map.

    Args:
        student_map: ``(B, C, h_s, w_s)``.
        teacher_map: ``(B, C, h_t, w_t)``; the same ``C`` (add a student-side adaptor otherwise).
    """
    if student_map.dim() != 4 or teacher_map.dim() != 4:
        raise ValueError(
            f"feature maps must be (B, C, H, W), got {tuple(student_map.shape)} and {tuple(teacher_map.shape)}"
        )
    if student_map.shape[:2] != teacher_map.shape[:2]:
        raise ValueError(
            f"student map {tuple(student_map.shape)} and fused map {tuple(teacher_map.shape)} differ in batch or "
            "channels; set distill_channels on the student config so that it adds a 1x1 adaptor"
        )
    aligned = align_spatial(student_map, teacher_map.shape[-2:])
    return F.mse_loss(aligned.float(), teacher_map.detach().float())


def multi_level_distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    student_maps: Sequence[torch.Tensor] = (),
    teacher_maps: Sequence[torch.Tensor] = (),
    alpha: float = 0.6,
    betas: Sequence[float] = (0.2,),
    gamma: float = 0.2,
    temperature: float = 2.0,
) -> dict[str, torch.Tensor]:
    """MLFD student loss and its unweighted components.

    Args:
        student_logits: ``(B, classes)``.
        labels: ``(B,)`` class indices.
        teacher_logits: ``(B, classes)`` joint-teacher logits for the student's dataset; ``None`` drops the term.
        student_maps: one adapted student map per distilled level.
        teacher_maps: the joint teacher's fused maps, one per level (same order).
        alpha: weight of the soft cross-entropy (which already carries ``T²``).
        betas: weight of each level's MSE.
        gamma: weight of the hard-label cross-entropy.
        temperature: T of the soft cross-entropy.

    Returns:
        ``{"loss", "ce", "soft_ce", "mse_0", "mse_1", …}`` (``soft_ce`` / ``mse_c`` only for the terms present).
    """
    if len(student_maps) != len(teacher_maps):
        raise ValueError(
            f"{len(student_maps)} student maps for {len(teacher_maps)} fused maps; give one per level"
        )
    if len(betas) != len(teacher_maps):
        raise ValueError(
            f"{len(betas)} beta weights for {len(teacher_maps)} distilled levels; give one per level"
        )
    ce = F.cross_entropy(student_logits, labels)
    losses = {"ce": ce}
    total = gamma * ce
    if teacher_logits is not None:
        soft_ce = soft_cross_entropy_distillation(student_logits, teacher_logits, temperature)
        losses["soft_ce"] = soft_ce
        total = total + alpha * soft_ce
    for level, (student_map, teacher_map, beta) in enumerate(zip(student_maps, teacher_maps, betas)):
        mse = feature_map_mse(student_map, teacher_map)
        losses[f"mse_{level}"] = mse
        total = total + beta * mse
    losses["loss"] = total
    return losses


class MlfdLoss(nn.Module):
    """The loss of every MLFD stage (SPEC §4), computed from the model being trained and the batch.

    - an individual teacher, or a dataset-specific student without distillation: ``CE(y, s)``;
    - the joint teacher (a ``JointTeacherModel``, fed the cached teacher maps): ``CE`` of its dataset heads;
    - a student with ``joint_teacher`` given: :func:`multi_level_distillation_loss` against the frozen joint
      teacher's logits for the student's dataset and its fused maps.

    Args:
        joint_teacher: the trained joint teacher (stage 4), kept frozen and in eval mode here.
        alpha: weight of the ``T²``-scaled soft cross-entropy (released default 0.6).
        beta: MSE weight of each level; one float applies to every level (released default 0.2, one level).
        gamma: weight of the hard-label cross-entropy (released default 0.2).
        temperature: T (released default 2).
    """

    def __init__(
        self,
        joint_teacher: nn.Module | None = None,
        alpha: float = 0.6,
        beta: float | Sequence[float] = 0.2,
        gamma: float = 0.2,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.alpha, self.gamma, self.temperature = alpha, gamma, temperature
        self.beta = beta
        # Not a sub-module: the teacher's weights are neither trained nor saved with the loss.
        self._joint_teacher = [joint_teacher] if joint_teacher is not None else []
        if joint_teacher is not None:
            joint_teacher.eval().requires_grad_(False)

    @property
    def joint_teacher(self) -> nn.Module | None:
        """The frozen joint teacher (stage 4), or ``None``."""
        return self._joint_teacher[0] if self._joint_teacher else None

    def betas(self, levels: int) -> list[float]:
        """The MSE weight of each of ``levels`` distilled levels.

        Args:
            levels: number of distilled levels.
        """
        if isinstance(self.beta, (int, float)):
            return [float(self.beta)] * levels
        return [float(beta) for beta in self.beta]

    @staticmethod
    def teacher_maps(inputs: dict[str, Any], names: Sequence[str]) -> list[torch.Tensor]:
        """The cached teacher maps of a batch, in ``names`` order (columns ``maps_<name>``)."""
        missing = [map_column(name) for name in names if map_column(name) not in inputs]
        if missing:
            raise KeyError(f"the batch lacks the cached teacher map column(s) {missing}")
        return [inputs[map_column(name)] for name in names]

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Args:
        model: the (possibly wrapped) model being trained.
        inputs: the batch (``pixel_values``/``labels``, plus ``maps_*`` and ``domain_ids`` for the joint
            teacher and the distilled students; a student over a cached trunk gets ``trunk_maps`` instead of
            ``pixel_values``).
        """
        labels = inputs["labels"].long()
        config = extract_model_from_parallel(model).config
        if config.model_type == JointTeacherConfig.model_type:
            maps = self.teacher_maps(inputs, config.teacher_names)
            output = model(teacher_maps=maps, domain_ids=inputs["domain_ids"])
            ce = F.cross_entropy(output.logits, labels.to(output.logits.device))
            return {"loss": ce, "ce": ce}
        teacher = self.joint_teacher
        if teacher is None:
            ce = F.cross_entropy(model(pixel_values=inputs["pixel_values"]).logits, labels)
            return {"loss": ce, "ce": ce}
        joint = teacher.config
        with torch.no_grad():
            target = teacher(
                teacher_maps=self.teacher_maps(inputs, joint.teacher_names), domain_ids=inputs["domain_ids"]
            )
        num_classes = joint.num_classes[joint.datasets.index(config.dataset)]
        # A student over a cached trunk reads the trunk's maps of the view instead of its pixels.
        images = {key: inputs[key] for key in ("pixel_values", "trunk_maps") if key in inputs}
        output = model(**images, output_feature_maps=True)
        return multi_level_distillation_loss(
            output.logits,
            labels,
            target.logits[:, :num_classes],
            output.distill_maps,
            target.fused_maps,
            alpha=self.alpha,
            betas=self.betas(len(target.fused_maps)),
            gamma=self.gamma,
            temperature=self.temperature,
        )


__all__ = ["MlfdLoss", "feature_map_mse", "multi_level_distillation_loss"]
