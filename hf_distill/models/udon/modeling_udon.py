"""UDON: one backbone, online per-domain teachers and a universal student (Ypsilantis et al., NeurIPS 2024).

For a single-domain batch of domain ``d`` (SPEC §1):

- ``f = normalize(backbone(x))``; teacher ``t = normalize(W_t^d f)`` (256-d); student ``s = normalize(W_s f)``
  (64-d); cosine logits ``c_t = C_t^d(t)`` and ``c_s = C_s^d(s)``.
- ``L_t = CE(16·c_t, y)``, ``L_s = CE(16·c_s, y)``, ``L_log = KL(softmax(c_t/τ) ‖ softmax(c_s/τ))``,
  ``L_rel = MSE(s·sᵀ, t·tᵀ)``; teacher side detached in the distillation losses.
- the total is the weighted mean of the active losses.

Only the backbone and the student head are exported (:meth:`UdonModel.export_embedder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from hf_distill.layers import BackboneNormMixin
from hf_distill.losses.classification import CosineClassificationLoss, CosineClassifier
from hf_distill.losses.logit import LogitDistillationLoss
from hf_distill.losses.relational import RelationalDistillationLoss
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
        loss: weighted mean of the active losses (when ``labels`` are given).
        embeddings: ``(batch, embed_dim)`` L2-normalised universal (student) embeddings.
        teacher_embeddings: ``(batch, teacher_dim)`` L2-normalised embeddings of the batch domain's teacher.
        backbone_features: ``(batch, feature_dim)`` pooled backbone features (before normalisation).
        losses: the named loss components and accuracies (``loss_teacher``, ``loss_student``, ``loss_logit``,
            ``loss_relational``, ``accuracy_teacher``, ``accuracy_student``).
    """

    loss: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    teacher_embeddings: torch.FloatTensor | None = None
    backbone_features: torch.FloatTensor | None = None
    losses: dict[str, torch.Tensor] | None = None


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
        self.classification_loss = CosineClassificationLoss(
            config.classifier_scale, config.classifier_margin, config.margin_type
        )
        self.logit_loss = LogitDistillationLoss(config.temperature)
        self.relational_loss = RelationalDistillationLoss(scale=config.relational_scale)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        domain_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> UdonOutput:
        """Embed a batch and, when ``labels`` are given, compute the UDON losses.

        Args:
            pixel_values: ``(batch, 3, H, W)`` images.
            labels: ``(batch,)`` class indices local to the batch's domain.
            domain_ids: ``(batch,)`` domain index of every image; all equal (batches are single-domain).
            return_dict: ignored; a :class:`UdonOutput` is always returned.
        """
        # While the trainer holds the backbone frozen its forward runs without autograd, which saves the
        # backward pass through it (its learning rate is 0 anyway).
        if self.training and self.backbone_frozen:
            with torch.no_grad():
                features = self.backbone(pixel_values)
        else:
            features = self.backbone(pixel_values)
        normalized = F.normalize(features, dim=-1)
        student = F.normalize(self.student_head(normalized), dim=-1)
        if labels is None:
            return UdonOutput(embeddings=student, backbone_features=features)
        domain = self._single_domain(domain_ids, labels)
        losses, teacher = self._losses(normalized, student, labels.long(), domain)
        weights = {
            "loss_teacher": self.config.teacher_loss_weight,
            "loss_student": self.config.student_loss_weight,
            "loss_logit": self.config.logit_loss_weight,
            "loss_relational": self.config.relational_loss_weight,
        }
        active = {name: weight for name, weight in weights.items() if name in losses}
        total = sum(weight * losses[name] for name, weight in active.items()) / sum(active.values())
        return UdonOutput(
            loss=total,
            embeddings=student,
            teacher_embeddings=teacher,
            backbone_features=features,
            losses=losses,
        )

    def _single_domain(self, domain_ids: torch.Tensor | None, labels: torch.Tensor) -> int:
        if domain_ids is None:
            if len(self.config.domains) > 1:
                raise ValueError("UdonModel needs domain_ids with labels when it has more than one domain")
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

    def _student_logits(self, student: torch.Tensor, domain: int) -> torch.Tensor:
        """Student cosine logits restricted to ``domain``'s classes."""
        if not self.config.joint_classifier:
            return self.student_classifiers[domain](student)
        start = self.class_offsets[domain]
        return self.student_classifiers[0](student)[:, start : start + self.config.num_classes[domain]]

    def _losses(
        self, normalized: torch.Tensor, student: torch.Tensor, labels: torch.Tensor, domain: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        losses: dict[str, torch.Tensor] = {}
        name = self.config.domains[domain]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.config.num_classes[domain]):
            raise ValueError(
                f"labels of domain '{name}' must lie in [0, {self.config.num_classes[domain]}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        if self.config.joint_classifier:
            # The joint classifier scores all classes of all domains; the target is the domain's offset class.
            joint = self.student_classifiers[0](student)
            student_out = self.classification_loss(joint, labels + self.class_offsets[domain])
        else:
            student_out = self.classification_loss(self._student_logits(student, domain), labels)
        losses["loss_student"] = student_out["loss"]
        losses["accuracy_student"] = student_out["accuracy"]
        if not self.config.use_teacher:
            return losses, None
        teacher = F.normalize(self.teacher_heads[domain](normalized), dim=-1)
        teacher_cosine = self.teacher_classifiers[domain](teacher)
        teacher_out = self.classification_loss(teacher_cosine, labels)
        losses["loss_teacher"] = teacher_out["loss"]
        losses["accuracy_teacher"] = teacher_out["accuracy"]
        if self.config.use_distillation:
            if self.config.distillation_reaches_backbone:
                distilled = student
            else:
                # Paper reading: the distillation losses see the backbone feature as a constant, so they only
                # train the student head and classifier.
                distilled = F.normalize(self.student_head(normalized.detach()), dim=-1)
            student_cosine = self._student_logits(distilled, domain)
            losses["loss_logit"] = self.logit_loss(student_cosine, teacher_cosine)["loss"]
            losses["loss_relational"] = self.relational_loss(distilled, teacher)["loss"]
        return losses, teacher

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
        """The universal embedder: backbone + student head; teacher heads and classifiers are dropped."""
        return self._export(self.student_head, self.config.embed_dim)

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
