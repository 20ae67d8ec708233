"""Training arguments of the distillation trainers (``TrainingArguments`` plus method fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_distill.sampling import STRATEGIES


@dataclass
class UdonTrainingArguments(TrainingArguments):
    """``TrainingArguments`` for UDON (SPEC §1 optimisation and sampling).

    ``learning_rate`` is the heads' (and classifiers') learning rate (paper: 1e-3, constant).

    Args:
        backbone_learning_rate: learning rate of the backbone; default ``backbone_lr_ratio × learning_rate``.
        backbone_lr_ratio: backbone / head learning-rate ratio used when ``backbone_learning_rate`` is unset
            (paper: 1e-2).
        backbone_frozen_epochs: epochs during which the backbone's learning rate is 0 (paper: 2).
        sampling_strategy: ``round_robin``, ``size``, ``balanced`` or ``dynamic``; default: the variant's.
        sampling_update_every: batches per dynamic-sampling window ``U`` (released code: 1000).
        sampling_temperature / sampling_floor: optional smoothing of dynamic probabilities (off).
        plot_sampling_curves: write ``sampling_curves.png`` (per-domain losses and probabilities).
    """

    backbone_learning_rate: float | None = field(default=None, metadata={"help": "backbone learning rate"})
    backbone_lr_ratio: float = field(default=1e-2, metadata={"help": "backbone lr / head lr when unset"})
    backbone_frozen_epochs: float = field(default=2, metadata={"help": "epochs with a frozen backbone"})
    sampling_strategy: str | None = field(
        default=None, metadata={"help": f"one of {STRATEGIES}; default: the variant's strategy"}
    )
    sampling_update_every: int = field(default=1000, metadata={"help": "batches per dynamic sampling window"})
    sampling_temperature: float = field(default=1.0, metadata={"help": "dynamic probabilities ** (1/T)"})
    sampling_floor: float = field(default=0.0, metadata={"help": "minimum dynamic sampling probability"})
    plot_sampling_curves: bool = field(default=True, metadata={"help": "plot losses/probabilities to PNG"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampling_strategy is not None and self.sampling_strategy not in STRATEGIES:
            raise ValueError(f"sampling_strategy must be one of {STRATEGIES}, got '{self.sampling_strategy}'")
        if self.backbone_frozen_epochs < 0:
            raise ValueError(f"backbone_frozen_epochs must be >= 0, got {self.backbone_frozen_epochs}")
        if self.backbone_frozen_epochs > 0 and self.ddp_find_unused_parameters is None:
            # The frozen backbone gets no gradient (see UdonModel.backbone_requires_grad); DDP must allow it.
            self.ddp_find_unused_parameters = True
        if self.backbone_learning_rate is None:
            self.backbone_learning_rate = self.learning_rate * self.backbone_lr_ratio
