"""The universal image embedder: backbone → pooling → (optional L2) → linear head → L2.

Self-contained on purpose: this file is copied next to saved checkpoints and imported by
``trust_remote_code=True`` in processes that never import hf_distill, so it may only import torch,
transformers, timm and its sibling configuration file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import ModelOutput

from .configuration_embedder import UniversalEmbedderConfig

logger = logging.getLogger(__name__)


@dataclass
class UniversalEmbedderOutput(ModelOutput):
    """Output of :class:`UniversalEmbedderModel`.

    Args:
        embeddings: ``(batch, embed_dim)`` universal embeddings (L2-normalised when ``config.normalize``).
        backbone_features: ``(batch, feature_dim)`` pooled backbone features, before ``feature_norm``.
    """

    embeddings: torch.FloatTensor | None = None
    backbone_features: torch.FloatTensor | None = None


class _TransformersBackbone(nn.Module):
    """Wraps a transformers vision model so that it returns one pooled vector per image.

    Args:
        model: a transformers vision model returning ``last_hidden_state`` (tokens or a feature map).
        pooling: ``"token"`` (first token), ``"avg"`` (mean of the tokens / spatial positions) or
            ``"default"`` (``"token"`` for token sequences, ``pooler_output`` or spatial mean for feature maps).
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        if pooling not in ("default", "token", "avg"):
            raise ValueError(
                f"pooling={pooling!r} is not supported for transformers backbones; use token or avg"
            )
        self.model = model
        self.pooling = pooling

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixel_values)
        hidden = output.last_hidden_state
        if hidden.dim() == 4:  # (batch, channels, height, width) feature map of a CNN
            pooler = getattr(output, "pooler_output", None)
            if self.pooling == "default" and pooler is not None:
                return pooler.flatten(1)
            return hidden.mean(dim=(2, 3))
        if self.pooling == "avg":
            return hidden[:, 1:].mean(dim=1)
        return hidden[:, 0]


class FeatureAdapter(nn.Module):
    """The backbone of ``backbone_source="features"``: precomputed features through residual MLP blocks.

    Each block is ``x + W2 GELU(W1 LayerNorm(x))`` with ``W2`` initialised to zero, so an untrained adapter is the
    identity and a model built on it starts exactly at the frozen backbone's features.

    Args:
        dim: feature width.
        layers: number of residual blocks (0: the identity).
        hidden: hidden width of each block (default ``dim``).
    """

    def __init__(self, dim: int, layers: int = 0, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(layers)
        )
        for block in self.blocks:
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            features = features + block(features)
        return features


def _feature_dim_of_transformers_config(config: PreTrainedConfig) -> int:
    if getattr(config, "hidden_sizes", None):
        return int(config.hidden_sizes[-1])
    if getattr(config, "hidden_size", None):
        return int(config.hidden_size)
    raise ValueError(f"cannot tell the feature width of transformers backbone {config.model_type!r}")


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_file={path!r} does not exist")


def _load_safetensors_into(module: nn.Module, path: str, strict: bool) -> None:
    from safetensors.torch import load_file

    _check_file(path)
    try:
        state_dict = load_file(path)
    except Exception as error:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"cannot read backbone weights from pretrained_file={path!r}: {error}") from error
    result = module.load_state_dict(state_dict, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        logger.info(
            "loaded %s: %d missing keys, %d unexpected keys",
            path,
            len(result.missing_keys),
            len(result.unexpected_keys),
        )


def create_backbone(config: UniversalEmbedderConfig) -> tuple[nn.Module, int]:
    """Build the backbone described by ``config`` — the single place every method builds one.

    Args:
        config: the embedder configuration (``backbone``, ``backbone_source``, ``backbone_kwargs``,
            ``pretrained_file``, ``pooling``).

    Returns:
        ``(module, feature_dim)``: a module mapping ``pixel_values`` to ``(batch, feature_dim)`` pooled
        features, with weights from ``pretrained_file`` when it is set.
    """
    kwargs = dict(config.backbone_kwargs or {})
    if config.backbone_source == "features":
        if "dim" not in kwargs:
            raise ValueError('backbone_source="features" needs backbone_kwargs={"dim": <feature width>}')
        module = FeatureAdapter(int(kwargs["dim"]), int(kwargs.get("layers", 0)), kwargs.get("hidden"))
        if config.pretrained_file is not None:
            _load_safetensors_into(module, config.pretrained_file, strict=True)
        return module, int(kwargs["dim"])
    if config.backbone_source == "timm":
        if config.pooling != "default":
            kwargs["global_pool"] = config.pooling
        pretrained = config.pretrained_file is not None
        if pretrained:
            _check_file(config.pretrained_file)
            # timm maps the file's keys, drops the classifier (num_classes=0) and adapts e.g. pos-embed sizes.
            kwargs["pretrained_cfg_overlay"] = dict(file=config.pretrained_file)
        if not timm.is_model(config.backbone):
            raise ValueError(f"backbone={config.backbone!r} is not a timm model name")
        try:
            module = timm.create_model(config.backbone, pretrained=pretrained, num_classes=0, **kwargs)
        except Exception as error:
            if not pretrained:
                raise
            raise ValueError(
                f"cannot load pretrained_file={config.pretrained_file!r} into timm {config.backbone!r}: {error}"
            ) from error
        feature_dim = getattr(module, "head_hidden_size", None) or module.num_features
        return module, int(feature_dim)

    if config.backbone in CONFIG_MAPPING:
        backbone_config = AutoConfig.for_model(config.backbone, **kwargs)
    else:
        backbone_config = AutoConfig.from_pretrained(config.backbone, **kwargs)
    model = AutoModel.from_config(backbone_config)
    if config.pretrained_file is not None:
        _load_safetensors_into(model, config.pretrained_file, strict=True)
    return _TransformersBackbone(model, config.pooling), _feature_dim_of_transformers_config(backbone_config)


class BackboneOnCPUInitMixin:
    """Makes ``from_pretrained`` build the model on the CPU instead of the meta device.

    A timm backbone's constructor computes buffers (e.g. relative-position indices) that a checkpoint does
    not hold and ``_init_weights`` cannot rebuild. Every hf_distill model holding such a backbone mixes this in
    before ``PreTrainedModel``.
    """

    @classmethod
    def get_init_context(cls, *args, **kwargs) -> list:
        return [
            context
            for context in super().get_init_context(*args, **kwargs)
            if context != torch.device("meta")
        ]


class UniversalEmbedderPreTrainedModel(BackboneOnCPUInitMixin, PreTrainedModel):
    """Base class wiring the embedder config into transformers' save/load machinery."""

    config_class = UniversalEmbedderConfig
    base_model_prefix = "embedder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone keeps the initialisation (or pretrained weights) its library gave it. Only the head is
        # initialised here (PyTorch's default Linear init): from_pretrained leaves a head missing from the
        # checkpoint as uninitialised memory otherwise.
        if isinstance(module, nn.Linear) and module is getattr(self, "head", None):
            module.reset_parameters()


class UniversalEmbedderModel(UniversalEmbedderPreTrainedModel):
    """Universal image embedder: one L2-normalised vector per image, comparable across domains.

    Args:
        config: a :class:`UniversalEmbedderConfig`.

    Attributes:
        backbone: the module built by :func:`create_backbone`.
        head: ``nn.Linear(feature_dim, embed_dim)``, or ``nn.Identity`` when ``embed_dim`` is None.
        feature_dim: width of the pooled backbone feature.
    """

    def __init__(self, config: UniversalEmbedderConfig) -> None:
        super().__init__(config)
        self.backbone, self.feature_dim = create_backbone(config)
        self.head = nn.Linear(self.feature_dim, config.embed_dim) if config.embed_dim else nn.Identity()
        self._non_persistent_buffers = {
            name: buffer.detach().clone() for name, buffer in self.named_non_persistent_buffers()
        }
        self.post_init()

    def named_non_persistent_buffers(self):
        """Yield ``(name, buffer)`` for every buffer that ``state_dict`` leaves out."""
        for module_name, module in self.named_modules():
            for name in module._non_persistent_buffers_set:
                buffer = module._buffers.get(name)
                if buffer is not None:
                    yield (f"{module_name}.{name}" if module_name else name), buffer

    def _initialize_missing_keys(self, is_quantized: bool) -> None:
        super()._initialize_missing_keys(is_quantized)
        # from_pretrained re-creates non-persistent buffers as uninitialised memory; restore the values the
        # backbone computed in its constructor.
        with torch.no_grad():
            for name, value in self._non_persistent_buffers.items():
                self.get_buffer(name).copy_(value)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs
    ) -> UniversalEmbedderOutput | tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of images.

        Args:
            pixel_values: ``(batch, 3, image_size, image_size)`` images normalised as in the config.
            return_dict: return a :class:`UniversalEmbedderOutput` (default) or a tuple.

        Returns:
            :class:`UniversalEmbedderOutput` with ``embeddings`` and ``backbone_features``.
        """
        features = self.backbone(pixel_values)
        hidden = F.normalize(features, dim=-1) if self.config.feature_norm else features
        embeddings = self.head(hidden)
        if self.config.normalize:
            embeddings = F.normalize(embeddings, dim=-1)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return embeddings, features
        return UniversalEmbedderOutput(embeddings=embeddings, backbone_features=features)


__all__ = [
    "UniversalEmbedderModel",
    "UniversalEmbedderOutput",
    "UniversalEmbedderPreTrainedModel",
    "create_backbone",
]
