"""Train a universal embedder with UDON (or one of its baselines), evaluate, export and optionally push.

    accelerate launch recipes/udon.py --config recipes/configs/udon_offline.yaml [--key value ...]

Any field of ``UdonRecipeArguments`` or ``UdonTrainingArguments`` can be set in the YAML file or overridden
on the command line. Relaunching the same command after an interruption resumes from the last checkpoint in
``output_dir``. The steps shared by every recipe (parse, data, training with resume, test evaluation against
the starting point, export, push) are :class:`hf_distill.recipe.Recipe`'s.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from hf_distill.data import ImageTransform, with_pixel_values
from hf_distill.evaluation import RetrievalEvaluator
from hf_distill.losses import UdonLoss
from hf_distill.models.udon import UdonConfig, UdonModel, variant_settings
from hf_distill.recipe import Recipe, RecipeArguments
from hf_distill.trainers.udon import UdonTrainer


@dataclass
class UdonRecipeArguments(RecipeArguments):
    """The model and loss of a UDON run (data, evaluation and export: :class:`RecipeArguments`).

    Args:
        variant: ``udon`` (default), ``udon_no_dynamic``, ``udon_no_distillation`` or a UnED baseline
            (``uscrr``, ``ujcrr``, ``uscds``, ``ujcds``).
        backbone / backbone_source / backbone_kwargs / pooling: the backbone (see ``UdonConfig``).
        offline_weights: offline pretrained weights (``efficientnet_lite0`` …, ``hf_distill.teachers.offline``);
            set the backbone architecture, its weights and its normalisation.
        hub_pretrained: start a timm backbone from its pretrained weights on the Hub (needs a network); they are
            saved once as ``<output_dir>/pretrained_backbone.safetensors``.
        pretrained_file: local safetensors file with backbone weights.
        image_size / image_mean / image_std: input size and normalisation.
        resize_size: training resizes to this square (default ``image_size × 256 / 224``), then crops randomly.
        eval_resize_size: evaluation (and the exported processor) resizes the shorter side to this, then centre
            crops. ``None`` (default, the authors' code): ``image_size`` itself; ``resize_size`` gives the
            ImageNet habit (e.g. 256 then 224), which is not the authors'.
        embed_dim / teacher_dim: widths of the student and teacher embeddings (``UdonConfig``).
        matryoshka_dims / matryoshka_weights: Matryoshka widths of the student head, largest (``embed_dim``)
            first, e.g. ``[64, 32, 16]`` (``UdonConfig.matryoshka_dims``), and their loss weights (default equal,
            ``UdonLoss``); the exported embedder records the widths and the card lists R@1 at each.
        temperature / classifier_margin / margin_type / distillation_reaches_backbone / relational_scale: the
            loss (``UdonLoss``).
        evaluate_teachers: also evaluate each domain's teacher head on its own domain (separate/oracle).
        write_domain_trace: write ``domain_trace_rank<r>.json``, the domain of every batch each process trained
            on in this launch (to check that processes agree).
    """

    variant: str = "udon"
    backbone: str = "vit_tiny_patch16_224"
    backbone_source: str = "timm"
    backbone_kwargs: dict | None = field(default=None)
    pooling: str = "default"
    offline_weights: str | None = None
    hub_pretrained: bool = False
    pretrained_file: str | None = None
    image_size: int = 32
    resize_size: int | None = None
    eval_resize_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    embed_dim: int = 64
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    teacher_dim: int = 256
    temperature: float = 0.1
    classifier_margin: float = 0.0
    margin_type: str = "none"
    distillation_reaches_backbone: bool = False
    relational_scale: str = "fixed"
    evaluate_teachers: bool = False
    write_domain_trace: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        variant_settings(self.variant)  # an unknown variant fails here, before anything loads


def fetch_hub_backbone(name: str, kwargs: dict | None, output_dir: str) -> str:
    """Download a timm backbone's pretrained weights once (main process first) and save them as safetensors."""
    import timm
    from accelerate import PartialState
    from safetensors.torch import save_file

    path = os.path.join(output_dir, "pretrained_backbone.safetensors")
    with PartialState().main_process_first():
        if not os.path.isfile(path):
            model = timm.create_model(name, pretrained=True, num_classes=0, **(kwargs or {}))
            os.makedirs(output_dir, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


class UdonRecipe(Recipe):
    """UDON on the recipe skeleton: the model, its loss, the augmented training set and the trainer."""

    method = "udon"
    arguments_class = UdonRecipeArguments
    supports_cached_trunk = True

    def build_model(self) -> UdonModel:
        """The ``UdonModel`` of the recipe arguments, with the benchmark's domains and classes."""
        recipe = self.recipe
        backbone, pretrained_file = recipe.backbone, recipe.pretrained_file
        mean, std = recipe.image_mean, recipe.image_std
        if recipe.offline_weights is not None:
            from hf_distill.teachers.offline import resolve_offline_weights

            weights = resolve_offline_weights(recipe.offline_weights)
            backbone, pretrained_file = weights.architecture, str(weights.path)
            mean, std = mean or list(weights.mean), std or list(weights.std)
        if recipe.hub_pretrained:
            pretrained_file = fetch_hub_backbone(backbone, recipe.backbone_kwargs, self.args.output_dir)
        domains = list(self.benchmark.domains)
        config = UdonConfig(
            backbone=backbone,
            backbone_source=recipe.backbone_source,
            backbone_kwargs=recipe.backbone_kwargs,
            pretrained_file=pretrained_file,
            pooling=recipe.pooling,
            domains=domains,
            num_classes=[self.benchmark.num_classes[name] for name in domains],
            embed_dim=recipe.embed_dim,
            matryoshka_dims=recipe.matryoshka_dims,
            teacher_dim=recipe.teacher_dim,
            image_size=recipe.image_size,
            resize_size=recipe.eval_resize_size,
            image_mean=mean,
            image_std=std,
            **variant_settings(recipe.variant).model,
        )
        return UdonModel(config)

    def build(self) -> None:
        from datasets import concatenate_datasets

        recipe, args = self.recipe, self.args
        variant = variant_settings(recipe.variant)
        if args.sampling_strategy is None:
            args.sampling_strategy = variant.strategy
        self.model = self.build_model()
        config = self.model.config
        transform = ImageTransform(
            config.image_size, config.image_mean, config.image_std, train=True, resize_size=recipe.resize_size
        )
        domain_ids = {name: i for i, name in enumerate(config.domains)}
        if recipe.trainable_from is not None:
            # Fine-tune the top over the cached maps of the frozen trunk (the trunk never runs while training).
            trunk = self.cache_trunk(
                self.model.backbone,
                config.backbone,
                transform,
                ImageTransform(
                    config.image_size,
                    config.image_mean,
                    config.image_std,
                    train=False,
                    resize_size=config.resize_size,
                ),
            )
            self.model.use_cached_trunk(recipe.trainable_from)
            train_dataset, train_domain_ids = trunk.train_dataset, trunk.train_domain_ids
        else:
            parts = [self.train_split(name) for name in config.domains]
            train_dataset = with_pixel_values(concatenate_datasets(parts), transform, domain_ids)
            train_domain_ids = None
        loss = UdonLoss(
            classifier_margin=recipe.classifier_margin,
            margin_type=recipe.margin_type,
            temperature=recipe.temperature,
            distillation_reaches_backbone=recipe.distillation_reaches_backbone,
            relational_scale=recipe.relational_scale,
            matryoshka_weights=recipe.matryoshka_weights,
            **variant.loss,
        )
        self.trainer = UdonTrainer(
            model=self.model,
            args=args,
            train_dataset=train_dataset,
            train_domain_ids=train_domain_ids,
            loss=loss,
            evaluator=self.validation_evaluator(),
        )

    def card_data(self) -> Any:
        card = super().card_data()
        if self.model.config.use_teacher:
            card.teachers = [f"online teacher head ({name})" for name in self.model.config.domains]
        else:
            card.method = "baseline"
        card.model_name = f"hf-distill-{self.recipe.variant.replace('_', '-')}"
        return card

    def card_hyperparameters(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"variant": self.recipe.variant}
        if len(self.model.config.matryoshka_dims) > 1:
            settings["matryoshka_dims"] = list(self.model.config.matryoshka_dims)
            if self.recipe.matryoshka_weights is not None:
                settings["matryoshka_weights"] = list(self.recipe.matryoshka_weights)
        return settings

    def train(self) -> None:
        super().train()
        if self.recipe.write_domain_trace:
            path = os.path.join(self.args.output_dir, f"domain_trace_rank{self.args.process_index}.json")
            with open(path, "w") as handle:
                json.dump(self.trainer.domain_trace, handle)

    def evaluate(self, embedder) -> dict[str, float]:
        metrics = super().evaluate(embedder)
        if self.recipe.evaluate_teachers and self.model.config.use_teacher:
            metrics.update(self.evaluate_teachers())
        return metrics

    def evaluate_teachers(self) -> dict[str, float]:
        """Each domain's teacher head on its own domain (the separate/oracle protocol), keyed ``oracle/...``."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        results: dict[str, float] = {}
        for name in model.config.domains:
            evaluator = RetrievalEvaluator(
                self.evaluation_benchmark,
                split="test",
                protocols=("separate",),
                domains=[name],
                batch_size=self.recipe.eval_batch_size,
            )
            for key, value in evaluator(self.for_evaluation(model.export_teacher_embedder(name))).items():
                if not key.startswith("separate/mean/"):
                    results["oracle/" + key[len("separate/") :]] = value
        return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the recipe; returns the final test metrics of the exported embedder."""
    return UdonRecipe.main(argv)


if __name__ == "__main__":
    main()
