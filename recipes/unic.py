"""Distil several frozen teachers into one ViT student with UNIC, evaluate, export and optionally push.

    accelerate launch recipes/unic.py --config recipes/configs/unic_offline.yaml [--key value ...]

Any field of ``UnicRecipeArguments`` or ``UnicTrainingArguments`` can be set in the YAML file or overridden
on the command line. Relaunching the same command after an interruption resumes from the last checkpoint in
``output_dir``. With ``use_feature_cache`` the teachers run once over ``cache_views`` augmented views of every
training image (``datasets.map`` to Arrow under ``cache_dir``) and the epochs run only the student; without it
the teachers run at every step on freshly augmented views. With ``trainable_from`` (a pretrained student, e.g.
``student_offline_weights: efficientnet_lite0``) the student's frozen lower blocks also run once, over the same
cached views (``UnicRecipe.cache_student_trunk``), and the epochs run only its top and ladders. The shared steps
are :class:`hf_distill.recipe.Recipe`'s.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
from torchvision.transforms import v2

from hf_distill.data import ImageTransform, subset_benchmark
from hf_distill.evaluation import KNNClassificationEvaluator
from hf_distill.losses import UnicLoss
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel
from hf_distill.recipe import Recipe, RecipeArguments
from hf_distill.teachers import TeacherSpec, load_teachers
from hf_distill.teachers.offline import resolve_offline_weights
from hf_distill.trainers.unic import (
    OnlineImageDataset,
    UnicTrainer,
    cached_training_set,
    teacher_shapes,
    unic_train_transform,
)

logger = logging.getLogger("recipes.unic")


@dataclass
class UnicRecipeArguments(RecipeArguments):
    """Teachers, student, loss and evaluation of a UNIC run (data and export: :class:`RecipeArguments`).

    Args:
        teachers: teacher specs — a string (timm name, Hub id, offline name, path) or, in YAML, a mapping of
            ``TeacherSpec`` fields (``model``, ``name``, ``architecture``, ``image_size``, ``model_kwargs``).
        teacher_image_size: input size of every teacher whose spec sets none.
        train_dataset: distil on this ``datasets`` source instead of the benchmark's ``train`` splits (a Hub id or
            a local ``imagefolder`` directory, split ``train_split``); the benchmark then serves for evaluation.
        train_split: split of ``train_dataset``.
        student_backbone / student_kwargs: the timm student and its ``create_model`` arguments: a ViT (the
            paper) or an EfficientNet-family CNN (``tf_efficientnet_lite0``, ``mobilenetv2_100`` …), whose ladder
            taps its stages (``UnicStudentModel``).
        student_pretrained_file: start the student from these backbone weights (safetensors) instead of from
            scratch (the paper's setting).
        student_offline_weights: start the student from offline ImageNet weights (``efficientnet_lite0`` …,
            ``hf_distill.teachers.offline``): they set the architecture (replacing ``student_backbone``), the
            weights and, where ``image_mean`` / ``image_std`` are unset, the normalisation.
        drop_path_rate: stochastic depth of the student.
        ladder_blocks: student blocks (CNN: stages) feeding the projector ladders (default: all that train; with
            ``trainable_from`` a block inside the frozen trunk is refused).
        projector_init / last_rung_input / last_projector_hidden_ratio: see ``UnicStudentConfig`` (the authors'
            code by default; a CNN's 1280-wide head makes a 4x last projector large: 1 keeps it cheap).
        image_size: student input size; ``train_scale_min`` / ``color_jitter``: view augmentation.
        image_mean / image_std: student input normalisation (default ImageNet).
        use_feature_cache: precompute teacher targets once (see the module docstring).
        cache_views / cache_seed / cache_dtype / cache_dir: the cache's views per image, view seed, storage
            dtype and directory (default ``$HF_DISTILL_CACHE/unic_features/<spec fingerprint>``).
        knn_k: neighbours of the final k-NN probe (UNIC: 20).
        knn_max_index_per_domain: cap the k-NN index (the ``train`` split) at this many images per domain, a
            subset fixed by seed 0 so that every model is probed on the same index (quick sweeps).
        drop_prob / token_reduction / smooth_l1_beta: the loss (``UnicLoss``).
    """

    teachers: list[str] = field(default_factory=lambda: ["efficientnet_lite0", "mobilenet_v2"])
    teacher_image_size: int | None = None
    train_dataset: str | None = None
    train_split: str = "train"
    student_backbone: str = "vit_tiny_patch16_224"
    student_kwargs: dict | None = field(default=None)
    student_pretrained_file: str | None = None
    student_offline_weights: str | None = None
    drop_path_rate: float = 0.0
    ladder_blocks: list[int] | None = None
    projector_init: str = "trunc_normal"
    last_rung_input: str = "raw"
    last_projector_hidden_ratio: float = 4.0
    image_size: int = 32
    train_scale_min: float = 0.35
    color_jitter: float = 0.0
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    use_feature_cache: bool = True
    cache_views: int = 1
    cache_seed: int = 0
    cache_dtype: str = "float16"
    cache_dir: str | None = None
    knn_k: int = 20
    knn_max_index_per_domain: int | None = None
    drop_prob: float = 0.5
    token_reduction: str = "mean"
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student_offline_weights is not None and self.student_pretrained_file is not None:
            raise ValueError("give student_offline_weights or student_pretrained_file, not both")
        if self.trainable_from is not None:
            if not self.use_feature_cache:
                raise ValueError(
                    "trainable_from needs use_feature_cache: true (the student's trunk maps and the teachers' "
                    "targets are cached over the same views)"
                )
            if self.train_dataset is not None:
                raise ValueError("trainable_from caches the benchmark's training splits; unset train_dataset")
            if self.trunk_views not in (1, self.cache_views):
                raise ValueError(
                    f"trunk_views={self.trunk_views}: UNIC caches the student's trunk over the teacher cache's "
                    f"views, set cache_views (now {self.cache_views}) instead"
                )

    def teacher_specs(self) -> list[TeacherSpec]:
        """The teachers as specs, with ``teacher_image_size`` filled in where unset."""
        specs = []
        for value in self.teachers:
            spec = TeacherSpec.from_value(value)
            if spec.image_size is None and self.teacher_image_size is not None:
                spec.image_size = self.teacher_image_size
            specs.append(spec)
        return specs


class UnicRecipe(Recipe):
    """UNIC on the recipe skeleton: frozen teachers, the student, its feature cache and the trainer."""

    method = "unic"
    arguments_class = UnicRecipeArguments
    supports_cached_trunk = True

    def load_data(self) -> Any:
        """The benchmark; ``None`` when the student trains on ``train_dataset`` and no benchmark is named."""
        if self.recipe.train_dataset is not None and self.recipe.benchmark is None:
            return None
        return super().load_data()

    def training_images(self) -> datasets.Dataset:
        """The images the student is distilled on (column ``image`` only)."""
        recipe = self.recipe
        if recipe.train_dataset is None:
            parts = [self.train_split(name).select_columns(["image"]) for name in self.benchmark.domains]
            return datasets.concatenate_datasets(parts)
        if os.path.isdir(recipe.train_dataset):
            dataset = datasets.load_dataset(
                "imagefolder", data_dir=recipe.train_dataset, split=recipe.train_split
            )
        else:
            dataset = datasets.load_dataset(recipe.train_dataset, split=recipe.train_split)
        return dataset.select_columns(["image"])

    def student_config(self) -> UnicStudentConfig:
        """The student's configuration (``self.teachers`` fix its ladders' shapes)."""
        recipe = self.recipe
        backbone, pretrained_file = recipe.student_backbone, recipe.student_pretrained_file
        mean, std = recipe.image_mean, recipe.image_std
        if recipe.student_offline_weights is not None:
            weights = resolve_offline_weights(recipe.student_offline_weights)
            backbone, pretrained_file = weights.architecture, str(weights.path)
            mean, std = mean or list(weights.mean), std or list(weights.std)
        return UnicStudentConfig(
            backbone=backbone,
            backbone_kwargs=recipe.student_kwargs,
            pretrained_file=pretrained_file,
            drop_path_rate=recipe.drop_path_rate,
            teachers=teacher_shapes(self.teachers),
            ladder_blocks=recipe.ladder_blocks,
            trainable_from=recipe.trainable_from,
            projector_init=recipe.projector_init,
            last_rung_input=recipe.last_rung_input,
            last_projector_hidden_ratio=recipe.last_projector_hidden_ratio,
            image_size=recipe.image_size,
            image_mean=mean,
            image_std=std,
        )

    def build(self) -> None:
        recipe, args = self.recipe, self.args
        self.teachers = load_teachers(recipe.teacher_specs())
        self.model = UnicStudentModel(self.student_config())
        train_dataset, online_teachers = self.build_train_dataset(self.training_images())
        loss = UnicLoss(
            list(self.model.config.teachers), recipe.drop_prob, recipe.token_reduction, recipe.smooth_l1_beta
        )
        self.trainer = UnicTrainer(
            model=self.model,
            args=args,
            train_dataset=train_dataset,
            teachers=online_teachers,
            loss=loss,
            evaluator=self.validation_evaluator(),
            domain_names=list(self.benchmark.domains) if self.benchmark is not None else None,
        )

    def build_train_dataset(self, images: datasets.Dataset) -> tuple[Any, Any]:
        """``(dataset, online_teachers)``: cached views with their targets (no online teachers), or images."""
        recipe = self.recipe
        transform = unic_train_transform(recipe.image_size, recipe.train_scale_min, recipe.color_jitter)
        if not recipe.use_feature_cache:
            return OnlineImageDataset(images, transform), self.teachers
        source = {
            "benchmark": str(self.benchmark.path) if recipe.train_dataset is None else None,
            "train_dataset": recipe.train_dataset,
            "domains": list(self.benchmark.domains) if self.benchmark is not None else None,
            "max_train_per_domain": recipe.max_train_per_domain,
            "subset_seed": recipe.subset_seed if recipe.max_train_per_domain is not None else None,
        }
        # The main process builds the caches; the others wait, then open the same files.
        with self.args.main_process_first(desc="UNIC feature cache"):
            trunk = None
            if recipe.trainable_from is not None:
                trunk = self.cache_student_trunk(transform)
            dataset = cached_training_set(
                self.teachers, images, transform, source, recipe.cache_views, recipe.cache_seed,
                recipe.cache_dtype, recipe.cache_dir, batch_size=recipe.eval_batch_size, trunk=trunk,
            )  # fmt: skip
        return dataset, None

    def cache_student_trunk(self, transform: Any) -> Any:
        """Cache the student's frozen trunk (``trainable_from``) over the teacher cache's very views.

        The training views are the teacher cache's: its view transform (then the student's normalisation, which
        draws nothing), ``cache_views`` views seeded by ``cache_seed`` and each image's index in the concatenated
        training images. Evaluation splits get one evaluation-transform view (``Recipe.evaluation_benchmark``);
        the k-NN probe runs the exported embedder on pixels.

        Args:
            transform: the teacher cache's view transform (image → ``[0, 1]`` tensor).
        """
        config = self.model.config
        return self.cache_trunk(
            self.model.backbone,
            config.backbone,
            v2.Compose([transform, v2.Normalize(list(config.image_mean), list(config.image_std))]),
            ImageTransform(
                config.image_size,
                config.image_mean,
                config.image_std,
                train=False,
                resize_size=config.resize_size,
            ),
            views=self.recipe.cache_views,
            seed=self.recipe.cache_seed,
            concatenated_view_seeds=True,
        )

    def evaluate(self, embedder) -> dict[str, float]:
        """Test retrieval (merged and separate) and the k-NN probe (train index, val queries)."""
        metrics = super().evaluate(embedder)
        if self.benchmark is None:
            return metrics
        recipe = self.recipe
        knn = KNNClassificationEvaluator(
            subset_benchmark(self.benchmark, recipe.knn_max_index_per_domain, seed=0),
            k=recipe.knn_k,
            batch_size=recipe.eval_batch_size,
        )
        metrics.update(knn(embedder, output_path=self.args.output_dir))
        logger.info("k-NN top-1 = %.4f", metrics["knn/mean/top1"])
        return metrics

    def card_data(self) -> Any:
        card = super().card_data()
        card.teachers = [spec.model for spec in self.recipe.teacher_specs()]
        card.model_name = "hf-distill-unic-" + self.model.config.backbone.replace("_", "-")
        return card

    def card_hyperparameters(self) -> dict[str, Any]:
        recipe = self.recipe
        return {
            "teachers": ", ".join(spec.model for spec in recipe.teacher_specs()),
            "drop_prob": recipe.drop_prob,
            "use_feature_cache": recipe.use_feature_cache,
            "cache_views": recipe.cache_views if recipe.use_feature_cache else None,
            "trainable_from": recipe.trainable_from,
        }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the recipe; returns the final test metrics of the exported embedder."""
    return UnicRecipe.main(argv)


if __name__ == "__main__":
    main()
