"""Configuration of the UNIC student (SPEC §3): a ViT or a CNN with per-teacher ladders of projectors."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from hf_distill.models.embedder.configuration_embedder import fill_preprocessing_defaults

TOKEN_TYPES = ("cls", "patch")
PROJECTOR_INITS = ("trunc_normal", "default")
LAST_RUNG_INPUTS = ("raw", "normed")


class UnicStudentConfig(PreTrainedConfig):
    """Architecture of a UNIC student and of its expendable projectors.

    Args:
        backbone: a timm ViT name (paper: ``vit_base_patch16_224``; CPU tests: ``vit_tiny_patch16_224``) or a
            timm EfficientNet-family CNN (``tf_efficientnet_lite0``, ``mobilenetv2_100`` …, usually started from
            offline ImageNet weights); the ladder then taps the CNN's stages (see ``UnicStudentModel``).
        backbone_kwargs: extra ``timm.create_model`` arguments changing the architecture (``img_size``,
            ``patch_size``, ``depth``, ``embed_dim`` …).
        pretrained_file: optional local safetensors file with backbone weights to start the student from (the
            paper trains it from scratch; a pretrained start is what practitioners do on a small budget). Not
            written to saved configs: the saved weights supersede it.
        drop_path_rate: stochastic depth of the student during training (paper: 0.1); not exported.
        teachers: teacher name → ``{"global_dim": int, "token_dim": int, "grid": [h, w]}``, the shapes of the
            targets each ladder predicts.
        ladder_blocks: indices of the student blocks (CNN: stages) that feed the ladders (negative values count
            from the end); ``None`` = every block that trains (paper default: every block). The last block is
            always part of the ladder.
        trainable_from: train over a cached trunk (``hf_distill.layers.trunk``): the blocks (CNN: stages) before
            this index are frozen and the model's input is their output (cached once), not pixels. The ladder
            cannot tap a frozen block — its output is not in the cache, or is the cache itself and never changes —
            so ``ladder_blocks`` naming one is refused. ``None``: pixels in, the whole backbone trains.
        projector_hidden_ratio: hidden width of intermediate-block projectors, in multiples of the student
            width ``d`` (SPEC: 1).
        last_projector_hidden_ratio: hidden width of the last block's projector (SPEC: 4).
        projector_init: ``"trunc_normal"`` (default, the authors' code: weights from a truncated normal with
            std 0.02, zero biases) or ``"default"`` (PyTorch's ``nn.Linear`` initialisation). The paper does not
            say.
        last_rung_input: what the last block's projector reads. ``"raw"`` (default, the authors' code): the raw
            output of the last block, so the final norm is never trained by the distillation; ``"normed"``: the
            output after the final norm, the tensor the exported embedder returns. For a CNN student the same
            choice reads the last stage's raw output or the head's map (``conv_head`` → ``bn2``), whose average
            is the embedding; ``"raw"`` leaves the head at its pretrained weights.
        image_size: side of the student's square input.
        resize_size: shorter-side resize before the centre crop at evaluation (``None``: ``image_size``).
        image_mean / image_std: normalisation of the student's input.
        resample: resize filter of the evaluation preprocessing (bilinear, as `ImageTransform` and the evaluator).
    """

    model_type = "hf_distill_unic"

    backbone: str = "vit_tiny_patch16_224"
    backbone_kwargs: dict | None = None
    pretrained_file: str | None = None
    drop_path_rate: float = 0.0
    teachers: dict | None = None
    ladder_blocks: list[int] | None = None
    trainable_from: int | None = None
    projector_hidden_ratio: float = 1.0
    last_projector_hidden_ratio: float = 4.0
    projector_init: str = "trunc_normal"
    last_rung_input: str = "raw"
    image_size: int = 224
    resize_size: int | None = None
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    resample: str = "bilinear"

    def __post_init__(self, **kwargs: Any) -> None:
        self.backbone_kwargs = dict(self.backbone_kwargs or {})
        self.teachers = {name: dict(shape) for name, shape in (self.teachers or {}).items()}
        for name, shape in self.teachers.items():
            missing = {"global_dim", "token_dim", "grid"} - set(shape)
            if missing:
                raise ValueError(f"UnicStudentConfig.teachers[{name!r}] lacks {sorted(missing)}")
            shape["grid"] = [int(v) for v in shape["grid"]]
        if self.projector_init not in PROJECTOR_INITS:
            raise ValueError(f"projector_init must be one of {PROJECTOR_INITS}, got {self.projector_init!r}")
        if self.last_rung_input not in LAST_RUNG_INPUTS:
            raise ValueError(
                f"last_rung_input must be one of {LAST_RUNG_INPUTS}, got {self.last_rung_input!r}"
            )
        if self.ladder_blocks is not None:
            self.ladder_blocks = [int(block) for block in self.ladder_blocks]
        if self.trainable_from is not None and (
            isinstance(self.trainable_from, bool)
            or not isinstance(self.trainable_from, int)
            or self.trainable_from < 0
        ):
            raise ValueError(
                f"trainable_from must be a non-negative block index or None, got {self.trainable_from!r}"
            )
        fill_preprocessing_defaults(self)
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serialise the config, leaving out the machine-local ``pretrained_file``."""
        output = super().to_dict()
        output.pop("pretrained_file", None)
        return output


__all__ = ["LAST_RUNG_INPUTS", "PROJECTOR_INITS", "TOKEN_TYPES", "UnicStudentConfig"]
