"""UDON's loss (Ypsilantis et al., "UDON: Universal Dynamic Online distillatioN for generic image
representations", NeurIPS 2024; SPEC §1), and the UnED baselines' (no teacher, no distillation).

For a single-domain batch of domain ``d`` with teacher cosine logits ``c_t`` and student cosine logits ``c_s``:

- ``L_t = CE(s·c_t, y)`` and ``L_s = CE(s·c_s, y)`` (cosine classifiers, scale ``s = 16``, NormFace by default);
- ``L_log = KL(softmax(c_t/τ) ‖ softmax(c_s/τ))`` with τ = 0.1, teacher detached (Eq. 4 of the paper);
- ``L_rel = MSE(S_s, S_t)`` of the batch similarity matrices, teacher detached (Eq. 5);
- the total is the weighted mean of the active losses.

With ``UdonConfig.matryoshka_dims`` (e.g. ``[64, 32, 16]``) ``L_s``, ``L_log`` and ``L_rel`` are each the weighted
mean over the widths of the same loss on the L2-normalised prefix of the student embedding (and the prefix of
the student classifier's weights; :mod:`hf_distill.losses.matryoshka`); the teacher loss is unchanged.

The paper's naive multi-teacher baseline distils *frozen* specialists instead of the online teacher heads:
``UdonLoss(external_teachers={domain: teacher})`` takes ``c_t`` and the teacher embeddings from those modules
(e.g. :class:`UdonSpecialistTeacher`, one single-domain model trained per domain) and trains a student without
teacher heads with ``L_s``, ``L_log`` and ``L_rel`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn

from hf_distill.losses.classification import MARGIN_TYPES, CosineClassificationLoss
from hf_distill.losses.logit import LogitDistillationLoss
from hf_distill.losses.matryoshka import MatryoshkaWidths, prefix_cosine_logits, prefix_embeddings
from hf_distill.losses.relational import RELATIONAL_SCALES, RelationalDistillationLoss


class UdonLoss(nn.Module):
    """Classification and distillation losses of a :class:`~hf_distill.models.udon.UdonModel` batch.

        Args:
            classifier_scale / classifier_margin / margin_type: cosine-classifier loss (``s = 16``, margin 0 —
                NormFace; ``"cosface"`` and ``"arcface"`` margins optional).
            temperature: τ of the logit distillation on cosine logits (0.1).
            teacher_weight / student_weight / logit_weight / relational_weight: weights of the weighted mean.
            use_distillation: add the logit and relational losses (needs a model with teacher heads).
            distillation_reaches_backbone: ``False`` (default, the paper): the distillation losses see the backbone
                feature as a constant and only train the student head and classifier; ``True`` (the released
                code): their gradient also reaches the backbone.
            relational_scale / relational_reference_rows: see
                :func:`~hf_distill.losses.relational.relational_distillation_loss` (``"fixed"`` by default;
                ``"authors"`` for the released code's scale).
            external_teachers: frozen teachers replacing the online teacher heads (the paper's naive
                multi-teacher baseline): domain name → a module mapping the batch's ``pixel_values`` to
                ``(teacher embeddings, teacher cosine logits over the domain's classes)``, e.g.
                :class:`UdonSpecialistTeacher`. They run without gradient and in eval mode, on the device they were
                put on; the student must have no teacher heads (``use_teacher=False``).
            matryoshka_weights: weights of the model's ``matryoshka_dims`` widths (default: equal).

        Calling it as ``loss(model, inputs)`` with ``pixel_values``, ``labels`` and ``domain_ids`` returns ``"loss"``
        and the named components ``loss_teacher``, ``loss_student``, ``loss_logit``, ``loss_relational``,
        ``accuracy_teacher`` and ``accuracy_student`` (those that apply to the model); with several Matryoshka widths
    also each student component at each width, as ``loss_student@32`` etc.
    """

    def __init__(
        self,
        classifier_scale: float = 16.0,
        classifier_margin: float = 0.0,
        margin_type: str = "none",
        temperature: float = 0.1,
        teacher_weight: float = 1.0,
        student_weight: float = 1.0,
        logit_weight: float = 1.0,
        relational_weight: float = 1.0,
        use_distillation: bool = True,
        distillation_reaches_backbone: bool = False,
        relational_scale: str = "fixed",
        relational_reference_rows: int = 32,
        external_teachers: Mapping[str, nn.Module] | None = None,
        matryoshka_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if relational_scale not in RELATIONAL_SCALES:
            raise ValueError(f"relational_scale must be one of {RELATIONAL_SCALES}, got {relational_scale!r}")
        self.classification = CosineClassificationLoss(classifier_scale, classifier_margin, margin_type)
        self.logit = LogitDistillationLoss(temperature)
        self.relational = RelationalDistillationLoss(
            scale=relational_scale, reference_rows=relational_reference_rows
        )
        self.weights = {
            "loss_teacher": teacher_weight,
            "loss_student": student_weight,
            "loss_logit": logit_weight,
            "loss_relational": relational_weight,
        }
        self.use_distillation = use_distillation
        self.matryoshka_weights = (
            None if matryoshka_weights is None else [float(w) for w in matryoshka_weights]
        )
        self.distillation_reaches_backbone = distillation_reaches_backbone
        self.external_teachers: nn.ModuleDict | None = None
        if external_teachers is not None:
            if not use_distillation:
                raise ValueError(
                    "external_teachers are only used for distillation: set use_distillation=True"
                )
            if not external_teachers:
                raise ValueError("external_teachers is empty: give one frozen teacher per domain")
            self.external_teachers = nn.ModuleDict(dict(external_teachers))
            self.external_teachers.requires_grad_(False).eval()

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model this loss cannot train (distillation without teacher heads)."""
        config = extract_model_from_parallel(model).config
        self._widths(config)
        if self.external_teachers is not None:
            if config.use_teacher:
                raise ValueError(
                    "UdonLoss(external_teachers=...) replaces the online teacher heads: build the student with "
                    "use_teacher=False"
                )
            missing = [name for name in config.domains if name not in self.external_teachers]
            if missing:
                raise ValueError(
                    f"external_teachers has no teacher for domains {missing}; it has "
                    f"{sorted(self.external_teachers)}"
                )
        elif self.use_distillation and not config.use_teacher:
            raise ValueError(
                "UdonLoss(use_distillation=True) needs a UdonModel with teacher heads (use_teacher=True); "
                "the UnED baselines train with use_distillation=False"
            )

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Args:
        model: the (possibly wrapped) ``UdonModel``.
        inputs: ``pixel_values``, ``labels`` (local to the batch's domain) and ``domain_ids``.
        """
        labels = inputs["labels"].long()
        config = extract_model_from_parallel(model).config
        use_teacher = bool(config.use_teacher)
        external = self.external_teachers is not None
        distil = self.use_distillation and (use_teacher or external)
        output = model(
            pixel_values=inputs["pixel_values"],
            domain_ids=inputs["domain_ids"],
            output_heads=True,
            detach_student_input=distil and not self.distillation_reaches_backbone,
        )
        domain = int(inputs["domain_ids"][0])
        num_classes = output.student_logits.shape[1]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"labels of domain '{config.domains[domain]}' must lie in [0, {num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        losses: dict[str, torch.Tensor] = {}
        if use_teacher:
            teacher = self.classification(output.teacher_logits, labels)
            losses["loss_teacher"], losses["accuracy_teacher"] = teacher["loss"], teacher["accuracy"]
        targets = None
        if distil:
            if external:
                targets = self._external_targets(config.domains[domain], inputs["pixel_values"], num_classes)
            else:
                targets = (output.teacher_embeddings, output.teacher_logits)
        widths = self._widths(config)
        unwrapped = extract_model_from_parallel(model)

        def student_losses(dim: int) -> dict[str, torch.Tensor]:
            return self._student_losses(unwrapped, output, labels, domain, dim, targets)

        losses.update(widths.combine(student_losses) if widths.nested else student_losses(config.embed_dim))
        active = {name: weight for name, weight in self.weights.items() if name in losses}
        total = sum(weight * losses[name] for name, weight in active.items()) / sum(active.values())
        return {"loss": total, **losses}

    def _widths(self, config: Any) -> MatryoshkaWidths:
        """The model's Matryoshka widths with this loss's weights (just the full width for a plain head)."""
        return MatryoshkaWidths(
            getattr(config, "matryoshka_dims", None) or [config.embed_dim],
            self.matryoshka_weights,
            config.embed_dim,
        )

    def _student_losses(
        self,
        model: nn.Module,
        output: Any,
        labels: torch.Tensor,
        domain: int,
        dim: int,
        targets: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """``L_s`` (and ``L_log``, ``L_rel`` when ``targets`` are given) on the width-``dim`` student prefix.

        At the full width these are the model's own logits; at a smaller width the cosine logits of the prefix
        against the prefix of the student classifier's weights.
        """
        full = dim == model.config.embed_dim
        joint = output.joint_logits is not None
        classifier = model.student_classifiers[0 if joint else domain].weight
        start, count = output.label_offset, output.student_logits.shape[1]
        # The domain's rows of the classifier (a joint classifier scores every domain's classes).
        domain_weight = classifier[start : start + count] if joint else classifier
        losses: dict[str, torch.Tensor] = {}
        if joint:
            # The joint classifier scores all classes of all domains; the target is the domain's offset class.
            logits = output.joint_logits if full else prefix_cosine_logits(output.embeddings, classifier, dim)
            student = self.classification(logits, labels + start)
        else:
            logits = (
                output.student_logits if full else prefix_cosine_logits(output.embeddings, classifier, dim)
            )
            student = self.classification(logits, labels)
        losses["loss_student"], losses["accuracy_student"] = student["loss"], student["accuracy"]
        if targets is not None:
            teacher_embeddings, teacher_logits = targets
            if self.distillation_reaches_backbone:
                embeddings, logits = output.embeddings, output.student_logits
            else:
                embeddings, logits = output.detached_embeddings, output.detached_logits
            if not full:
                logits = prefix_cosine_logits(embeddings, domain_weight, dim)
                embeddings = prefix_embeddings(embeddings, dim)
            losses["loss_logit"] = self.logit(logits, teacher_logits)["loss"]
            losses["loss_relational"] = self.relational(embeddings, teacher_embeddings)["loss"]
        return losses

    def _external_targets(
        self, domain: str, pixel_values: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and cosine logits of ``domain``'s frozen external teacher."""
        if domain not in self.external_teachers:
            raise ValueError(
                f"external_teachers has no teacher for domain '{domain}'; it has {sorted(self.external_teachers)}"
            )
        teacher = self.external_teachers[domain]
        if teacher.training:
            teacher.eval()
        with torch.no_grad():
            embeddings, logits = teacher(pixel_values)
        if logits.shape != (len(pixel_values), num_classes):
            raise ValueError(
                f"the external teacher of domain '{domain}' gave logits of shape {tuple(logits.shape)}; the student "
                f"has {num_classes} classes for that domain, so ({len(pixel_values)}, {num_classes}) is needed"
            )
        return embeddings, logits


class UdonSpecialistTeacher(nn.Module):
    """A frozen single-domain specialist as an external teacher of :class:`UdonLoss`.

    The specialist is a ``UdonModel`` with one domain and no teacher heads, trained alone on that domain (a
    USCRR model restricted to it); its student head (``embed_dim`` wide, e.g. UDON's teacher width 256) gives the
    teacher embedding and its classifier the teacher cosine logits.

    Args:
        model: the trained single-domain ``UdonModel``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config = model.config
        if len(config.domains) != 1 or config.use_teacher or config.joint_classifier:
            raise ValueError(
                "UdonSpecialistTeacher needs a single-domain UdonModel without teacher heads or joint classifier, "
                f"got domains={config.domains}, use_teacher={config.use_teacher}, "
                f"joint_classifier={config.joint_classifier}"
            )
        self.model = model.requires_grad_(False).eval()

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings, cosine logits)`` of the specialist for a batch of its domain."""
        domain_ids = torch.zeros(len(pixel_values), dtype=torch.long, device=pixel_values.device)
        output = self.model(pixel_values=pixel_values, domain_ids=domain_ids, output_heads=True)
        return output.embeddings, output.student_logits


__all__ = ["UdonLoss", "UdonSpecialistTeacher"]
