"""UNIC: a ViT student distilled from several frozen teachers through ladders of projectors (SPEC §3).

Importing this package registers the configuration and model with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel

from hf_distill.models.unic.configuration_unic import TOKEN_TYPES, UnicStudentConfig
from hf_distill.models.unic.modeling_unic import (
    Projector,
    ProjectorLadder,
    UnicStudentModel,
    UnicStudentOutput,
    resize_token_grid,
)

AutoConfig.register(UnicStudentConfig.model_type, UnicStudentConfig, exist_ok=True)
AutoModel.register(UnicStudentConfig, UnicStudentModel, exist_ok=True)

__all__ = [
    "TOKEN_TYPES",
    "Projector",
    "ProjectorLadder",
    "UnicStudentConfig",
    "UnicStudentModel",
    "UnicStudentOutput",
    "resize_token_grid",
]
