"""MLFD models (SPEC §4): dataset-specific classifiers (individual teachers and students) and the joint teacher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from hf_distill.layers import BackboneNormMixin, align_spatial
from hf_distill.layers.trunk import check_levels_above_trunk, feature_block_ends, freeze_trunk, tapped_forward
from hf_distill.models.embedder.modeling_embedder import (
    BackboneOnCPUInitMixin,
    UniversalEmbedderModel,
    create_backbone,
)
from hf_distill.models.mlfd.configuration_mlfd import JointTeacherConfig, MlfdClassifierConfig

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class MlfdClassifierOutput(ModelOutput):
    """Output of :class:`MlfdClassifierModel`.

    Args:
        logits: ``(batch, num_classes)``.
        pooled_features: ``(batch, feature_dim)`` pooled backbone features (what the exported embedder returns
            before L2 normalisation).
        feature_maps: the raw maps at ``config.feature_levels`` (only with ``output_feature_maps=True``).
        distill_maps: ``feature_maps`` passed through the student-side adaptors (identity where the channels
            already match ``config.distill_channels``; only with ``output_feature_maps=True``).
    """

    logits: torch.FloatTensor | None = None
    pooled_features: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    distill_maps: tuple[torch.FloatTensor, ...] | None = None


class MlfdPreTrainedModel(BackboneOnCPUInitMixin, PreTrainedModel):
    """Shared save/load wiring of the MLFD models."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # Backbones keep their library's initialisation (or pretrained weights); the MLFD layers are initialised
        # in their constructors with PyTorch's defaults, so nothing is re-initialised here.
        return


class MlfdClassifierModel(BackboneNormMixin, MlfdPreTrainedModel):
    """A timm backbone with a classification head; an MLFD individual teacher or a dataset-specific student.

    Args:
        config: an :class:`MlfdClassifierConfig`.

    Attributes:
        backbone: the timm module built by :func:`~hf_distill.models.embedder.create_backbone`.
        classifier: ``nn.Linear(feature_dim, num_classes)``.
        adaptors: one student-side adaptor per feature level (1×1 conv where channels differ, else identity).
    """

    config_class = MlfdClassifierConfig
    base_model_prefix = "mlfd_classifier"

    def __init__(self, config: MlfdClassifierConfig) -> None:
        super().__init__(config)
        self.backbone, self.feature_dim = create_backbone(config.to_embedder_config())
        self.backbone_pretrained = config.pretrained_file is not None
        if not hasattr(self.backbone, "forward_intermediates"):
            raise ValueError(
                f"backbone {config.backbone!r} has no forward_intermediates; MLFD needs a timm model exposing "
                "its feature maps"
            )
        self.level_channels = [self._channels_of(level) for level in config.feature_levels]
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(self.feature_dim, config.num_classes)
        targets = config.distill_channels or self.level_channels
        self.adaptors = nn.ModuleList(
            nn.Identity() if source == target else nn.Conv2d(source, target, kernel_size=1)
            for source, target in zip(self.level_channels, targets)
        )
        if config.trainable_from is not None:
            check_levels_above_trunk(self.backbone, config.feature_levels, config.trainable_from)
            freeze_trunk(self.backbone, config.trainable_from)
        self.post_init()

    def _channels_of(self, level: int) -> int:
        info = self.backbone.feature_info
        infos = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        if not -len(infos) <= level < len(infos):
            raise ValueError(
                f"feature level {level} is out of range for {self.config.backbone!r}, which has {len(infos)} "
                "levels (use an index in [-levels, levels))"
            )
        return int(infos[level]["num_chs"])

    def _run_backbone(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # One pass yields both the final features (for the head) and the intermediate maps.
        final, maps = self.backbone.forward_intermediates(
            pixel_values, indices=list(self.config.feature_levels)
        )
        return self.backbone.forward_head(final), list(maps)

    def feature_maps(
        self, pixel_values: torch.Tensor, levels: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """The backbone's raw maps ``(B, C, H, W)`` at ``levels`` (default ``config.feature_levels``).

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images.
            levels: indices into the backbone's ``forward_intermediates`` levels.
        """
        indices = list(self.config.feature_levels if levels is None else levels)
        return list(
            self.backbone.forward_intermediates(pixel_values, indices=indices, intermediates_only=True)
        )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_feature_maps: bool = False,
        trunk_maps: torch.Tensor | None = None,
        **kwargs,
    ) -> MlfdClassifierOutput:
        """Classify a batch of images, or of the frozen trunk's maps of images (``config.trainable_from``).

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images.
            output_feature_maps: also return the maps at ``config.feature_levels`` (raw and adapted).
            trunk_maps: instead of ``pixel_values``, the output of the backbone's stages before
                ``config.trainable_from`` (``hf_distill.layers.trunk.trunk_forward``); the same outputs as
                the pixels they came from.
        """
        if (pixel_values is None) == (trunk_maps is None):
            raise ValueError("MlfdClassifierModel takes exactly one of pixel_values and trunk_maps")
        if trunk_maps is not None:
            split = self.config.trainable_from
            if split is None:
                raise ValueError("trunk_maps need a classifier built with trainable_from (the trunk's cut)")
            # forward_intermediates' level k is the output of block stage_ends[k] - 1, above the trunk.
            levels = self.config.feature_levels if output_feature_maps else []
            taps = sorted({end - 1 for end in feature_block_ends(self.backbone, levels)})
            final, maps = tapped_forward(self.backbone, trunk_maps, split, taps)
            pooled, maps = self.backbone.forward_head(final), (maps if output_feature_maps else None)
        elif output_feature_maps:
            pooled, maps = self._run_backbone(pixel_values)
        else:
            pooled, maps = self.backbone(pixel_values), None
        logits = self.classifier(self.dropout(pooled))
        distill_maps = None
        if maps is not None:
            distill_maps = tuple(adaptor(feature_map) for adaptor, feature_map in zip(self.adaptors, maps))
            maps = tuple(maps)
        return MlfdClassifierOutput(
            logits=logits, pooled_features=pooled, feature_maps=maps, distill_maps=distill_maps
        )

    def export_embedder(self) -> UniversalEmbedderModel:
        """Export as a :class:`UniversalEmbedderModel` returning the L2-normalised pooled backbone feature; the
        classifier and adaptors (expendable) are dropped."""
        embedder = UniversalEmbedderModel(self.config.to_embedder_config(pretrained_file=None))
        embedder.backbone.load_state_dict(self.backbone.state_dict())
        return embedder.eval()


@dataclass
class JointTeacherOutput(ModelOutput):
    """Output of :class:`JointTeacherModel`.

    Args:
        logits: ``(batch, max classes)``; row ``i`` holds the logits of its dataset's head, padded with the
            dtype's most negative value (softmax gives those columns zero probability).
        fused_maps: one ``(batch, out_channels, h, w)`` fused map per fusion level, shallowest first.
        pooled: ``(batch, out_channels)`` pooled deepest fused map (before dropout).
    """

    logits: torch.FloatTensor | None = None
    fused_maps: tuple[torch.FloatTensor, ...] | None = None
    pooled: torch.FloatTensor | None = None


def _conv_block(
    in_channels: int, out_channels: int, kernel: int, stride: int, activation: str
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        _ACTIVATIONS[activation](),
    )


class JointTeacherModel(MlfdPreTrainedModel):
    """MLFD joint teacher: fuses the individual teachers' feature maps and classifies every dataset.

    Args:
        config: a :class:`JointTeacherConfig` (the architecture is described there).

    Inputs are the cached teacher maps, one ``(B, C_t, H_t, W_t)`` tensor per teacher (a list in the order of
    ``config.teacher_names``, or a dict keyed by teacher name), and ``domain_ids`` selecting each row's head.
    """

    config_class = JointTeacherConfig
    base_model_prefix = "joint_teacher"
    main_input_name = "teacher_maps"
    input_modalities = ()

    def __init__(self, config: JointTeacherConfig) -> None:
        super().__init__(config)
        self.adaptors = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(channels), nn.Conv2d(channels, config.adaptor_channels, kernel_size=1)
            )
            for channels in config.teacher_channels
        )
        concat_channels = config.adaptor_channels * len(config.teacher_channels)
        self.fusion = nn.Sequential(nn.BatchNorm2d(concat_channels), _ACTIVATIONS[config.activation]())
        self.fusion_levels = nn.ModuleList(
            _conv_block(concat_channels, concat_channels, 3, 2, config.activation)
            for _ in range(config.fusion_levels)
        )
        self.outputs = nn.ModuleList(
            _conv_block(concat_channels, config.out_channels, 1, 1, config.activation)
            for _ in range(config.fusion_levels + 1)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleList(nn.Linear(config.out_channels, count) for count in config.num_classes)
        self.post_init()

    def _ordered_maps(
        self, teacher_maps: Sequence[torch.Tensor] | dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        names = self.config.teacher_names
        if isinstance(teacher_maps, dict):
            missing = [name for name in names if name not in teacher_maps]
            if missing:
                raise ValueError(f"teacher maps missing for {missing}; got {sorted(teacher_maps)}")
            teacher_maps = [teacher_maps[name] for name in names]
        if len(teacher_maps) != len(names):
            raise ValueError(f"expected {len(names)} teacher maps ({names}), got {len(teacher_maps)}")
        for name, feature_map, channels in zip(names, teacher_maps, self.config.teacher_channels):
            if feature_map.dim() != 4 or feature_map.shape[1] != channels:
                raise ValueError(
                    f"teacher {name!r}: expected a (B, {channels}, H, W) map, got shape {tuple(feature_map.shape)}"
                )
        return list(teacher_maps)

    def fuse(self, teacher_maps: Sequence[torch.Tensor] | dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The fused maps, one per fusion level (shallowest first).

        Args:
            teacher_maps: one map per teacher (list in ``config.teacher_names`` order, or dict by name).
        """
        grid = self.config.fusion_grid
        adapted = [
            adaptor(align_spatial(feature_map.float(), grid))
            for adaptor, feature_map in zip(self.adaptors, self._ordered_maps(teacher_maps))
        ]
        level = self.fusion(torch.cat(adapted, dim=1))
        fused = [self.outputs[0](level)]
        for fusion_level, output in zip(self.fusion_levels, self.outputs[1:]):
            level = fusion_level(level)
            fused.append(output(level))
        return fused

    def forward(
        self,
        teacher_maps: Sequence[torch.Tensor] | dict[str, torch.Tensor],
        domain_ids: torch.Tensor,
        **kwargs,
    ) -> JointTeacherOutput:
        """Fuse the teacher maps and classify each row with its dataset's head.

        Args:
            teacher_maps: one ``(B, C_t, H_t, W_t)`` map per teacher.
            domain_ids: ``(B,)`` index into ``config.datasets`` of each row.
        """
        fused = self.fuse(teacher_maps)
        pooled = fused[-1].mean(dim=(2, 3))
        hidden = self.dropout(pooled)
        domain_ids = domain_ids.to(hidden.device).long()
        if domain_ids.numel() and int(domain_ids.max()) >= len(self.heads):
            raise ValueError(
                f"domain id {int(domain_ids.max())} is out of range for datasets {self.config.datasets}"
            )
        logits = hidden.new_full(
            (hidden.shape[0], max(self.config.num_classes)), torch.finfo(hidden.dtype).min
        )
        for domain, head in enumerate(self.heads):
            rows = domain_ids == domain
            if rows.any():
                logits[rows, : head.out_features] = head(hidden[rows])
        return JointTeacherOutput(logits=logits, fused_maps=tuple(fused), pooled=pooled)


__all__ = [
    "JointTeacherModel",
    "JointTeacherOutput",
    "MlfdClassifierModel",
    "MlfdClassifierOutput",
    "MlfdPreTrainedModel",
]
