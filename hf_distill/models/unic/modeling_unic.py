"""The UNIC student (Sariyildiz et al., ECCV 2024; SPEC §3): a ViT trained from scratch to predict the CLS
and patch tokens of several frozen teachers through a *ladder of projectors*.

For every teacher and token type (CLS / patch) there is one 2-layer MLP (Linear → GELU → Linear) on the output
of each selected student block; their outputs are summed. Intermediate-block projectors have hidden width
``d`` (the student width), the last block's ``4d``. Intermediate blocks are read before the final LayerNorm; the
last one raw as well (the authors' code) or after it (``last_rung_input="normed"``, the tensor the exported
embedder returns). When a teacher's token grid differs
from the student's, the student's tokens are resized bilinearly to the teacher's grid before projection.

A CNN student (a timm EfficientNet-family backbone, e.g. EfficientNet-Lite0 from its offline ImageNet weights)
taps the outputs of its *stages* instead of blocks. Its CLS-like feature at a stage is the stage's map averaged
over positions (at the head: exactly the pooled feature the embedder returns); its patch tokens are the stage's
map resized to the teacher's grid — averaged over the cells each teacher cell covers when it shrinks (early
stages are much finer than a teacher's last map), bilinear when it grows — then read row-major like a CNN
teacher's tokens. Each rung's hidden width is a multiple of its own stage's width (stages differ in width).

Over a cached trunk (``config.trainable_from``) the input is the frozen lower blocks' output maps
(``hf_distill.data.trunk_cache``) and only the blocks from ``trainable_from`` and the ladders run; the exported
embedder is still the whole backbone and takes pixels.

The projectors are expendable: `UnicStudentModel.export_embedder` returns a `UniversalEmbedderModel` holding
only the backbone, whose embedding is the student's final-normed CLS token (CNN: its pooled head feature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from hf_distill.layers import BackboneNormMixin, ProjectorLadder, resize_token_grid
from hf_distill.layers.grid import resize_grid
from hf_distill.layers.trunk import freeze_trunk, tapped_forward, trunk_forward
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel, create_backbone
from hf_distill.models.embedder.configuration_embedder import preprocessing_of
from hf_distill.models.embedder.modeling_embedder import BackboneOnCPUInitMixin
from hf_distill.models.unic.configuration_unic import TOKEN_TYPES, UnicStudentConfig


def student_kind(backbone: str) -> str:
    """``"cnn"`` for a timm EfficientNet-family name (``tf_efficientnet_lite0``, ``mobilenetv2_100`` …), else
    ``"vit"`` (checked once the backbone is built).

    Args:
        backbone: the timm model name.
    """
    import timm

    if (
        timm.is_model(backbone)
        and timm.models.model_entrypoint(backbone).__module__ == "timm.models.efficientnet"
    ):
        return "cnn"
    return "vit"


@dataclass
class UnicStudentOutput(ModelOutput):
    """Output of `UnicStudentModel`.

    Args:
        predictions: teacher name → ``{"cls": (batch, global_dim), "patch": (batch, h * w, token_dim)}``,
            predictions of that teacher's targets on the teacher's token grid.
        embeddings: ``(batch, d)`` the student's final-normed CLS token (CNN: pooled head feature),
            L2-normalised — exactly what the exported embedder returns.
    """

    predictions: dict[str, dict[str, torch.Tensor]] | None = None
    embeddings: torch.FloatTensor | None = None


class UnicStudentPreTrainedModel(BackboneOnCPUInitMixin, PreTrainedModel):
    """Base class wiring `UnicStudentConfig` into transformers' save/load machinery."""

    config_class = UnicStudentConfig
    base_model_prefix = "unic"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # The timm backbone keeps its own initialisation (or pretrained weights); projector layers get the
        # configured one.
        if isinstance(module, nn.Linear) and not any(module is m for m in self.backbone.modules()):
            if self.config.projector_init == "trunc_normal":
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            else:
                module.reset_parameters()


class UnicStudentModel(BackboneNormMixin, UnicStudentPreTrainedModel):
    """UNIC student: a timm ViT or EfficientNet-family CNN plus, per teacher and token type, a ladder of projectors.

    Args:
        config: a `UnicStudentConfig`; ``config.teachers`` fixes the ladders' output widths and grids.

    Attributes:
        backbone: the ViT or CNN (built by `create_backbone`, so its weights load into the exported embedder).
        kind: ``"vit"`` or ``"cnn"``.
        ladders: ``ladders[teacher][token_type]`` is a `ProjectorLadder`.
        ladder_blocks: the tapped blocks (CNN: stages).
        grid: the ViT student's patch grid ``(h, w)`` (``None`` for a CNN: each stage has its own).
        trunk_split: ``config.trainable_from`` — the input is then the trunk's maps (``None``: pixels).
    """

    def __init__(self, config: UnicStudentConfig) -> None:
        super().__init__(config)
        if not config.teachers:
            raise ValueError("UnicStudentConfig.teachers is empty: a UNIC student needs at least one teacher")
        self.kind = student_kind(config.backbone)
        self.backbone, self.feature_dim = create_backbone(self.embedder_config(training=True))
        self.backbone_pretrained = config.pretrained_file is not None
        if self.kind == "vit" and (
            not hasattr(self.backbone, "forward_intermediates") or not hasattr(self.backbone, "blocks")
        ):
            raise ValueError(
                f"UNIC student backbone {config.backbone!r} must be a timm ViT with blocks or a timm "
                "EfficientNet-family CNN"
            )
        depth = len(self.backbone.blocks)
        self.trunk_split: int | None = config.trainable_from
        if self.trunk_split is not None:
            if self.trunk_split >= depth:
                raise ValueError(
                    f"trainable_from={self.trunk_split} leaves none of the student's {depth} blocks to train; a "
                    f"UNIC student distils its last block, so trainable_from must be at most {depth - 1}"
                )
            freeze_trunk(self.backbone, self.trunk_split)
        self.ladder_blocks = self._resolve_blocks(config.ladder_blocks, depth, self.trunk_split or 0)
        if self.kind == "vit":
            self.grid: tuple[int, int] | None = tuple(int(v) for v in self.backbone.patch_embed.grid_size)
            widths = [self.feature_dim] * len(self.ladder_blocks)
        else:
            self.grid = None
            stage_widths = self._stage_widths()
            widths = [stage_widths[block] for block in self.ladder_blocks]
            if config.last_rung_input == "normed":
                widths[-1] = self.feature_dim  # the head's map
        self.ladders = nn.ModuleDict(
            {
                name: nn.ModuleDict(
                    {
                        token_type: ProjectorLadder(
                            self.ladder_blocks,
                            depth,
                            widths,
                            int(shape["global_dim" if token_type == "cls" else "token_dim"]),
                            config.projector_hidden_ratio,
                            config.last_projector_hidden_ratio,
                        )
                        for token_type in TOKEN_TYPES
                    }
                )
                for name, shape in config.teachers.items()
            }
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, the trunk frozen again (loading replaces the parameters that
        ``__init__`` froze with fresh ones that require gradients)."""
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model  # a tuple with output_loading_info=True
        if loaded.trunk_split is not None:
            freeze_trunk(loaded.backbone, loaded.trunk_split)
        return model

    @staticmethod
    def _resolve_blocks(blocks: list[int] | None, depth: int, first: int = 0) -> list[int]:
        """The tapped blocks: ``blocks`` resolved (negative from the end, the last block added), or every block
        from ``first`` (the first one that trains) when ``None``; a block below ``first`` is refused."""
        if blocks is None:
            return list(range(first, depth))
        resolved = sorted({block % depth if -depth <= block < depth else block for block in blocks})
        if any(block < 0 or block >= depth for block in resolved):
            raise ValueError(f"ladder_blocks={blocks} out of range for a student with {depth} blocks")
        frozen = [block for block in resolved if block < first]
        if frozen:
            raise ValueError(
                f"ladder_blocks={blocks} taps blocks {frozen} inside the frozen trunk (trainable_from={first}): "
                f"their outputs are not computed over a cached trunk; tap blocks {first}..{depth - 1}, or leave "
                "ladder_blocks unset, or lower trainable_from"
            )
        if resolved[-1] != depth - 1:
            # The last block's output is what the exported embedder returns; it must be distilled.
            resolved.append(depth - 1)
        return resolved

    @torch.no_grad()
    def _stage_widths(self) -> list[int]:
        # A CNN's stage widths, read off one small forward in eval mode (no BatchNorm statistic moves).
        training = self.backbone.training
        self.backbone.eval()
        probe = torch.zeros(1, 3, 32, 32, device=next(self.backbone.parameters()).device)
        stem = trunk_forward(self.backbone, probe, 0)
        _, maps = tapped_forward(self.backbone, stem, 0, list(range(len(self.backbone.blocks))))
        self.backbone.train(training)
        return [int(stage.shape[1]) for stage in maps]

    def embedder_config(self, training: bool = False) -> UniversalEmbedderConfig:
        """The `UniversalEmbedderConfig` of the student's backbone (the exported artefact).

        Args:
            training: include the training-only ``drop_path_rate`` and the ``pretrained_file`` to start from.
        """
        config = self.config
        kwargs = dict(config.backbone_kwargs)
        vit = student_kind(config.backbone) == "vit"
        if vit:
            kwargs.setdefault("img_size", config.image_size)  # a CNN takes any input size
        if training and config.drop_path_rate:
            kwargs["drop_path_rate"] = config.drop_path_rate
        return UniversalEmbedderConfig(
            backbone=config.backbone,
            backbone_source="timm",
            backbone_kwargs=kwargs,
            pretrained_file=config.pretrained_file if training else None,
            # ViT: the CLS token; CNN: its own global average pooling
            pooling="token" if vit else "default",
            feature_norm=False,
            embed_dim=None,
            normalize=True,
            **preprocessing_of(config),
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_predictions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> UnicStudentOutput:
        """Embed the images and, when asked, predict every teacher's CLS and patch targets.

        Args:
            pixel_values: ``(batch, 3, image_size, image_size)`` normalised images, or over a cached trunk
                (``trunk_split``) the trunk's output maps.
            output_predictions: run the ladders; defaults to ``self.training`` so that evaluators calling
                ``model(pixel_values=...)`` pay only for the embedding.
            return_dict: accepted for API symmetry; the output is always a `UnicStudentOutput`.
        """
        if output_predictions is None:
            output_predictions = self.training
        if self.kind == "cnn" or self.trunk_split is not None:
            return self._forward_tapped(pixel_values, output_predictions)
        if not output_predictions:
            final = self.backbone.forward_features(pixel_values)
            return UnicStudentOutput(embeddings=F.normalize(final[:, 0], dim=-1))
        final, intermediates = self.backbone.forward_intermediates(
            pixel_values, indices=self.ladder_blocks, return_prefix_tokens=True, norm=False, output_fmt="NLC"
        )
        prefix = self.backbone.num_prefix_tokens
        # Intermediate blocks are read raw; the last one raw too, or after the final norm (last_rung_input).
        cls_features = [tokens_prefix[1][:, 0] for tokens_prefix in intermediates]
        patch_features = [tokens_prefix[0] for tokens_prefix in intermediates]
        if self.config.last_rung_input == "normed":
            cls_features[-1], patch_features[-1] = final[:, 0], final[:, prefix:]
        predictions = {}
        for name, ladder in self.ladders.items():
            target_grid = tuple(self.config.teachers[name]["grid"])
            resized = [resize_token_grid(tokens, self.grid, target_grid) for tokens in patch_features]
            predictions[name] = {"cls": ladder["cls"](cls_features), "patch": ladder["patch"](resized)}
        return UnicStudentOutput(predictions=predictions, embeddings=F.normalize(final[:, 0], dim=-1))

    def _forward_tapped(self, inputs: torch.Tensor, output_predictions: bool) -> UnicStudentOutput:
        """:meth:`forward` block by block from pixels (CNN) or from the trunk's maps (``trunk_split``)."""
        start = self.trunk_split or 0
        x = inputs if self.trunk_split is not None else trunk_forward(self.backbone, inputs, 0)
        taps = self.ladder_blocks if output_predictions else []
        final, tapped = tapped_forward(self.backbone, x, start, taps)
        embeddings = F.normalize(self.backbone.forward_head(final, pre_logits=True), dim=-1)
        if not output_predictions:
            return UnicStudentOutput(embeddings=embeddings)
        normed = self.config.last_rung_input == "normed"
        predictions = {}
        if self.kind == "vit":
            prefix = self.backbone.num_prefix_tokens
            if normed:
                tapped[-1] = final
            cls_features = [tokens[:, 0] for tokens in tapped]
            patch_features = [tokens[:, prefix:] for tokens in tapped]
            for name, ladder in self.ladders.items():
                target_grid = tuple(self.config.teachers[name]["grid"])
                resized = [resize_token_grid(tokens, self.grid, target_grid) for tokens in patch_features]
                predictions[name] = {"cls": ladder["cls"](cls_features), "patch": ladder["patch"](resized)}
            return UnicStudentOutput(predictions=predictions, embeddings=embeddings)
        if normed:
            tapped[-1] = final
        cls_features = [stage.mean(dim=(2, 3)) for stage in tapped]
        for name, ladder in self.ladders.items():
            target_grid = tuple(self.config.teachers[name]["grid"])
            tokens = [
                resize_grid(stage, target_grid, shrink="area").flatten(2).transpose(1, 2) for stage in tapped
            ]
            predictions[name] = {"cls": ladder["cls"](cls_features), "patch": ladder["patch"](tokens)}
        return UnicStudentOutput(predictions=predictions, embeddings=embeddings)

    def export_embedder(self) -> UniversalEmbedderModel:
        """A `UniversalEmbedderModel` with the student's backbone weights and no projector."""
        embedder = UniversalEmbedderModel(self.embedder_config(training=False))
        embedder.backbone.load_state_dict(self.backbone.state_dict(), strict=True)
        return embedder.to(next(self.backbone.parameters()).device).eval()


__all__ = ["UnicStudentModel", "UnicStudentOutput", "student_kind"]
