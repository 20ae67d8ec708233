"""Losses: one module per method (``UdonLoss``, ``UnicLoss``, ``MlfdLoss``), each owning its hyper-parameters and
returning a dict of named components (``"loss"`` plus what the trainer logs), and the shared pieces they are
built from. A method loss is called as ``loss(model, inputs)``: it runs the model and computes from its outputs.
"""

from hf_distill.losses.classification import CosineClassificationLoss, apply_margin
from hf_distill.losses.logit import (
    LogitDistillationLoss,
    SoftCrossEntropyDistillationLoss,
    kl_logit_distillation,
    soft_cross_entropy_distillation,
)
from hf_distill.losses.mlfd import MlfdLoss, feature_map_mse, multi_level_distillation_loss
from hf_distill.losses.relational import (
    RELATIONAL_SCALES,
    RelationalDistillationLoss,
    relational_distillation_loss,
    similarity_matrix,
)
from hf_distill.losses.standardization import FeatureStandardizer, cosine_momentum
from hf_distill.losses.teacher_dropping import teacher_dropping_coefficients, teacher_dropping_loss
from hf_distill.losses.udon import UdonLoss
from hf_distill.losses.unic import UnicLoss, feature_distillation_loss

__all__ = [
    "RELATIONAL_SCALES",
    "CosineClassificationLoss",
    "FeatureStandardizer",
    "LogitDistillationLoss",
    "MlfdLoss",
    "RelationalDistillationLoss",
    "SoftCrossEntropyDistillationLoss",
    "UdonLoss",
    "UnicLoss",
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
