"""UDON: one backbone, online per-domain teachers and a universal student (Ypsilantis et al., NeurIPS 2024).

The model is the architecture only (SPEC §1); the losses live in :class:`hf_distill.losses.UdonLoss`. For a
single-domain batch of domain ``d``:

- ``f = normalize(backbone(x))``; teacher ``t = normalize(W_t^d f)`` (256-d); student ``s = normalize(W_s f)``
  (64-d); cosine logits ``c_t = C_t^d(t)`` and ``c_s = C_s^d(s)`` (or the joint classifier's slice of ``d``).

Only the backbone and the student head are exported (:meth:`UdonModel.export_embedder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from hf_distill.layers import BackboneNormMixin, CosineClassifier
from hf_distill.layers.trunk import freeze_trunk, top_forward
from hf_distill.models.embedder.configuration_embedder import UniversalEmbedderConfig, preprocessing_of
from hf_distill.models.embedder.modeling_embedder import (
    UniversalEmbedderModel,
    UniversalEmbedderPreTrainedModel,
    create_backbone,
)
from hf_distill.models.udon.configuration_udon import UdonConfig


@dataclass
class UdonOutput(ModelOutput):
    """Output of :class:`UdonModel`.

    Args:
        embeddings: ``(batch, embed_dim)`` L2-normalised universal (student) embeddings.
        backbone_features: ``(batch, feature_dim)`` pooled backbone features (before normalisation).
        teacher_embeddings: ``(batch, teacher_dim)`` L2-normalised embeddings of the batch domain's teacher.
        teacher_logits: ``(batch, classes of the domain)`` teacher cosine logits.
        student_logits: ``(batch, classes of the domain)`` student cosine logits.
        joint_logits: ``(batch, all classes)`` cosine logits of the joint student classifier (UJC* variants).
        label_offset: index of the domain's first class in ``joint_logits``.
        detached_embeddings / detached_logits: the student embedding and logits computed from the backbone
            feature detached from the graph (for distillation losses that must not reach the backbone).
    """

    embeddings: torch.FloatTensor | None = None
    backbone_features: torch.FloatTensor | None = None
    teacher_embeddings: torch.FloatTensor | None = None
    teacher_logits: torch.FloatTensor | None = None
    student_logits: torch.FloatTensor | None = None
    joint_logits: torch.FloatTensor | None = None
    label_offset: int | None = None
    detached_embeddings: torch.FloatTensor | None = None
    detached_logits: torch.FloatTensor | None = None


def backbone_config(config: UdonConfig, embed_dim: int | None) -> UniversalEmbedderConfig:
    """The ``UniversalEmbedderConfig`` sharing ``config``'s backbone and preprocessing.

    Args:
        config: the UDON configuration.
        embed_dim: width of the embedder's head.
    """
    return UniversalEmbedderConfig(
        backbone=config.backbone,
        backbone_source=config.backbone_source,
        backbone_kwargs=dict(config.backbone_kwargs),
        pretrained_file=config.pretrained_file,
        pooling=config.pooling,
        feature_norm=True,
        embed_dim=embed_dim,
        normalize=True,
        **preprocessing_of(config),
    )


class UdonPreTrainedModel(UniversalEmbedderPreTrainedModel):
    """Base class wiring :class:`UdonConfig` into transformers' save/load machinery."""

    config_class = UdonConfig
    base_model_prefix = "udon"

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone keeps its library's initialisation or pretrained weights; only the heads and the
        # classifiers are (re)initialised.
        if isinstance(module, CosineClassifier):
            module.reset_parameters()
        elif isinstance(module, nn.Linear) and any(module is head for head in self._head_modules()):
            module.reset_parameters()

    def _head_modules(self) -> list[nn.Module]:
        heads = [getattr(self, "student_head", None)]
        heads += list(getattr(self, "teacher_heads", []) or [])
        return [head for head in heads if head is not None]


class UdonModel(BackboneNormMixin, UdonPreTrainedModel):
    """UDON model: shared backbone, per-domain teacher heads and classifiers, universal student head.

    The backbone's running-statistics layers follow ``backbone_norm`` (see
    :class:`~hf_distill.layers.BackboneNormMixin`; the trainer sets it from the training arguments) and the
    whole backbone runs in eval mode while ``backbone_frozen`` is set (UDON's first epochs).

    Args:
        config: a :class:`UdonConfig` with ``domains`` and ``num_classes`` set.

    Attributes:
        backbone: built by ``create_backbone``.
        student_head: ``Linear(feature_dim, embed_dim)``, the exported universal head.
        teacher_heads: one ``Linear(feature_dim, teacher_dim)`` per domain (absent for the baselines).
        teacher_classifiers / student_classifiers: cosine classifiers (the student has a single joint one
            when ``joint_classifier``).
    """

    def __init__(self, config: UdonConfig) -> None:
        super().__init__(config)
        if not config.domains:
            raise ValueError("UdonConfig.domains is empty: give the domain names and their num_classes")
        self.backbone, self.feature_dim = create_backbone(backbone_config(config, config.embed_dim))
        self.backbone_pretrained = config.pretrained_file is not None
        self.trunk_split: int | None = None
        self.student_head = nn.Linear(self.feature_dim, config.embed_dim)
        if config.use_teacher:
            self.teacher_heads = nn.ModuleList(
                nn.Linear(self.feature_dim, config.teacher_dim) for _ in config.domains
            )
            self.teacher_classifiers = nn.ModuleList(
                CosineClassifier(config.teacher_dim, n) for n in config.num_classes
            )
        else:
            self.teacher_heads = None
            self.teacher_classifiers = None
        if config.joint_classifier:
            self.student_classifiers = nn.ModuleList(
                [CosineClassifier(config.embed_dim, sum(config.num_classes))]
            )
        else:
            self.student_classifiers = nn.ModuleList(
                CosineClassifier(config.embed_dim, n) for n in config.num_classes
            )
        offsets = [0]
        for n in config.num_classes[:-1]:
            offsets.append(offsets[-1] + n)
        self.class_offsets = offsets
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        domain_ids: torch.Tensor | None = None,
        output_heads: bool | None = None,
        detach_student_input: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> UdonOutput:
        """Embed a batch and, for a single-domain batch, run that domain's heads and classifiers.

        Args:
            pixel_values: ``(batch, 3, H, W)`` images.
            domain_ids: ``(batch,)`` domain index of every image; all equal (batches are single-domain).
            output_heads: compute the teacher/student logits (default: when ``domain_ids`` is given).
            detach_student_input: also return the student embedding and logits computed from the detached
                backbone feature (``detached_*``), for distillation that must not reach the backbone.
            return_dict: ignored; a :class:`UdonOutput` is always returned.
        """
        # While the trainer holds the backbone frozen its forward runs without autograd, which saves the
        # backward pass through it (its learning rate is 0 anyway).
        if self.training and self.backbone_frozen:
            with torch.no_grad():
                features = self.backbone_features(pixel_values)
        else:
            features = self.backbone_features(pixel_values)
        normalized = F.normalize(features, dim=-1)
        student = F.normalize(self.student_head(normalized), dim=-1)
        if output_heads is None:
            output_heads = domain_ids is not None
        if not output_heads:
            return UdonOutput(embeddings=student, backbone_features=features)
        domain = self._single_domain(domain_ids)
        output = UdonOutput(
            embeddings=student,
            backbone_features=features,
            student_logits=self.student_logits(student, domain),
            label_offset=self.class_offsets[domain],
        )
        if self.config.joint_classifier:
            output.joint_logits = self.student_classifiers[0](student)
        if self.config.use_teacher:
            teacher = F.normalize(self.teacher_heads[domain](normalized), dim=-1)
            output.teacher_embeddings = teacher
            output.teacher_logits = self.teacher_classifiers[domain](teacher)
        if detach_student_input:
            detached = F.normalize(self.student_head(normalized.detach()), dim=-1)
            output.detached_embeddings = detached
            output.detached_logits = self.student_logits(detached, domain)
        return output

    def use_cached_trunk(self, trainable_from: int | None) -> None:
        """Train over a cached trunk: inputs become the output maps of the backbone's blocks before
        ``trainable_from`` (``hf_distill.data.trunk_cache``), whose parameters stop training; ``None`` goes
        back to pixels. The exported embedder is the whole backbone either way.

        Args:
            trainable_from: index of the first backbone stage (CNN) or block (ViT) that trains, or None.
        """
        if trainable_from is not None:
            freeze_trunk(self.backbone, trainable_from)
        self.trunk_split = trainable_from

    def backbone_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of pixels, or of trunk maps over a cached trunk (:meth:`use_cached_trunk`).

        Args:
            inputs: ``(batch, 3, H, W)`` images, or the trunk's output maps.
        """
        if self.trunk_split is None:
            return self.backbone(inputs)
        return top_forward(self.backbone, inputs, self.trunk_split)

    def _single_domain(self, domain_ids: torch.Tensor | None) -> int:
        if domain_ids is None:
            if len(self.config.domains) > 1:
                raise ValueError("UdonModel needs domain_ids when it has more than one domain")
            return 0
        domain = int(domain_ids[0])
        if not bool((domain_ids == domain).all()):
            raise ValueError(
                f"a UDON batch must hold one domain, got domain ids {sorted(set(domain_ids.tolist()))}; "
                "train with hf_distill.sampling.DomainBatchSampler"
            )
        if not 0 <= domain < len(self.config.domains):
            raise ValueError(f"domain id {domain} is outside [0, {len(self.config.domains)})")
        return domain

    def student_logits(self, student: torch.Tensor, domain: int) -> torch.Tensor:
        """Student cosine logits restricted to ``domain``'s classes.

        Args:
            student: ``(batch, embed_dim)`` student embeddings.
            domain: the domain index.
        """
        if not self.config.joint_classifier:
            return self.student_classifiers[domain](student)
        start = self.class_offsets[domain]
        return self.student_classifiers[0](student)[:, start : start + self.config.num_classes[domain]]

    def _export(self, head: nn.Linear, embed_dim: int) -> UniversalEmbedderModel:
        config = backbone_config(self.config, embed_dim)
        # The weights come from this model; a local pretrained file is neither needed nor portable.
        config.pretrained_file = None
        embedder = UniversalEmbedderModel(config)
        state = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        state.update({f"head.{k}": v for k, v in head.state_dict().items()})
        embedder.load_state_dict(state, strict=True)
        return embedder.to(next(self.parameters()).device).eval()

    def export_embedder(self) -> UniversalEmbedderModel:
        """The universal embedder: backbone + student head; teacher heads and classifiers are dropped. Its config
        records the widths the head was trained at (``matryoshka_dims``)."""
        embedder = self._export(self.student_head, self.config.embed_dim)
        embedder.config.matryoshka_dims = list(self.config.matryoshka_dims)
        return embedder

    def export_teacher_embedder(self, domain: str | int) -> UniversalEmbedderModel:
        """Backbone + one domain's teacher head (256-d), for the separate (oracle) evaluation.

        Args:
            domain: domain name or index.
        """
        if not self.config.use_teacher:
            raise ValueError("this UDON variant has no teacher heads (use_teacher=False)")
        if isinstance(domain, str):
            if domain not in self.config.domains:
                raise ValueError(f"unknown domain '{domain}'; this model has {self.config.domains}")
            domain = self.config.domains.index(domain)
        return self._export(self.teacher_heads[domain], self.config.teacher_dim)


__all__ = ["UdonModel", "UdonOutput", "UdonPreTrainedModel", "backbone_config"]
