"""Losses shared by the methods; each module returns named components that the trainers log."""

from hf_distill.losses.classification import CosineClassificationLoss, CosineClassifier, apply_margin
from hf_distill.losses.logit import (
    LogitDistillationLoss,
    SoftCrossEntropyDistillationLoss,
    kl_logit_distillation,
    soft_cross_entropy_distillation,
)
from hf_distill.losses.multilevel import (
    MultiLevelDistillationLoss,
    feature_map_mse,
    multi_level_distillation_loss,
)
from hf_distill.losses.relational import (
    RelationalDistillationLoss,
    relational_distillation_loss,
    similarity_matrix,
)
from hf_distill.losses.standardization import FeatureStandardizer, cosine_momentum
from hf_distill.losses.teacher_dropping import teacher_dropping_coefficients, teacher_dropping_loss
from hf_distill.losses.unic import UnicDistillationLoss, feature_distillation_loss

__all__ = [
    "CosineClassificationLoss",
    "CosineClassifier",
    "FeatureStandardizer",
    "LogitDistillationLoss",
    "MultiLevelDistillationLoss",
    "RelationalDistillationLoss",
    "SoftCrossEntropyDistillationLoss",
    "UnicDistillationLoss",
    "apply_margin",
    "cosine_momentum",
    "feature_distillation_loss",
    "feature_map_mse",
    "kl_logit_distillation",
    "multi_level_distillation_loss",
    "relational_distillation_loss",
    "similarity_matrix",
    "soft_cross_entropy_distillation",
    "teacher_dropping_coefficients",
    "teacher_dropping_loss",
]
