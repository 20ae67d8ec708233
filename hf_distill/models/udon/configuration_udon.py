"""Configuration of UDON (SPEC §1): shared backbone, per-domain teacher heads, one universal student head.

The baselines of the UnED paper and UDON's ablations are the same model with some parts switched off; see
:data:`UDON_VARIANTS` and :func:`variant_settings`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from transformers import PreTrainedConfig

from hf_distill.models.embedder.configuration_embedder import (
    check_matryoshka_dims,
    fill_preprocessing_defaults,
)


class UdonVariant(NamedTuple):
    """A UDON ablation or UnED baseline: model switches, loss switches and the default sampling strategy."""

    model: dict[str, bool]
    loss: dict[str, bool]
    strategy: str


_UDON = {"use_teacher": True, "joint_classifier": False}
_SEPARATE = {"use_teacher": False, "joint_classifier": False}
_JOINT = {"use_teacher": False, "joint_classifier": True}
# USCRR/UJCRR/USCDS/UJCDS: UnED paper baselines (separate/joint classifier, round-robin/dataset-size sampling,
# no distillation).
UDON_VARIANTS: dict[str, UdonVariant] = {
    "udon": UdonVariant(_UDON, {"use_distillation": True}, "dynamic"),
    "udon_no_dynamic": UdonVariant(_UDON, {"use_distillation": True}, "round_robin"),
    "udon_no_distillation": UdonVariant(_UDON, {"use_distillation": False}, "dynamic"),
    "uscrr": UdonVariant(_SEPARATE, {"use_distillation": False}, "round_robin"),
    "ujcrr": UdonVariant(_JOINT, {"use_distillation": False}, "round_robin"),
    "uscds": UdonVariant(_SEPARATE, {"use_distillation": False}, "size"),
    "ujcds": UdonVariant(_JOINT, {"use_distillation": False}, "size"),
}


def variant_settings(variant: str) -> UdonVariant:
    """Model switches, loss switches and default sampling strategy of a named UDON variant or UnED baseline.

    Args:
        variant: one of :data:`UDON_VARIANTS`.
    """
    if variant not in UDON_VARIANTS:
        raise ValueError(f"unknown UDON variant '{variant}'; choose one of {sorted(UDON_VARIANTS)}")
    model, loss, strategy = UDON_VARIANTS[variant]
    return UdonVariant(dict(model), dict(loss), strategy)


class UdonConfig(PreTrainedConfig):
    """Architecture of a UDON model (the losses and their settings: :class:`hf_distill.losses.UdonLoss`).

    Args:
        backbone / backbone_source / backbone_kwargs / pretrained_file / pooling: the backbone, as in
            ``UniversalEmbedderConfig`` (built by ``create_backbone``). Paper: ViT-B/16, CLS token.
        domains: domain names, in ``domain_ids`` order.
        num_classes: number of training classes of each domain.
        embed_dim: width of the universal student embedding (64).
        matryoshka_dims: widths the student embedding is trained at, largest (``embed_dim``) first, e.g.
            ``[64, 32, 16]``: the student's classification and distillation losses are applied to each
            L2-normalised prefix (``hf_distill.losses.matryoshka``; weights: ``UdonLoss(matryoshka_weights=...)``)
            and the exported embedder records them. ``None``: ``[embed_dim]``, the plain UDON head.
        teacher_dim: width of each domain's teacher embedding (256).
        use_teacher: build the per-domain teacher heads and classifiers (off for the UnED baselines).
        joint_classifier: one student classifier over the union of all classes (UJC*) instead of one per
            domain (USC*, UDON).
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
    matryoshka_dims: list[int] | None = None
    teacher_dim: int = 256
    use_teacher: bool = True
    joint_classifier: bool = False
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
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        self.matryoshka_dims = check_matryoshka_dims(self.matryoshka_dims or [self.embed_dim], self.embed_dim)
        fill_preprocessing_defaults(self)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the config, leaving out the machine-local ``pretrained_file``."""
        output = super().to_dict()
        output.pop("pretrained_file", None)
        return output


__all__ = ["UDON_VARIANTS", "UdonConfig", "UdonVariant", "variant_settings"]
