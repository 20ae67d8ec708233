"""UDON: online multi-teacher distillation with dynamic domain sampling (SPEC §1).

The method (config, model, loss, training arguments, trainer) is registered once, with the transformers Auto
classes, by ``hf_distill.registry.register_method`` in ``hf_distill/trainers/udon.py``.
"""

from hf_distill.models.udon.configuration_udon import UDON_VARIANTS, UdonConfig, variant_settings
from hf_distill.models.udon.modeling_udon import UdonModel, UdonOutput, UdonPreTrainedModel

__all__ = [
    "UDON_VARIANTS",
    "UdonConfig",
    "UdonModel",
    "UdonOutput",
    "UdonPreTrainedModel",
    "variant_settings",
]
