"""UDON: online multi-teacher distillation with dynamic domain sampling (SPEC §1).

Importing this package registers :class:`UdonConfig` / :class:`UdonModel` with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel

from hf_distill.models.udon.configuration_udon import UDON_VARIANTS, UdonConfig, variant_settings
from hf_distill.models.udon.modeling_udon import UdonModel, UdonOutput, UdonPreTrainedModel

AutoConfig.register(UdonConfig.model_type, UdonConfig, exist_ok=True)
AutoModel.register(UdonConfig, UdonModel, exist_ok=True)

__all__ = [
    "UDON_VARIANTS",
    "UdonConfig",
    "UdonModel",
    "UdonOutput",
    "UdonPreTrainedModel",
    "variant_settings",
]
