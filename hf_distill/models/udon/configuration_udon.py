"""Configuration of UDON (SPEC §1): shared backbone, per-domain teacher heads, one universal student head.

The baselines of the UnED paper and UDON's ablations are the same model with some parts switched off; see
:data:`UDON_VARIANTS` and :func:`variant_settings`.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from hf_distill.models.embedder.configuration_embedder import fill_preprocessing_defaults

MARGIN_TYPES = ("none", "cosface", "arcface")

# variant → (model switches, default sampling strategy). USCRR/UJCRR/USCDS/UJCDS: UnED paper baselines
# (separate/joint classifier, round-robin/dataset-size sampling, no distillation).
UDON_VARIANTS: dict[str, tuple[dict[str, bool], str]] = {
    "udon": ({"use_teacher": True, "use_distillation": True, "joint_classifier": False}, "dynamic"),
    "udon_no_dynamic": (
        {"use_teacher": True, "use_distillation": True, "joint_classifier": False},
        "round_robin",
    ),
    "udon_no_distillation": (
        {"use_teacher": True, "use_distillation": False, "joint_classifier": False},
        "dynamic",
    ),
    "uscrr": ({"use_teacher": False, "use_distillation": False, "joint_classifier": False}, "round_robin"),
    "ujcrr": ({"use_teacher": False, "use_distillation": False, "joint_classifier": True}, "round_robin"),
    "uscds": ({"use_teacher": False, "use_distillation": False, "joint_classifier": False}, "size"),
    "ujcds": ({"use_teacher": False, "use_distillation": False, "joint_classifier": True}, "size"),
}


def variant_settings(variant: str) -> tuple[dict[str, bool], str]:
    """Model switches and default sampling strategy of a named UDON variant or UnED baseline.

    Args:
        variant: one of :data:`UDON_VARIANTS`.
    """
    if variant not in UDON_VARIANTS:
        raise ValueError(f"unknown UDON variant '{variant}'; choose one of {sorted(UDON_VARIANTS)}")
    switches, strategy = UDON_VARIANTS[variant]
    return dict(switches), strategy


class UdonConfig(PreTrainedConfig):
    """Architecture and losses of a UDON model.

    Args:
        backbone / backbone_source / backbone_kwargs / pretrained_file / pooling: the backbone, as in
            ``UniversalEmbedderConfig`` (built by ``create_backbone``). Paper: ViT-B/16, CLS token.
        domains: domain names, in ``domain_ids`` order.
        num_classes: number of training classes of each domain.
        embed_dim: width of the universal student embedding (64).
        teacher_dim: width of each domain's teacher embedding (256).
        use_teacher: build the per-domain teacher heads and classifiers (off for the UnED baselines).
        use_distillation: add the logit (KL) and relational losses (needs ``use_teacher``).
        joint_classifier: one student classifier over the union of all classes (UJC*) instead of one per
            domain (USC*, UDON).
        classifier_scale / classifier_margin / margin_type: cosine classifier loss, ``s = 16``, margin 0
            (NormFace) by default; ``"cosface"`` or ``"arcface"`` margins optional.
        temperature: τ of the logit distillation on cosine logits (0.1).
        teacher_loss_weight / student_loss_weight / logit_loss_weight / relational_loss_weight: weights of
            the weighted mean of the active losses (all 1).
        distillation_reaches_backbone: False (default, the paper): the distillation losses only train the
            student head and classifier; True (the released code): their gradient also reaches the backbone.
        relational_scale: ``"fixed"`` (default): the relational loss does not change with the per-process batch
            or the process count; ``"authors"`` (the released code): row sums over the per-process batch times
            ``n_processes / 4`` (see ``hf_distill.losses.relational``).
        image_size / resize_size / image_mean / image_std / resample: evaluation preprocessing.
    """

    model_type = "hf_distill_udon"

    backbone: str = "vit_tiny_patch16_224"
    backbone_source: str = "timm"
    backbone_kwargs: dict | None = None
    pretrained_file: str | None = None
    pooling: str = "default"
    domains: list[str] | None = None
    num_classes: list[int] | None = None
    embed_dim: int = 64
    teacher_dim: int = 256
    use_teacher: bool = True
    use_distillation: bool = True
    joint_classifier: bool = False
    classifier_scale: float = 16.0
    classifier_margin: float = 0.0
    margin_type: str = "none"
    temperature: float = 0.1
    teacher_loss_weight: float = 1.0
    student_loss_weight: float = 1.0
    logit_loss_weight: float = 1.0
    relational_loss_weight: float = 1.0
    distillation_reaches_backbone: bool = False
    relational_scale: str = "fixed"
    image_size: int = 224
    resize_size: int | None = None
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    resample: str = "bilinear"

    def __post_init__(self, **kwargs: Any) -> None:
        self.domains = list(self.domains or [])
        self.num_classes = [int(n) for n in (self.num_classes or [])]
        if len(self.domains) != len(self.num_classes):
            raise ValueError(
                f"UdonConfig needs one class count per domain: {len(self.domains)} domains {self.domains} but "
                f"{len(self.num_classes)} num_classes"
            )
        if any(n < 1 for n in self.num_classes):
            raise ValueError(f"every domain needs at least one class, got num_classes={self.num_classes}")
        if self.use_distillation and not self.use_teacher:
            raise ValueError(
                "use_distillation=True needs use_teacher=True (the teacher heads are what is distilled)"
            )
        if self.margin_type not in MARGIN_TYPES:
            raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got '{self.margin_type}'")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        fill_preprocessing_defaults(self)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the config, leaving out the machine-local ``pretrained_file``."""
        output = super().to_dict()
        output.pop("pretrained_file", None)
        return output


__all__ = ["UDON_VARIANTS", "UdonConfig", "variant_settings"]
