"""The universal image embedder: backbone → pooling → (optional L2) → linear head → L2.

Self-contained on purpose: this file is copied next to saved checkpoints and imported by
``trust_remote_code=True`` in processes that never import hf_distill, so it may only import torch,
transformers, timm (and numpy / PIL, which they require) and its sibling configuration and image processor files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import ModelOutput

from .configuration_embedder import UniversalEmbedderConfig, check_matryoshka_dims, check_truncate_dim

logger = logging.getLogger(__name__)


@dataclass
class UniversalEmbedderOutput(ModelOutput):
    """Output of :class:`UniversalEmbedderModel`.

    Args:
        embeddings: ``(batch, embed_dim)`` universal embeddings (L2-normalised when ``config.normalize``;
            ``(batch, truncate_dim)`` and renormalised when ``config.truncate_dim`` is set).
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
        width = config.embed_dim or self.feature_dim
        # An identity head's width is only known now, once the backbone is built.
        config.matryoshka_dims = check_matryoshka_dims(config.matryoshka_dims or [width], width)
        check_truncate_dim(config.truncate_dim, config.matryoshka_dims)
        self._image_processor = None
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
        if self.config.truncate_dim is not None:
            embeddings = self.truncate(embeddings, self.config.truncate_dim)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return embeddings, features
        return UniversalEmbedderOutput(embeddings=embeddings, backbone_features=features)

    def truncate(self, embeddings: torch.Tensor, truncate_dim: int | None) -> torch.Tensor:
        """The first ``truncate_dim`` values of each embedding, L2-renormalised (a Matryoshka prefix).

        Args:
            embeddings: ``(batch, width)`` embeddings of this model.
            truncate_dim: one of ``config.matryoshka_dims``; ``None`` returns ``embeddings`` unchanged.
        """
        if truncate_dim is None:
            return embeddings
        check_truncate_dim(truncate_dim, self.config.matryoshka_dims)
        return F.normalize(embeddings[..., :truncate_dim], dim=-1)

    @property
    def image_processor(self) -> Any:
        """The image processor saved with the model (``preprocessor_config.json`` beside its weights), else
        the one its config describes. Assign to override."""
        if self._image_processor is None:
            from .image_processing_embedder import UniversalEmbedderImageProcessor

            source = Path(str(getattr(self.config, "_name_or_path", "") or ""))
            if source.name and (source / "preprocessor_config.json").is_file():
                self._image_processor = UniversalEmbedderImageProcessor.from_pretrained(str(source))
            else:
                self._image_processor = UniversalEmbedderImageProcessor.from_model_config(self.config)
        return self._image_processor

    @image_processor.setter
    def image_processor(self, processor: Any) -> None:
        self._image_processor = processor

    @torch.no_grad()
    def encode(
        self,
        images: Any,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        show_progress_bar: bool | None = None,
        num_workers: int = 0,
    ) -> Any:
        """Embed images as sentence-transformers' ``encode`` embeds sentences.

        Args:
            images: one image or a sequence of them (a list, a ``datasets`` ``image`` column, read lazily): PIL
                images, file paths (``str`` / ``Path``), ``(H, W[, C])`` uint8 arrays or ``(C, H, W)`` uint8
                tensors. Preprocessed by :attr:`image_processor`.
            batch_size: images per forward pass.
            device: where the forward runs (default: where the model is); the model is moved there.
            truncate_dim: keep the first ``truncate_dim`` values, renormalised; one of
                ``config.matryoshka_dims`` (default: ``config.truncate_dim``, else the full width).
            convert_to_numpy: return a float32 numpy array (default) rather than a CPU tensor.
            show_progress_bar: a tqdm bar over the images; ``None``: shown from 1,024 images on.
            num_workers: ``DataLoader`` processes that load and preprocess the next batches (0: here).

        Returns:
            ``(n_images, dim)`` embeddings in input order, or ``(dim,)`` for a single image.
        """
        from PIL import Image
        from tqdm.auto import tqdm

        single = isinstance(images, Image.Image | str | os.PathLike) or (
            isinstance(images, np.ndarray | torch.Tensor) and images.ndim <= 3
        )
        # Any sized, indexable sequence (a list, a ``datasets`` column) is read lazily, one batch at a time.
        items = [images] if single else images
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not items:
            raise ValueError("images is empty: nothing to encode")
        if device is not None:
            self.to(device)
        parameter = next(self.parameters(), None)
        target = parameter.device if parameter is not None else torch.device("cpu")
        dtype = (
            parameter.dtype if parameter is not None and parameter.dtype.is_floating_point else torch.float32
        )
        loader = torch.utils.data.DataLoader(
            _EncodeInputs(items, self.image_processor),
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=target.type == "cuda",
        )
        if show_progress_bar is None:
            show_progress_bar = len(items) >= 1024
        was_training = self.training
        self.eval()
        chunks = []
        try:
            with tqdm(total=len(items), desc="encoding", unit="img", disable=not show_progress_bar) as bar:
                for pixel_values in loader:
                    chunks.append(self.embed_pixel_values(pixel_values.to(target, dtype), truncate_dim).cpu())
                    bar.update(len(pixel_values))
        finally:
            self.train(was_training)
        embeddings = torch.cat(chunks)
        if single:
            embeddings = embeddings[0]
        return embeddings.numpy() if convert_to_numpy else embeddings

    def embed_pixel_values(self, pixel_values: torch.Tensor, truncate_dim: int | None = None) -> torch.Tensor:
        """Float32 embeddings of preprocessed images, truncated to ``truncate_dim`` (the one embedding path of
        :meth:`encode` and ``hf-distill embed``).

        Args:
            pixel_values: ``(batch, 3, image_size, image_size)`` preprocessed images on the model's device.
            truncate_dim: see :meth:`encode`.
        """
        width = self.config.truncate_dim or self.config.matryoshka_dims[0]
        if truncate_dim is not None and truncate_dim > width:
            raise ValueError(
                f"truncate_dim={truncate_dim} is larger than this model's output width {width}"
                + (
                    f" (the config truncates to {self.config.truncate_dim})"
                    if self.config.truncate_dim
                    else ""
                )
            )
        check_truncate_dim(truncate_dim, self.config.matryoshka_dims)
        embeddings = self(pixel_values=pixel_values, return_dict=True).embeddings
        return self.truncate(embeddings, truncate_dim).float()


def load_image(item: Any) -> Any:
    """A path (``str`` / ``Path``) opened and fully decoded as a PIL image; anything else is returned as is."""
    if not isinstance(item, str | os.PathLike):
        return item
    from PIL import Image, UnidentifiedImageError

    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot decode image file {str(path)!r}: {error}") from error


class _EncodeInputs(torch.utils.data.Dataset):
    """The inputs of :meth:`UniversalEmbedderModel.encode`, loaded and preprocessed (in loader workers if any)."""

    def __init__(self, items: Sequence[Any], processor: Any) -> None:
        self.items = items
        self.processor = processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_image(self.items[index])
        try:
            return self.processor(image, return_tensors="pt")["pixel_values"][0]
        except (TypeError, ValueError) as error:
            raise type(error)(f"images[{index}]: {error}") from error


__all__ = [
    "UniversalEmbedderModel",
    "UniversalEmbedderOutput",
    "UniversalEmbedderPreTrainedModel",
    "create_backbone",
]
