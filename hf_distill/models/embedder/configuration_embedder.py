"""Configuration of the universal image embedder, the artefact every distillation method exports.

Self-contained on purpose: this file is copied next to saved checkpoints and imported by
``trust_remote_code=True`` in processes that never import hf_distill, so it may only import transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BACKBONE_SOURCES = ("timm", "transformers", "features")
RESAMPLE_MODES = ("bilinear", "bicubic", "nearest")


# The evaluation preprocessing every hf_distill model config carries, under the same names.
PREPROCESSING_FIELDS = ("image_size", "resize_size", "image_mean", "image_std", "resample")


def fill_preprocessing_defaults(config: Any) -> None:
    """Fill a config's unset preprocessing fields: ImageNet normalisation and ``resize_size = image_size``."""
    config.image_mean = list(config.image_mean if config.image_mean is not None else IMAGENET_MEAN)
    config.image_std = list(config.image_std if config.image_std is not None else IMAGENET_STD)
    if config.resize_size is None:
        config.resize_size = config.image_size


def check_matryoshka_dims(
    dims: list[int] | tuple[int, ...], embed_dim: int | None, name: str = "matryoshka_dims"
) -> list[int]:
    """Validate nested embedding widths: distinct positive ints, decreasing, the largest the full width.

    Args:
        dims: the widths, e.g. ``[64, 32, 16]``.
        embed_dim: the full embedding width (``None``: not known yet, only the form is checked).
        name: how to call the setting in error messages.

    Returns:
        the widths as a list of ints.
    """
    values = [int(dim) for dim in dims]
    if not values or any(dim <= 0 for dim in values):
        raise ValueError(f"{name} must be a non-empty list of positive widths, got {list(dims)}")
    if values != sorted(set(values), reverse=True):
        raise ValueError(
            f"{name} must be distinct widths in decreasing order (e.g. [64, 32, 16]), got {values}"
        )
    if embed_dim is not None and values[0] != embed_dim:
        raise ValueError(
            f"{name}={values}: the largest width must be the embedding width {embed_dim} (the full embedding is "
            "always one of the trained widths)"
        )
    return values


def check_truncate_dim(truncate_dim: int | None, trained_dims: list[int], name: str = "truncate_dim") -> None:
    """Refuse a truncation width the model was not trained for, naming the allowed ones.

    Args:
        truncate_dim: the asked width (``None``: no truncation).
        trained_dims: the widths the embedding was trained at (``matryoshka_dims``), largest first.
        name: how to call the argument in error messages.
    """
    if truncate_dim is None:
        return
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int):
        raise TypeError(f"{name} must be an int or None, got {truncate_dim!r}")
    if truncate_dim > trained_dims[0]:
        raise ValueError(
            f"{name}={truncate_dim} is larger than the embedding width {trained_dims[0]}; "
            f"trained widths: {trained_dims}"
        )
    if truncate_dim not in trained_dims:
        raise ValueError(
            f"{name}={truncate_dim} is not a width this embedder was trained at; trained widths "
            f"(matryoshka_dims): {trained_dims}"
        )


def preprocessing_of(config: Any) -> dict[str, Any]:
    """A config's preprocessing fields, as keyword arguments of :class:`UniversalEmbedderConfig`."""
    values = {name: getattr(config, name) for name in PREPROCESSING_FIELDS}
    values["image_mean"] = list(values["image_mean"])
    values["image_std"] = list(values["image_std"])
    return values


class UniversalEmbedderConfig(PreTrainedConfig):
    """Architecture and preprocessing of a universal image embedder.

    Args:
        backbone: a timm model name (``backbone_source="timm"``) or, for ``"transformers"``, a model type
            (e.g. ``"vit"``, built from ``backbone_kwargs``) or a local config directory / Hub id.
        backbone_source: ``"timm"``, ``"transformers"``, or ``"features"``: the input is already a backbone's
            pooled feature vector (features cached once from a frozen backbone), ``backbone_kwargs["dim"]`` wide;
            the "backbone" is then the identity, or ``backbone_kwargs["layers"]`` trainable residual MLP blocks
            (hidden width ``backbone_kwargs.get("hidden", dim)``) that start as the identity.
        backbone_kwargs: extra architecture arguments (timm ``create_model`` kwargs such as ``img_size``,
            ``patch_size``, ``depth``; or transformers config fields).
        pretrained_file: optional local safetensors file with backbone weights, loaded when the model is built
            from scratch. Not written to saved configs: the saved ``model.safetensors`` supersedes it, and a
            local path means nothing on another machine.
        pooling: ``"default"`` keeps the backbone's own pooling; otherwise a timm ``global_pool`` value
            (``"avg"``, ``"token"``, ``"max"`` …); for transformers backbones ``"token"`` (CLS) or ``"avg"``.
        feature_norm: L2-normalise the backbone feature before the head (UDON's heads expect this).
        embed_dim: output width of the linear head; ``None`` keeps the backbone feature (identity head).
        matryoshka_dims: the widths the embedding was trained at, largest (the full width) first, e.g.
            ``[64, 32, 16]`` for a Matryoshka head: each L2-normalised prefix of that width is itself an
            embedding. ``None``: just the full width (filled in as ``[embed_dim]``, or ``[feature_dim]`` by
            the model for an identity head).
        truncate_dim: output only the first ``truncate_dim`` values of the embedding, renormalised; must be
            one of ``matryoshka_dims``. ``None``: the full width. Settable at load time:
            ``AutoModel.from_pretrained(dir, truncate_dim=32)``.
        normalize: L2-normalise the final embedding.
        image_size: side of the square centre crop fed to the backbone.
        resize_size: the shorter image side is resized to this (antialiased bilinear) before the crop;
            ``None`` means ``image_size`` (UDON's evaluation: resize the short side to the crop size).
        image_mean / image_std: per-channel normalisation of the backbone's pretraining.
        resample: interpolation of the resize (``"bilinear"``, ``"bicubic"``, ``"nearest"``); the
            evaluation transform of ``hf_distill.data`` is bilinear, so keep the default for identical results.
    """

    model_type = "hf_distill_embedder"

    backbone: str = "vit_tiny_patch16_224"
    backbone_source: str = "timm"
    backbone_kwargs: dict | None = None
    pretrained_file: str | None = None
    pooling: str = "default"
    feature_norm: bool = False
    embed_dim: int | None = 64
    normalize: bool = True
    matryoshka_dims: list[int] | None = None
    truncate_dim: int | None = None
    image_size: int = 224
    resize_size: int | None = None
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    resample: str = "bilinear"

    def __post_init__(self, **kwargs: Any) -> None:
        if self.backbone_source not in BACKBONE_SOURCES:
            raise ValueError(
                f"backbone_source={self.backbone_source!r} is not supported; use one of {BACKBONE_SOURCES}"
            )
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive or None (identity head), got {self.embed_dim}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        if self.matryoshka_dims is None and self.embed_dim is not None:
            self.matryoshka_dims = [self.embed_dim]
        if self.matryoshka_dims is not None:
            self.matryoshka_dims = check_matryoshka_dims(self.matryoshka_dims, self.embed_dim)
            check_truncate_dim(self.truncate_dim, self.matryoshka_dims)
        fill_preprocessing_defaults(self)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(
                f"image_mean and image_std need 3 values (RGB), got {self.image_mean} and {self.image_std}"
            )
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample={self.resample!r} is not supported; use one of {RESAMPLE_MODES}")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size={self.resize_size} is smaller than image_size={self.image_size}")
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the config, leaving out the machine-local ``pretrained_file``."""
        output = super().to_dict()
        output.pop("pretrained_file", None)
        return output


__all__ = [
    "PREPROCESSING_FIELDS",
    "UniversalEmbedderConfig",
    "check_matryoshka_dims",
    "check_truncate_dim",
    "fill_preprocessing_defaults",
    "preprocessing_of",
]
