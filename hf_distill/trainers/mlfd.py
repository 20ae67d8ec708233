"""``MlfdTrainer``: the three trainable MLFD stages (SPEC §4) on the shared :class:`DistillationTrainer`.

- stage 1, an individual teacher: an :class:`MlfdClassifierModel` on images, cross-entropy only (also the
  dataset-specific student trained without distillation, the baseline MLFD is compared with);
- stage 3, the joint teacher: a :class:`JointTeacherModel` on cached teacher maps of every dataset
  (:class:`~hf_distill.teachers.cache.CachedViewDataset` without images);
- stage 4, a student: an :class:`MlfdClassifierModel` on images, with the frozen joint teacher's logits and fused
  maps as targets. The joint teacher runs on the cached maps of the very image (and view) in the batch
  (:class:`~hf_distill.teachers.cache.CachedViewDataset`), so no individual teacher runs during training.

:class:`~hf_distill.losses.MlfdLoss` picks the stage's loss from the model it trains and whether it holds a
joint teacher.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hf_distill.losses.mlfd import MlfdLoss
from hf_distill.models.mlfd import (
    JointTeacherConfig,
    JointTeacherModel,
    MlfdClassifierConfig,
    MlfdClassifierModel,
)
from hf_distill.registry import MethodCard, MethodSpec, register_method
from hf_distill.trainers.arguments import MlfdTrainingArguments
from hf_distill.trainers.base import DistillationTrainer


class MlfdTrainer(DistillationTrainer):
    """Trains an MLFD individual teacher, the joint teacher or a student with an :class:`~hf_distill.losses.MlfdLoss`
    (see the module docstring); the stage runner (:mod:`hf_distill.trainers.mlfd_stages`) chains the stages.

    Args:
        *args: passed to :class:`DistillationTrainer`.
        loss: the stage's :class:`~hf_distill.losses.MlfdLoss` (default: cross-entropy, stages 1 and 3; give one
            with ``joint_teacher`` for stage 4).
        **kwargs: passed to :class:`DistillationTrainer`.
    """

    method = "mlfd"

    def __init__(self, *args: Any, loss: MlfdLoss | None = None, **kwargs: Any) -> None:
        super().__init__(*args, loss=loss if loss is not None else MlfdLoss(), **kwargs)
        joint_teacher = self.loss.joint_teacher
        if joint_teacher is not None:
            joint_teacher.to(self.args.device)
            self._check_student_matches(self.accelerator.unwrap_model(self.model), joint_teacher)

    @staticmethod
    def _check_student_matches(student: nn.Module, joint_teacher: JointTeacherModel) -> None:
        if not isinstance(student, MlfdClassifierModel):
            raise TypeError(
                f"a joint teacher distils into an MlfdClassifierModel, got {type(student).__name__}"
            )
        levels = joint_teacher.config.fusion_levels + 1
        if len(student.config.feature_levels) != levels:
            raise ValueError(
                f"the joint teacher has {levels} fused map(s) but the student distils "
                f"{len(student.config.feature_levels)} level(s) ({student.config.feature_levels}); give the "
                "student one feature level per fusion level"
            )
        if student.config.dataset not in joint_teacher.config.datasets:
            raise ValueError(
                f"student dataset {student.config.dataset!r} has no head in the joint teacher "
                f"({joint_teacher.config.datasets})"
            )


MLFD_CARD = MethodCard(
    title=(
        "MLFD — Multi-Level Feature Distillation of joint teachers trained on distinct image datasets "
        "(Iordache et al., WACV 2025)"
    ),
    summary=(
        "Trained with MLFD: dataset-specific teachers are fused into a joint teacher on cached features, "
        "whose multi-level fused maps and logits are distilled into the student."
    ),
    citation="""@inproceedings{iordache2025mlfd,
  title     = {Multi-Level Feature Distillation of Joint Teachers Trained on Distinct Image Datasets},
  author    = {Iordache, Adrian and Alexe, Bogdan and Ionescu, Radu Tudor},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2025}
}""",
)

register_method(
    MethodSpec(
        name="mlfd",
        config_class=MlfdClassifierConfig,
        model_class=MlfdClassifierModel,
        loss_class=MlfdLoss,
        training_arguments_class=MlfdTrainingArguments,
        trainer_class=MlfdTrainer,
        card=MLFD_CARD,
        extra_models=((JointTeacherConfig, JointTeacherModel),),
    )
)


__all__ = ["MlfdTrainer"]
