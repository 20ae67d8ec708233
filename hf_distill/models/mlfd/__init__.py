"""MLFD: multi-level feature distillation of joint teachers trained on distinct datasets (SPEC §4).

The method (config, model, loss, training arguments, trainer) is registered once, with the transformers Auto
classes, by ``hf_distill.registry.register_method`` in ``hf_distill/trainers/mlfd.py``.
"""

from hf_distill.models.mlfd.configuration_mlfd import JointTeacherConfig, MlfdClassifierConfig
from hf_distill.models.mlfd.modeling_mlfd import (
    JointTeacherModel,
    JointTeacherOutput,
    MlfdClassifierModel,
    MlfdClassifierOutput,
)

__all__ = [
    "JointTeacherConfig",
    "JointTeacherModel",
    "JointTeacherOutput",
    "MlfdClassifierConfig",
    "MlfdClassifierModel",
    "MlfdClassifierOutput",
]
