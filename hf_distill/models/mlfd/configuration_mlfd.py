"""Configurations of MLFD (Iordache, Alexe, Ionescu, WACV 2025; SPEC §4): the per-dataset classifiers (individual
teachers and students) and the joint teacher that fuses the teachers' feature maps."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from hf_distill.models.embedder.configuration_embedder import (
    PREPROCESSING_FIELDS,
    UniversalEmbedderConfig,
    fill_preprocessing_defaults,
)

ACTIVATIONS = ("relu", "gelu", "silu")
# Fields shared with UniversalEmbedderConfig: they describe the backbone and its preprocessing.
_BACKBONE_FIELDS = ("backbone", "backbone_kwargs", *PREPROCESSING_FIELDS)


class MlfdClassifierConfig(PreTrainedConfig):
    """A dataset-specific classifier: an MLFD individual teacher (stage 1) or student (stage 4).

    Args:
        backbone: a timm model name; any architecture with ``forward_intermediates`` (CNNs and ViTs alike).
        backbone_kwargs: extra timm ``create_model`` arguments (``img_size``, ``patch_size``, ``depth`` …).
        pretrained_file: optional local safetensors file with backbone weights used when building from scratch;
            not written to saved configs (the saved weights supersede it).
        num_classes: classes of the dataset this classifier is trained on.
        dataset: name of that dataset (a benchmark domain).
        feature_levels: indices into the backbone's ``forward_intermediates`` levels whose maps are exposed
            for caching and distillation (negative counts from the end; ``[-1]`` = the last stage / block).
            ViT tokens are returned reshaped to a ``(C, H/patch, W/patch)`` map.
        distill_channels: channel count of the target (fused) map for each entry of ``feature_levels``; a
            student-side 1×1 conv adaptor is added for each level whose own channel count differs. ``None``
            (teachers, students without distillation) adds none. The adaptors are expendable.
        classifier_dropout: dropout before the classification head.
        trainable_from: a student trained over a cached trunk (``hf_distill.layers.trunk``): the backbone's stages
            before this index are frozen and its forward also takes their output maps (``trunk_maps``); every
            distilled level must lie above them. ``None``: the whole backbone trains, from pixels.
        image_size / resize_size / image_mean / image_std / resample: preprocessing, as in
            :class:`~hf_distill.models.embedder.UniversalEmbedderConfig`.
    """

    model_type = "hf_distill_mlfd_classifier"

    backbone: str = "resnet10t"
    backbone_kwargs: dict | None = None
    pretrained_file: str | None = None
    num_classes: int = 10
    dataset: str | None = None
    feature_levels: list[int] | None = None
    distill_channels: list[int] | None = None
    classifier_dropout: float = 0.0
    trainable_from: int | None = None
    image_size: int = 224
    resize_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    resample: str = "bilinear"

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        self.feature_levels = [int(level) for level in (self.feature_levels or [-1])]
        if self.distill_channels is not None:
            self.distill_channels = [int(channels) for channels in self.distill_channels]
            if len(self.distill_channels) != len(self.feature_levels):
                raise ValueError(
                    f"distill_channels {self.distill_channels} needs one entry per feature level "
                    f"{self.feature_levels}"
                )
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        fill_preprocessing_defaults(self)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the config, leaving out the machine-local ``pretrained_file``."""
        output = super().to_dict()
        output.pop("pretrained_file", None)
        return output

    def to_embedder_config(self, **overrides: Any) -> UniversalEmbedderConfig:
        """The :class:`UniversalEmbedderConfig` of the same backbone and preprocessing (identity head, L2-normalised
        pooled features), used to build the backbone and to export the classifier as a universal embedder.

        Args:
            overrides: embedder fields to set (e.g. ``embed_dim``).
        """
        values = {name: getattr(self, name) for name in _BACKBONE_FIELDS}
        values.update(
            backbone_source="timm", pretrained_file=self.pretrained_file, embed_dim=None, normalize=True
        )
        values.update(overrides)
        return UniversalEmbedderConfig(**values)


class JointTeacherConfig(PreTrainedConfig):
    """The MLFD joint teacher (SPEC §4 step 3), trained on cached teacher feature maps.

    Per teacher: BatchNorm + 1×1 conv into ``adaptor_channels``; the adapted maps are concatenated, then
    BatchNorm + activation (fusion level 0). Each further fusion level is a stride-2 3×3 conv + BatchNorm +
    activation on the previous level. Every level has an output 1×1 conv to ``out_channels`` + BatchNorm +
    activation: the *fused maps* the students distil (one per level). The deepest fused map is pooled, dropped
    out and fed to one linear head per dataset.

    Spatial alignment: teachers may give maps of different grids (a CNN's last stage vs. a ViT's token grid).
    Each teacher map is resized to ``spatial_size`` before its adaptor — adaptive average pooling when it is
    larger (averaging the cells that cover each target cell), bilinear interpolation when it is smaller. With
    ``spatial_size=None`` the smallest teacher grid (by area) is used, so no teacher is up-sampled in the
    common case.

    Args:
        teacher_names: one name per individual teacher (in the order their maps are passed).
        teacher_configs: the teachers' :class:`MlfdClassifierConfig` dictionaries (kept so a saved joint teacher
            says exactly which teachers produced its inputs); may be empty.
        teacher_channels: channel count of each teacher's cached map.
        teacher_grids: ``[height, width]`` of each teacher's cached map.
        datasets: the datasets, one classification head each.
        num_classes: classes per dataset, in the order of ``datasets``.
        adaptor_channels: channels of each teacher after its adaptor.
        fusion_levels: further fusion levels after the concatenation (0 to 2).
        out_channels: channels of the fused maps.
        activation: ``"relu"``, ``"gelu"`` or ``"silu"``.
        dropout: dropout on the pooled fused feature (the authors' released config: 0.9).
        spatial_size: ``[height, width]`` all teacher maps are resized to; ``None`` = the smallest teacher grid.
    """

    model_type = "hf_distill_mlfd_joint_teacher"

    teacher_names: list[str] | None = None
    teacher_configs: list[dict] | None = None
    teacher_channels: list[int] | None = None
    teacher_grids: list[list[int]] | None = None
    datasets: list[str] | None = None
    num_classes: list[int] | None = None
    adaptor_channels: int = 256
    fusion_levels: int = 0
    out_channels: int = 256
    activation: str = "relu"
    dropout: float = 0.9
    spatial_size: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.teacher_names = list(self.teacher_names or [])
        self.teacher_channels = [int(channels) for channels in (self.teacher_channels or [])]
        self.teacher_grids = [[int(size) for size in grid] for grid in (self.teacher_grids or [])]
        self.teacher_configs = [dict(config) for config in (self.teacher_configs or [])]
        self.datasets = list(self.datasets or [])
        self.num_classes = [int(count) for count in (self.num_classes or [])]
        count = len(self.teacher_names)
        if len(self.teacher_channels) != count or len(self.teacher_grids) != count:
            raise ValueError(
                f"JointTeacherConfig needs teacher_channels and teacher_grids for each of the {count} teachers "
                f"{self.teacher_names}, got {self.teacher_channels} and {self.teacher_grids}"
            )
        if self.teacher_configs and len(self.teacher_configs) != count:
            raise ValueError(f"teacher_configs has {len(self.teacher_configs)} entries for {count} teachers")
        if len(self.num_classes) != len(self.datasets):
            raise ValueError(f"num_classes {self.num_classes} needs one entry per dataset {self.datasets}")
        if any(len(grid) != 2 for grid in self.teacher_grids):
            raise ValueError(f"teacher_grids must be [height, width] pairs, got {self.teacher_grids}")
        if not 0 <= self.fusion_levels <= 2:
            raise ValueError(f"fusion_levels must be 0, 1 or 2, got {self.fusion_levels}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {ACTIVATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.spatial_size is not None:
            self.spatial_size = [int(size) for size in self.spatial_size]
        super().__post_init__(**kwargs)

    @property
    def fusion_grid(self) -> list[int]:
        """``[height, width]`` every teacher map is resized to (level 0 of the fusion)."""
        if self.spatial_size is not None:
            return list(self.spatial_size)
        if not self.teacher_grids:
            raise ValueError(
                "JointTeacherConfig has no teachers; set teacher_names, teacher_channels, teacher_grids"
            )
        return list(min(self.teacher_grids, key=lambda grid: grid[0] * grid[1]))

    def teacher_config(self, index: int) -> MlfdClassifierConfig:
        """The :class:`MlfdClassifierConfig` of teacher ``index`` (from ``teacher_configs``).

        Args:
            index: position of the teacher in ``teacher_names``.
        """
        if not self.teacher_configs:
            raise ValueError("this JointTeacherConfig was saved without teacher_configs")
        values = {key: value for key, value in self.teacher_configs[index].items() if key != "model_type"}
        return MlfdClassifierConfig(**values)


__all__ = ["JointTeacherConfig", "MlfdClassifierConfig"]
