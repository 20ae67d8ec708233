"""MLFD: multi-level feature distillation of joint teachers trained on distinct datasets (SPEC §4).

Importing this package registers the configurations and models with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel

from hf_distill.models.mlfd.configuration_mlfd import JointTeacherConfig, MlfdClassifierConfig
from hf_distill.models.mlfd.modeling_mlfd import (
    JointTeacherModel,
    JointTeacherOutput,
    MlfdClassifierModel,
    MlfdClassifierOutput,
    align_spatial,
)

for _config, _model in ((MlfdClassifierConfig, MlfdClassifierModel), (JointTeacherConfig, JointTeacherModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)

__all__ = [
    "JointTeacherConfig",
    "JointTeacherModel",
    "JointTeacherOutput",
    "MlfdClassifierConfig",
    "MlfdClassifierModel",
    "MlfdClassifierOutput",
    "align_spatial",
]
