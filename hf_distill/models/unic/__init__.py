"""UNIC: a ViT student distilled from several frozen teachers through ladders of projectors (SPEC §3).

The method (config, model, loss, training arguments, trainer) is registered once, with the transformers Auto
classes, by ``hf_distill.registry.register_method`` in ``hf_distill/trainers/unic.py``.
"""

from hf_distill.models.unic.configuration_unic import TOKEN_TYPES, UnicStudentConfig
from hf_distill.models.unic.modeling_unic import UnicStudentModel, UnicStudentOutput

__all__ = [
    "TOKEN_TYPES",
    "UnicStudentConfig",
    "UnicStudentModel",
    "UnicStudentOutput",
]
