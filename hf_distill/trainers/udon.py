"""``UdonTrainer``: UDON's online distillation with dynamic domain sampling on the ``Trainer`` (SPEC §1)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hf_distill.losses import UdonLoss
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.registry import MethodCard, MethodSpec, register_method
from hf_distill.sampling import DomainBatchSampler, group_indices_by_domain
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.base import DistillationTrainer
from hf_distill.trainers.callbacks import DOMAIN_LOSS_PREFIX, SAMPLING_PREFIX, SamplingCurvesCallback

logger = logging.getLogger(__name__)

HEADS, BACKBONE = "heads", "backbone"


class UdonTrainer(DistillationTrainer):
    """Trains a ``UdonModel`` (or a baseline variant) with a :class:`~hf_distill.losses.UdonLoss` from
    single-domain batches.

    - heads and classifiers use ``learning_rate``; the backbone uses ``backbone_learning_rate`` and is frozen
      (learning rate 0) for the first ``backbone_frozen_epochs`` epochs;
    - batches come from :class:`~hf_distill.sampling.DomainBatchSampler`; with the dynamic strategy every
      batch's teacher classification loss (student loss for the baselines without teachers), averaged over
      processes, steers the next sampling window;
    - the per-domain losses (``domain_loss/<domain>``) and sampling probabilities (``sampling_p/<domain>``)
      are logged, and plotted to ``sampling_curves.png`` at the end.

    Args:
        model: a ``UdonModel``.
        args: :class:`~hf_distill.trainers.arguments.UdonTrainingArguments`.
        loss: a :class:`~hf_distill.losses.UdonLoss` (default: UDON's, or the baselines' without distillation
            for a model without teacher heads).
        train_dataset: rows with ``pixel_values``, ``labels`` and ``domain_ids`` (see
            ``hf_distill.data.with_pixel_values``).
        evaluator: e.g. ``RetrievalEvaluator(benchmark, split="val")``; select checkpoints with
            ``metric_for_best_model="merged/mean/R@1"``.
        domain_names: domain names in ``domain_ids`` order (default: ``model.config.domains``).
        train_domain_ids: the domain id of every training row; read from the dataset's ``domain`` column
            (without decoding images) when omitted.
        **kwargs: passed to :class:`~hf_distill.trainers.base.DistillationTrainer`.
    """

    method = "udon"

    def __init__(
        self,
        model: nn.Module,
        args: UdonTrainingArguments,
        train_dataset: Any = None,
        evaluator: Any = None,
        domain_names: Sequence[str] | None = None,
        train_domain_ids: Sequence[int] | None = None,
        loss: UdonLoss | None = None,
        **kwargs: Any,
    ) -> None:
        if loss is None:
            loss = UdonLoss(use_distillation=bool(model.config.use_teacher))
        loss.check_model(model)
        domain_names = list(domain_names if domain_names is not None else model.config.domains)
        if domain_names != list(model.config.domains):
            raise ValueError(
                f"domain_names {domain_names} differ from the model's domains {model.config.domains}"
            )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            loss=loss,
            evaluator=evaluator,
            domain_names=domain_names,
            **kwargs,
        )
        self.sampling_strategy = args.sampling_strategy or (
            "dynamic" if model.config.use_teacher else "round_robin"
        )
        self._train_domain_ids = list(train_domain_ids) if train_domain_ids is not None else None
        self._frozen_steps = 0
        # Domain id of every batch this process trained on (checks that all processes agree).
        self.domain_trace: list[int] = []
        if args.plot_sampling_curves:
            self.add_callback(SamplingCurvesCallback())

    # ------------------------------------------------------------------------------------- sampling

    def _domain_ids_of_train_dataset(self) -> list[int]:
        if self._train_domain_ids is not None:
            return self._train_domain_ids
        # Without the image-decoding transform, and as one batch: iterating a column row by row is slow.
        raw = self.train_dataset.with_format(None)
        if "domain_ids" in raw.column_names:
            return list(raw.select_columns(["domain_ids"])[:]["domain_ids"])
        if "domain" not in raw.column_names:
            raise ValueError("the training dataset needs a 'domain' column (or pass train_domain_ids)")
        lookup = {name: i for i, name in enumerate(self.domain_names)}
        names = raw.select_columns(["domain"])[:]["domain"]
        unknown = sorted(set(names) - set(lookup))
        if unknown:
            raise ValueError(
                f"training rows of domains {unknown} that the model does not have ({self.domain_names})"
            )
        return [lookup[name] for name in names]

    def get_train_batch_sampler(self) -> DomainBatchSampler:
        """Single-domain batches; every process draws the same domain sequence and takes its slice."""
        groups = group_indices_by_domain(self._domain_ids_of_train_dataset(), self.domain_names)
        return DomainBatchSampler(
            groups,
            batch_size=self.args.per_device_train_batch_size,
            strategy=self.sampling_strategy,
            seed=self.args.seed,
            num_replicas=self.accelerator.num_processes,
            rank=self.accelerator.process_index,
            update_every=self.args.sampling_update_every,
            probability_temperature=self.args.sampling_temperature,
            probability_floor=self.args.sampling_floor,
            unseen_rule=self.args.sampling_unseen_rule,
            loss_window=self.args.sampling_loss_window,
            summary_every=self.args.sampling_summary_every,
        )

    # --------------------------------------------------------------------------------------- losses

    def compute_losses(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward the batch and add per-domain loss and sampling probabilities while training.

        Args:
            model: the (wrapped) ``UdonModel``.
            inputs: ``pixel_values``, ``labels`` and ``domain_ids`` of a single-domain batch.
        """
        if model.training:
            frozen = self.state.global_step < self._frozen_steps
            self.accelerator.unwrap_model(model).backbone_frozen = frozen
        losses = self.loss(model, inputs)
        sampler = self._train_batch_sampler
        if model.training and sampler is not None:
            signal = losses.get("loss_teacher", losses["loss_student"]).detach()
            if self.accelerator.num_processes > 1:
                # Every process must see the same value: it decides the next window's domains.
                signal = self.accelerator.reduce(signal.clone(), reduction="mean")
            domain_id = int(inputs["domain_ids"][0])
            sampler.record_loss(domain_id, float(signal))
            self.domain_trace.append(domain_id)
            losses[f"{DOMAIN_LOSS_PREFIX}{self.domain_names[domain_id]}"] = signal
            for name, probability in sampler.current_probabilities().items():
                losses[f"{SAMPLING_PREFIX}{name}"] = torch.tensor(probability)
        return losses

    # ------------------------------------------------------------------------ optimiser / schedule

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW-style optimiser with separate head and backbone learning rates (no decay on biases/norms)."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            # Names may carry a wrapper prefix (e.g. "module."), hence the substring test.
            part = BACKBONE if name.startswith("backbone.") or ".backbone." in name else HEADS
            groups.setdefault((part, name in decay), []).append(parameter)
        learning_rates = {HEADS: self.args.learning_rate, BACKBONE: self.args.backbone_learning_rate}
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decays else 0.0,
                "lr": learning_rates[part],
                "udon_group": part,
            }
            # Heads first: the Trainer logs the first group's learning rate.
            for (part, decays), params in sorted(
                groups.items(), key=lambda item: (item[0][0] != HEADS, item[0][1])
            )
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def frozen_backbone_steps(self) -> int:
        """Optimizer steps during which the backbone's learning rate is 0."""
        if self.args.backbone_frozen_epochs == 0:
            return 0
        batches = len(self._train_batch_sampler) if self._train_batch_sampler is not None else None
        if batches is None:
            batches = len(self.get_train_dataloader())
        updates_per_epoch = max(math.ceil(batches / self.args.gradient_accumulation_steps), 1)
        return math.ceil(self.args.backbone_frozen_epochs * updates_per_epoch)

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The configured schedule, with the backbone groups held at 0 for the frozen epochs."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        frozen = self._frozen_steps = self.frozen_backbone_steps()
        if frozen == 0:
            return scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                f"backbone_frozen_epochs needs a LambdaLR-based lr_scheduler_type, got '{self.args.lr_scheduler_type}'"
            )
        for index, group in enumerate(scheduler.optimizer.param_groups):
            if group.get("udon_group") == BACKBONE:
                base = scheduler.lr_lambdas[index]
                scheduler.lr_lambdas[index] = _frozen_then(base, frozen)
                group["lr"] = group["initial_lr"] * scheduler.lr_lambdas[index](scheduler.last_epoch)
        logger.info("backbone frozen for the first %d optimizer steps", frozen)
        return scheduler


def _frozen_then(schedule: Any, steps: int) -> Any:
    """Learning-rate multiplier: 0 for the first ``steps`` steps, then ``schedule``.

    A plain function on purpose: ``LambdaLR.state_dict`` skips functions but pickles the attributes of other
    callables, which would make the checkpoint unloadable with ``weights_only=True``.
    """

    def multiplier(step: int) -> float:
        return 0.0 if step < steps else schedule(step)

    return multiplier


UDON_CARD = MethodCard(
    title="UDON — Universal Dynamic Online distillatioN (Ypsilantis et al., NeurIPS 2024)",
    summary=(
        "Trained with UDON: one shared backbone, per-domain teacher heads trained online, and a universal "
        "student head distilled from them (logit and relational distillation), with dynamic domain sampling."
    ),
    citation="""@inproceedings{ypsilantis2024udon,
  title     = {{UDON}: Universal Dynamic Online distillatioN for generic image representations},
  author    = {Ypsilantis, Nikolaos-Antonios and Chen, Kaifeng and Araujo, Andr{\\'e} and Chum, Ond{\\v{r}}ej},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024}
}""",
)

register_method(
    MethodSpec(
        name="udon",
        config_class=UdonConfig,
        model_class=UdonModel,
        loss_class=UdonLoss,
        training_arguments_class=UdonTrainingArguments,
        trainer_class=UdonTrainer,
        card=UDON_CARD,
    )
)
