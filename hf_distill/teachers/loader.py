"""Frozen teachers: one interface over timm models, transformers models, local weight files, the offline
pretrained weights and models trained by hf_distill.

Every teacher maps a batch of images to a `TeacherOutput`: a global feature per image and the spatial tokens
with their grid. For a ViT these are the final-normed CLS token and the patch tokens (SPEC §3); for a CNN the
pooled feature and the positions of the last feature map. Each teacher also carries its own preprocessing
(input size, mean, std), applied by `FrozenTeacher.prepare` to images in ``[0, 1]`` so that several teachers
can look at the same augmented view.

Length: one loader per teacher source (timm, transformers, local file, offline weights, hf_distill models)
behind one ``FrozenTeacher`` interface; they share the preprocessing and error helpers (about 500 lines).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from hf_distill.layers.pixels import PixelNormalize
from hf_distill.teachers.offline import create_offline_model, is_offline_name, resolve_offline_weights

logger = logging.getLogger(__name__)

__all__ = [
    "FrozenTeacher",
    "TeacherLoadError",
    "TeacherOutput",
    "TeacherPreprocessing",
    "TeacherSpec",
    "load_teacher",
    "load_teachers",
]

SOURCES = ("auto", "offline", "timm", "transformers", "file", "hf_distill")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TeacherLoadError(RuntimeError):
    """Raised when a teacher cannot be found, downloaded or built; the message names the teacher."""


@dataclass
class TeacherOutput(ModelOutput):
    """What a frozen teacher gives for a batch.

    Args:
        global_features: ``(batch, dim)`` — ViT: final-normed CLS token; CNN: pooled feature.
        tokens: ``(batch, h * w, token_dim)`` — ViT: patch tokens; CNN: last feature map positions, row-major.
        grid: ``(h, w)`` of the tokens.
    """

    global_features: torch.FloatTensor | None = None
    tokens: torch.FloatTensor | None = None
    grid: tuple[int, int] | None = None


@dataclass(frozen=True)
class TeacherPreprocessing:
    """How a teacher expects its input.

    Args:
        image_size: side of the square input.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        interpolation: resize filter (``"bilinear"`` or ``"bicubic"``).
        crop_pct: centre-crop fraction of its evaluation pipeline.
    """

    image_size: int
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible values (for feature-cache specs and cards)."""
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}


@dataclass
class TeacherSpec:
    """Which teacher to load.

    Args:
        model: a timm name (``"vit_base_patch16_224.dino"``, ``"hf-hub:timm/..."``), a transformers model id
            (``"facebook/dinov2-small"``) or directory, a local weights file (``.safetensors`` / ``.pth``), an
            offline name (``"efficientnet_lite0"``, ``"mobilenet_v2"``) or a directory saved by hf_distill
            (a ``UniversalEmbedderModel``, a UDON specialist, an MLFD individual teacher).
        name: short key used in losses, logs and cache columns; derived from ``model`` when omitted.
        source: ``"auto"`` (guess from ``model``) or one of ``"offline"``, ``"timm"``, ``"transformers"``,
            ``"file"``, ``"hf_distill"``.
        architecture: timm architecture of a local weights file (required for ``source="file"``).
        image_size: input resolution to run the teacher at, overriding its pretraining resolution (a CNN
            accepts any size; for a ViT pass ``model_kwargs={"img_size": ...}`` as well).
        model_kwargs: extra arguments for ``timm.create_model`` / ``from_pretrained``.
        revision: Hub revision for online ids.
    """

    model: str
    name: str | None = None
    source: str = "auto"
    architecture: str | None = None
    image_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(
                f"TeacherSpec(model={self.model!r}): source={self.source!r} is not one of {SOURCES}"
            )
        if self.name is None:
            self.name = Path(self.model.split(":")[-1]).name.replace(".", "_").replace("-", "_")
        if not self.name.isidentifier():
            raise ValueError(
                f"teacher name {self.name!r} must be a Python identifier (it keys losses and columns)"
            )

    @classmethod
    def from_value(cls, value: str | dict[str, Any] | TeacherSpec) -> TeacherSpec:
        """Build a spec from a string (the ``model`` field), a dict of fields (YAML) or a spec."""
        if isinstance(value, TeacherSpec):
            return value
        if isinstance(value, str):
            return cls(model=value)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"unknown teacher fields {unknown} in {value}")
            return cls(**value)
        raise TypeError(
            f"a teacher is a string or a mapping of TeacherSpec fields, got {type(value).__name__}"
        )


class FrozenTeacher(nn.Module):
    """A frozen, always-in-eval-mode teacher.

    Args:
        name: the teacher's key.
        model: the wrapped timm or transformers model.
        kind: ``"timm"`` or ``"transformers"`` (how to read its outputs).
        preprocessing: its input size and normalisation.
        description: where it came from (for logs, cards and cache specs).
    """

    def __init__(
        self, name: str, model: nn.Module, kind: str, preprocessing: TeacherPreprocessing, description: str
    ) -> None:
        super().__init__()
        if kind not in ("timm", "transformers"):
            raise ValueError(f"teacher kind must be 'timm' or 'transformers', got {kind!r}")
        self.name = name
        self.model = model
        self.kind = kind
        self.preprocessing = preprocessing
        self.description = description
        self.model.requires_grad_(False)
        super().train(False)
        self.normalize = PixelNormalize(preprocessing.mean, preprocessing.std)
        with torch.no_grad():
            probe = self(torch.zeros(1, 3, preprocessing.image_size, preprocessing.image_size))
        self.global_dim = int(probe.global_features.shape[-1])
        self.token_dim = int(probe.tokens.shape[-1])
        self.grid = tuple(probe.grid)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Teachers stay in eval mode (frozen batch-norm statistics, no dropout) whatever the caller asks."""
        return super().train(False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``[0, 1]`` images to this teacher's input size and normalise them.

        Args:
            images: ``(batch, 3, H, W)`` floats in ``[0, 1]``.
        """
        size = self.preprocessing.image_size
        if images.shape[-2:] != (size, size):
            mode = "bicubic" if self.preprocessing.interpolation == "bicubic" else "bilinear"
            antialias = images.shape[-1] > size
            images = F.interpolate(
                images, size=(size, size), mode=mode, align_corners=False, antialias=antialias
            )
        return self.normalize(images)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> TeacherOutput:
        """Run the teacher on already prepared ``pixel_values`` (see `prepare`).

        Args:
            pixel_values: ``(batch, 3, image_size, image_size)`` normalised images.
        """
        if self.kind == "timm":
            return self._forward_timm(pixel_values)
        return self._forward_transformers(pixel_values)

    def _forward_timm(self, pixel_values: torch.Tensor) -> TeacherOutput:
        features = self.model.forward_features(pixel_values)
        # forward_head(pre_logits=True) is the model's own pooling: the CLS token for ViTs (already final-normed
        # by forward_features), global average pooling for CNNs.
        global_features = self.model.forward_head(features, pre_logits=True)
        if features.dim() == 4:
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                features = features.permute(0, 3, 1, 2)
            grid = (features.shape[2], features.shape[3])
            tokens = features.flatten(2).transpose(1, 2)
        else:
            tokens = features[:, getattr(self.model, "num_prefix_tokens", 0) :]
            grid = self._vit_grid(pixel_values, tokens.shape[1])
        return TeacherOutput(global_features=global_features, tokens=tokens, grid=grid)

    def _vit_grid(self, pixel_values: torch.Tensor, num_tokens: int) -> tuple[int, int]:
        patch_embed = getattr(self.model, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
            grid = tuple(int(v) for v in patch_embed.dynamic_feat_size(tuple(pixel_values.shape[-2:])))
            if grid[0] * grid[1] == num_tokens:
                return grid
        side = round(num_tokens**0.5)
        if side * side != num_tokens:
            raise ValueError(f"teacher {self.name}: cannot tell the token grid of {num_tokens} tokens")
        return (side, side)

    def _forward_transformers(self, pixel_values: torch.Tensor) -> TeacherOutput:
        output = self.model(pixel_values=pixel_values)
        hidden = output.last_hidden_state
        if hidden.dim() == 4:  # a CNN feature map (batch, channels, h, w)
            pooler = getattr(output, "pooler_output", None)
            global_features = pooler.flatten(1) if pooler is not None else hidden.mean(dim=(2, 3))
            return TeacherOutput(
                global_features=global_features,
                tokens=hidden.flatten(2).transpose(1, 2),
                grid=tuple(hidden.shape[2:]),
            )
        # ViT-style: CLS first, then any register tokens, then the patches.
        skip = 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        tokens = hidden[:, skip:]
        patch = getattr(self.model.config, "patch_size", None)
        if (
            isinstance(patch, int)
            and (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch) == tokens.shape[1]
        ):
            grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        else:
            grid = self._vit_grid(pixel_values, tokens.shape[1])
        return TeacherOutput(global_features=hidden[:, 0], tokens=tokens, grid=grid)


def _offline_hint(model: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return (
            " HF_HUB_OFFLINE is set, so only models already in the local Hub cache can load; use an offline "
            "teacher (efficientnet_lite0, mobilenet_v2), a local weights file or a local directory instead."
        )
    return ""


def _guess_source(model: str) -> str:
    import timm

    if is_offline_name(model):
        return "offline"
    path = Path(model).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        config_path = path / "config.json"
        if config_path.is_file():
            model_type = json.loads(config_path.read_text()).get("model_type", "")
            return "hf_distill" if model_type.startswith("hf_distill") else "transformers"
        raise TeacherLoadError(f"teacher directory {path} has no config.json")
    if model.startswith(("hf-hub:", "timm/")):
        return "timm"
    if timm.is_model(model):
        return "timm"
    return "transformers"


def _timm_preprocessing(model: nn.Module, image_size: int | None) -> TeacherPreprocessing:
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    size = config["input_size"][-1]
    patch_embed = getattr(model, "patch_embed", None)
    # A ViT built with a non-default img_size runs at that size, whatever its pretrained_cfg says.
    if (
        patch_embed is not None
        and getattr(patch_embed, "img_size", None)
        and not getattr(patch_embed, "dynamic_img_size", False)
    ):
        size = patch_embed.img_size[-1]
    return TeacherPreprocessing(
        image_size=image_size or int(size),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config.get("interpolation", "bicubic"),
        crop_pct=float(config.get("crop_pct", 0.875)),
    )


def _load_timm(spec: TeacherSpec) -> FrozenTeacher:
    import timm

    name = spec.model
    if name.startswith("timm/"):
        name = "hf-hub:" + name
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, **spec.model_kwargs)
    except Exception as error:  # timm raises RuntimeError, OSError or hub errors depending on the failure
        raise TeacherLoadError(
            f"cannot load timm teacher {spec.model!r}: {error}.{_offline_hint(spec.model)}"
        ) from error
    return FrozenTeacher(
        spec.name, model, "timm", _timm_preprocessing(model, spec.image_size), f"timm:{spec.model}"
    )


def _load_offline(spec: TeacherSpec) -> FrozenTeacher:
    weights = resolve_offline_weights(spec.model)
    model = create_offline_model(spec.model, num_classes=0, **spec.model_kwargs)
    preprocessing = TeacherPreprocessing(
        image_size=spec.image_size or weights.input_size,
        mean=weights.mean,
        std=weights.std,
        interpolation=weights.interpolation,
        crop_pct=weights.crop_pct,
    )
    return FrozenTeacher(
        spec.name, model, "timm", preprocessing, f"offline:{spec.model}@{weights.sha256[:16]}"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TeacherLoadError(f"{path} does not hold a state dict")
    return state


def _load_file(spec: TeacherSpec) -> FrozenTeacher:
    import timm

    path = Path(spec.model).expanduser()
    if spec.architecture is None:
        raise TeacherLoadError(
            f"teacher weights file {path} needs architecture=<timm model name> in its spec"
        )
    try:
        state = _read_state_dict(path)
    except (OSError, RuntimeError, ValueError) as error:
        raise TeacherLoadError(f"cannot read teacher weights {path}: {error}") from error
    model = timm.create_model(spec.architecture, pretrained=False, num_classes=0, **spec.model_kwargs)
    # The file may hold a classifier for any number of classes; a feature teacher needs none.
    classifier = model.pretrained_cfg.get("classifier", "head")
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    state = {k: v for k, v in state.items() if not any(k.startswith(c + ".") for c in classifiers)}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TeacherLoadError(
            f"{path} does not fit timm {spec.architecture!r}: missing {result.missing_keys[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (of {len(result.missing_keys)} / {len(result.unexpected_keys)})"
        )
    return FrozenTeacher(
        spec.name,
        model,
        "timm",
        _timm_preprocessing(model, spec.image_size),
        f"file:{path.name}:{spec.architecture}",
    )


def _transformers_preprocessing(model_id: str, config: Any, spec: TeacherSpec) -> TeacherPreprocessing:
    from transformers import AutoImageProcessor

    size, mean, std, crop_pct = getattr(config, "image_size", 224), _IMAGENET_MEAN, _IMAGENET_STD, 0.875
    try:
        processor = AutoImageProcessor.from_pretrained(model_id, revision=spec.revision)
    except (OSError, ValueError):
        processor = None
    if processor is not None:
        crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
        crop = dict(crop) if not isinstance(crop, int) else {"height": crop}
        size = crop.get("height") or crop.get("shortest_edge") or size
        mean = tuple(getattr(processor, "image_mean", None) or mean)
        std = tuple(getattr(processor, "image_std", None) or std)
        crop_pct = float(getattr(processor, "crop_pct", None) or crop_pct)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return TeacherPreprocessing(
        image_size=spec.image_size or int(size), mean=mean, std=std, crop_pct=crop_pct
    )


def _load_transformers(spec: TeacherSpec) -> FrozenTeacher:
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(spec.model, revision=spec.revision, **spec.model_kwargs)
    except Exception as error:  # OSError for missing files, ValueError for unknown model types, hub errors
        raise TeacherLoadError(
            f"cannot load transformers teacher {spec.model!r}: {error}.{_offline_hint(spec.model)}"
        ) from error
    # A multimodal checkpoint (CLIP, SigLIP) holds its image tower separately.
    model = getattr(model, "vision_model", model)
    preprocessing = _transformers_preprocessing(spec.model, model.config, spec)
    return FrozenTeacher(spec.name, model, "transformers", preprocessing, f"transformers:{spec.model}")


def _load_hf_distill(spec: TeacherSpec) -> FrozenTeacher:
    from transformers import AutoModel

    import hf_distill  # noqa: F401  (registers the methods and the Auto classes)
    from hf_distill.registry import exportable_model_classes

    path = Path(spec.model).expanduser()
    try:
        model = AutoModel.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise TeacherLoadError(f"cannot load the hf_distill model in {path}: {error}") from error
    # A registered method's model exports the embedder that holds its trained backbone.
    if isinstance(model, exportable_model_classes()):
        model = model.export_embedder()
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise TeacherLoadError(f"{path}: {type(model).__name__} has no backbone to use as a teacher")
    config = model.config
    size = spec.image_size or int(config.image_size)
    resize = getattr(config, "resize_size", None) or config.image_size
    preprocessing = TeacherPreprocessing(
        image_size=size,
        mean=tuple(config.image_mean),
        std=tuple(config.image_std),
        interpolation=getattr(config, "resample", "bilinear"),
        crop_pct=float(config.image_size) / float(resize),
    )
    if hasattr(backbone, "forward_features"):
        return FrozenTeacher(spec.name, backbone, "timm", preprocessing, f"hf_distill:{path.name}")
    inner = getattr(backbone, "model", None)
    if inner is None:
        raise TeacherLoadError(f"{path}: cannot read tokens from backbone {type(backbone).__name__}")
    return FrozenTeacher(spec.name, inner, "transformers", preprocessing, f"hf_distill:{path.name}")


_LOADERS = {
    "offline": _load_offline,
    "timm": _load_timm,
    "transformers": _load_transformers,
    "file": _load_file,
    "hf_distill": _load_hf_distill,
}


def load_teacher(spec: TeacherSpec | str | dict[str, Any]) -> FrozenTeacher:
    """Load one frozen teacher.

    Args:
        spec: a `TeacherSpec`, or a string / mapping accepted by `TeacherSpec.from_value`.

    Returns:
        A `FrozenTeacher` in eval mode with no trainable parameter.
    """
    spec = TeacherSpec.from_value(spec)
    source = spec.source if spec.source != "auto" else _guess_source(spec.model)
    teacher = _LOADERS[source](spec)
    logger.info(
        "teacher %s (%s): input %d, global dim %d, tokens %s x %d",
        teacher.name,
        teacher.description,
        teacher.preprocessing.image_size,
        teacher.global_dim,
        teacher.grid,
        teacher.token_dim,
    )
    return teacher


def load_teachers(specs: list[TeacherSpec | str | dict[str, Any]]) -> nn.ModuleDict:
    """Load several teachers into a ``ModuleDict`` keyed by their names (which must be unique).

    Args:
        specs: one spec per teacher.
    """
    teachers = nn.ModuleDict()
    for value in specs:
        teacher = load_teacher(value)
        if teacher.name in teachers:
            raise ValueError(f"two teachers are named {teacher.name!r}; give one of them a distinct name=")
        teachers[teacher.name] = teacher
    return teachers
