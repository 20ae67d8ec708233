"""The universal image embedder: the artefact every distillation method exports.

Importing this package registers the configuration, model and image processor with the transformers Auto
classes, so ``AutoModel.from_pretrained(dir)`` works after ``import hf_distill``.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from hf_distill.models.embedder.configuration_embedder import (
    UniversalEmbedderConfig,
    check_matryoshka_dims,
    check_truncate_dim,
)
from hf_distill.models.embedder.image_processing_embedder import UniversalEmbedderImageProcessor
from hf_distill.models.embedder.modeling_embedder import (
    UniversalEmbedderModel,
    UniversalEmbedderOutput,
    create_backbone,
)

AutoConfig.register(UniversalEmbedderConfig.model_type, UniversalEmbedderConfig, exist_ok=True)
AutoModel.register(UniversalEmbedderConfig, UniversalEmbedderModel, exist_ok=True)
AutoImageProcessor.register(
    UniversalEmbedderConfig,
    image_processor_classes={UniversalEmbedderImageProcessor.BACKEND: UniversalEmbedderImageProcessor},
    exist_ok=True,
)
# save_pretrained copies the self-contained configuration/modeling files and writes `auto_map`, so that
# trust_remote_code=True loads checkpoints in processes that never import hf_distill.
UniversalEmbedderConfig.register_for_auto_class()
UniversalEmbedderModel.register_for_auto_class("AutoModel")
UniversalEmbedderImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "UniversalEmbedderConfig",
    "UniversalEmbedderImageProcessor",
    "UniversalEmbedderModel",
    "UniversalEmbedderOutput",
    "check_matryoshka_dims",
    "check_truncate_dim",
    "create_backbone",
]
