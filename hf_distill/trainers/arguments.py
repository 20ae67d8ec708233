"""Training arguments of every distillation trainer: one shared base plus one subclass per method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from hf_distill.layers import BACKBONE_NORM_MODES
from hf_distill.sampling import LOSS_WINDOWS, STRATEGIES, UNSEEN_RULES


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the settings every method shares.

    Args:
        backbone_norm: running statistics (BatchNorm) of the trained backbone. ``"auto"`` (default): kept fixed
            (``"frozen"``) when the backbone starts from pretrained weights, updated (``"train"``) when it starts
            from scratch. ``"frozen"`` keeps every running-statistics layer in eval mode while its affine
            parameters train — what fine-tuning a pretrained CNN on single-domain batches needs (SPEC §6);
            ``"train"`` lets them follow the training batches. A frozen backbone always runs wholly in eval mode.
            ViTs have no running statistics: the setting changes nothing for them.
        evaluate_starting_point: evaluate the untrained model with the trainer's evaluator before the first step,
            log it at step 0 and warn at the end of training if the best evaluation is below it.
        divergence_window: the divergence guard warns (step and domain, also in ``run_summary.json``) when over
            this many steps the loss did not decrease while gradient norms collapsed or exploded; 0 turns it off.
        stop_on_plateau: run to convergence: stop once ``metric_for_best_model`` (default ``merged/mean/R@1``)
            gained at most ``plateau_min_gain`` over the last ``plateau_fraction`` of the steps done
            (:class:`~hf_distill.trainers.callbacks.PlateauStoppingCallback`); ``max_steps`` / ``num_train_epochs``
            is the cap. Needs an evaluation strategy; pair it with ``load_best_model_at_end`` to keep the best
            validation checkpoint.
        plateau_fraction / plateau_min_gain / plateau_min_steps: the rule's window (share of the steps done),
            smallest gain that counts (metric units: 0.003 = 0.3 points of R@1) and earliest stopping step.
    """

    backbone_norm: str = field(
        default="auto",
        metadata={"help": f"one of {BACKBONE_NORM_MODES}: BatchNorm statistics of the backbone"},
    )
    evaluate_starting_point: bool = field(
        default=True, metadata={"help": "evaluate the untrained model at step 0 and compare at the end"}
    )
    divergence_window: int = field(
        default=100,
        metadata={
            "help": "steps per window of the divergence guard (hf_distill.trainers.divergence); 0: off"
        },
    )

    stop_on_plateau: bool = field(
        default=False, metadata={"help": "stop when the validation metric stops improving (plateau rule)"}
    )
    plateau_fraction: float = field(
        default=0.2, metadata={"help": "share of the steps done that must bring a gain (plateau rule)"}
    )
    plateau_min_gain: float = field(
        default=0.003, metadata={"help": "smallest validation gain that counts, metric units (plateau rule)"}
    )
    plateau_min_steps: int = field(default=0, metadata={"help": "never stop on a plateau before this step"})

    def __post_init__(self) -> None:
        if self.stop_on_plateau and self.metric_for_best_model is None:
            # Set before the Trainer's checks, which derive greater_is_better from it.
            self.metric_for_best_model = "merged/mean/R@1"
        super().__post_init__()
        if self.stop_on_plateau:
            if self.eval_strategy == "no":
                raise ValueError(
                    "stop_on_plateau needs evaluations: set eval_strategy ('steps' with eval_steps, or 'epoch')"
                )
            if (
                not 0.0 < self.plateau_fraction < 1.0
                or self.plateau_min_gain < 0
                or self.plateau_min_steps < 0
            ):
                raise ValueError(
                    "plateau_fraction must lie in (0, 1), plateau_min_gain and plateau_min_steps be >= 0; got "
                    f"{self.plateau_fraction}, {self.plateau_min_gain}, {self.plateau_min_steps}"
                )
        if self.divergence_window < 0:
            raise ValueError(
                f"divergence_window must be >= 0 steps (0 turns the guard off), got {self.divergence_window}"
            )
        if self.backbone_norm not in BACKBONE_NORM_MODES:
            raise ValueError(
                f"backbone_norm must be one of {BACKBONE_NORM_MODES}, got {self.backbone_norm!r}"
            )

    def __getstate__(self) -> dict[str, Any]:
        # The Trainer pickles these arguments into every checkpoint (``training_args.bin``): the live object keeps
        # ``hub_token`` for pushing, pickled copies never hold it. Prefer ``HF_TOKEN`` or ``hf auth login``.
        state = dict(self.__dict__)
        state["hub_token"] = None
        return state


@dataclass
class UdonTrainingArguments(DistillationTrainingArguments):
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
        sampling_unseen_rule: dynamic update of domains unseen in the last window: ``"authors"`` (default, the
            released code) or ``"keep_mass"`` (see ``DomainBatchSampler``).
        sampling_loss_window: losses a dynamic update averages: ``"update"`` (default, the last
            ``sampling_update_every`` batches) or ``"summary"`` (the released code: everything since the last
            logging summary, cleared every ``sampling_summary_every`` steps and after steps 1 and 2).
        sampling_summary_every: steps between those summaries; default a tenth of an epoch.
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
    sampling_unseen_rule: str = field(
        default="authors", metadata={"help": f"one of {UNSEEN_RULES}: dynamic update of unseen domains"}
    )
    sampling_loss_window: str = field(
        default="update", metadata={"help": f"one of {LOSS_WINDOWS}: losses a dynamic update averages"}
    )
    sampling_summary_every: int | None = field(
        default=None, metadata={"help": "steps between the released code's loss resets (loss_window=summary)"}
    )
    plot_sampling_curves: bool = field(default=True, metadata={"help": "plot losses/probabilities to PNG"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampling_strategy is not None and self.sampling_strategy not in STRATEGIES:
            raise ValueError(f"sampling_strategy must be one of {STRATEGIES}, got '{self.sampling_strategy}'")
        if self.sampling_unseen_rule not in UNSEEN_RULES:
            raise ValueError(
                f"sampling_unseen_rule must be one of {UNSEEN_RULES}, got {self.sampling_unseen_rule!r}"
            )
        if self.sampling_loss_window not in LOSS_WINDOWS:
            raise ValueError(
                f"sampling_loss_window must be one of {LOSS_WINDOWS}, got {self.sampling_loss_window!r}"
            )
        if self.backbone_frozen_epochs < 0:
            raise ValueError(f"backbone_frozen_epochs must be >= 0, got {self.backbone_frozen_epochs}")
        if self.backbone_frozen_epochs > 0 and self.ddp_find_unused_parameters is None:
            # The frozen backbone gets no gradient (see UdonModel.backbone_frozen); DDP must allow it.
            self.ddp_find_unused_parameters = True
        if self.backbone_learning_rate is None:
            self.backbone_learning_rate = self.learning_rate * self.backbone_lr_ratio


@dataclass
class UnicTrainingArguments(DistillationTrainingArguments):
    """``DistillationTrainingArguments`` plus UNIC's target standardisation (SPEC §3; the loss settings are
    :class:`~hf_distill.losses.UnicLoss`'s).

    Args:
        standardize_targets: standardise teacher targets with running statistics.
        momentum_start / momentum_end: cosine schedule of the statistics' momentum.
        standardize_min_std_ratio: floor of each target dimension's std, as a fraction of the mean std of its
            teacher's dimensions (0, as released; CNN teachers, whose ReLU features can be constant over a batch,
            need one: see :class:`~hf_distill.losses.standardization.FeatureStandardizer`).
    """

    standardize_targets: bool = field(default=True, metadata={"help": "standardise teacher targets"})
    momentum_start: float = field(default=1.0, metadata={"help": "standardisation momentum at step 0"})
    momentum_end: float = field(default=0.001, metadata={"help": "standardisation momentum at the last step"})
    standardize_min_std_ratio: float = field(
        default=0.0, metadata={"help": "floor of a target dim's std, as a fraction of its teacher's mean std"}
    )
    # Batches carry ``images`` and target columns the model's forward does not name.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "keep batch columns (needed by UNIC)"}
    )


@dataclass
class MlfdTrainingArguments(DistillationTrainingArguments):
    """``DistillationTrainingArguments`` for MLFD's stages (SPEC §4); the stage runner fills them per stage."""

    # Batches carry cached teacher maps the model's forward does not name.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "keep batch columns (needed by MLFD)"}
    )
