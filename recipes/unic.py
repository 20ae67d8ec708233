"""Distil several frozen teachers into one ViT student with UNIC, evaluate, export and optionally push.

    accelerate launch recipes/unic.py --config recipes/configs/unic_offline.yaml [--key value ...]

Any field of ``UnicRecipeArguments`` or ``UnicTrainingArguments`` can be set in the YAML file or overridden
on the command line. Relaunching the same command after an interruption resumes from the last checkpoint in
``output_dir``. With ``use_feature_cache`` the teachers run once over ``cache_views`` augmented views of every
training image (``datasets.map`` to Arrow under ``cache_dir``) and the epochs run only the student; without it
the teachers run at every step on freshly augmented views.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import finish_run, parse_recipe_args, setup_logging  # noqa: E402

from hf_distill.data import load_benchmark  # noqa: E402
from hf_distill.evaluation import KNNClassificationEvaluator, RetrievalEvaluator  # noqa: E402
from hf_distill.hub import hyperparameters_from_training_args  # noqa: E402
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel  # noqa: E402
from hf_distill.teachers import TeacherSpec, hf_distill_cache_dir, load_teachers  # noqa: E402
from hf_distill.trainers.base import last_complete_checkpoint  # noqa: E402
from hf_distill.trainers.unic import (  # noqa: E402
    CachedViewDataset,
    OnlineImageDataset,
    UnicTrainer,
    UnicTrainingArguments,
    build_unic_feature_cache,
    teacher_shapes,
    unic_cache_spec,
    unic_train_transform,
)

logger = logging.getLogger("recipes.unic")


@dataclass
class UnicRecipeArguments:
    """Teachers, student, data and evaluation of a UNIC run.

    Args:
        teachers: teacher specs — a string (timm name, Hub id, offline name, path) or, in YAML, a mapping of
            ``TeacherSpec`` fields (``model``, ``name``, ``architecture``, ``image_size``, ``model_kwargs``).
        teacher_image_size: input size of every teacher whose spec sets none.
        benchmark: offline benchmark directory (default ``$HF_DISTILL_BENCHMARK`` or ``data/offline_benchmark``);
            its ``train`` splits are the training images and it is used for evaluation.
        domains: use these domains only.
        train_dataset: train on this ``datasets`` source instead (a Hub id or a local ``imagefolder`` directory,
            split ``train_split``); the benchmark then serves only for evaluation (skipped if it is absent).
        train_split: split of ``train_dataset``.
        max_train_per_domain: keep at most this many training images per domain (a seeded subset).
        subset_seed: seed of that subset (fixed apart from the training seed, so seeds share one cache).
        student_backbone / student_kwargs: the timm ViT student and its ``create_model`` arguments.
        drop_path_rate: stochastic depth of the student.
        ladder_blocks: student blocks feeding the projector ladders (default all).
        image_size: student input size; ``train_scale_min`` / ``color_jitter``: view augmentation.
        image_mean / image_std: student input normalisation (default ImageNet).
        use_feature_cache: precompute teacher targets once (see the module docstring).
        cache_views / cache_seed / cache_dtype / cache_dir: the cache's views per image, view seed, storage
            dtype and directory (default ``$HF_DISTILL_CACHE/unic_features/<spec fingerprint>``).
        eval_batch_size: images per forward pass in evaluation.
        knn_k: neighbours of the final k-NN probe (UNIC: 20).
        knn_max_index_per_domain: cap the k-NN index (the ``train`` split) at this many images per domain, a
            subset fixed by seed 0 so that every model is probed on the same index (quick sweeps).
        export_dir: where the embedder is exported (default ``<output_dir>/embedder``).
    """

    teachers: list[str] = field(default_factory=lambda: ["efficientnet_lite0", "mobilenet_v2"])
    teacher_image_size: int | None = None
    benchmark: str | None = None
    domains: list[str] | None = None
    train_dataset: str | None = None
    train_split: str = "train"
    max_train_per_domain: int | None = None
    subset_seed: int = 0
    student_backbone: str = "vit_tiny_patch16_224"
    student_kwargs: dict | None = field(default=None)
    drop_path_rate: float = 0.0
    ladder_blocks: list[int] | None = None
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
    eval_batch_size: int = 256
    knn_k: int = 20
    knn_max_index_per_domain: int | None = None
    export_dir: str | None = None


def teacher_specs(recipe: UnicRecipeArguments) -> list[TeacherSpec]:
    """The recipe's teachers as specs, with ``teacher_image_size`` filled in where unset."""
    specs = []
    for value in recipe.teachers:
        spec = TeacherSpec.from_value(value)
        if spec.image_size is None and recipe.teacher_image_size is not None:
            spec.image_size = recipe.teacher_image_size
        specs.append(spec)
    return specs


def training_images(recipe: UnicRecipeArguments, benchmark) -> datasets.Dataset:
    """The images the student is distilled on (column ``image`` only).

    Args:
        recipe: recipe arguments.
        benchmark: the loaded benchmark, or None.
    """
    if recipe.train_dataset is not None:
        source = recipe.train_dataset
        if os.path.isdir(source):
            dataset = datasets.load_dataset("imagefolder", data_dir=source, split=recipe.train_split)
        else:
            dataset = datasets.load_dataset(source, split=recipe.train_split)
        return dataset.select_columns(["image"])
    if benchmark is None:
        raise ValueError("no training images: set benchmark (offline benchmark directory) or train_dataset")
    parts = []
    for splits in benchmark.domains.values():
        split = splits["train"]
        if recipe.max_train_per_domain is not None and len(split) > recipe.max_train_per_domain:
            split = split.shuffle(seed=recipe.subset_seed).select(range(recipe.max_train_per_domain))
        parts.append(split.select_columns(["image"]))
    return datasets.concatenate_datasets(parts)


def build_student(recipe: UnicRecipeArguments, teachers) -> UnicStudentModel:
    """A fresh student whose ladders predict the given teachers."""
    config = UnicStudentConfig(
        backbone=recipe.student_backbone,
        backbone_kwargs=recipe.student_kwargs,
        drop_path_rate=recipe.drop_path_rate,
        teachers=teacher_shapes(teachers),
        ladder_blocks=recipe.ladder_blocks,
        image_size=recipe.image_size,
        image_mean=recipe.image_mean,
        image_std=recipe.image_std,
    )
    return UnicStudentModel(config)


def build_train_dataset(
    recipe: UnicRecipeArguments, args: UnicTrainingArguments, teachers, images, benchmark
):
    """The student's training set: cached views with their targets, or images for online teachers.

    Returns:
        ``(dataset, online_teachers)``; ``online_teachers`` is None when targets come from the cache.
    """
    transform = unic_train_transform(recipe.image_size, recipe.train_scale_min, recipe.color_jitter)
    if not recipe.use_feature_cache:
        return OnlineImageDataset(images, transform), teachers
    dataset_id = json.dumps(
        {
            "benchmark": str(benchmark.path)
            if benchmark is not None and recipe.train_dataset is None
            else None,
            "train_dataset": recipe.train_dataset,
            "domains": list(benchmark.domains) if benchmark is not None else None,
            "max_train_per_domain": recipe.max_train_per_domain,
            "subset_seed": recipe.subset_seed if recipe.max_train_per_domain is not None else None,
            "fingerprint": images._fingerprint,
        },
        sort_keys=True,
    )
    spec = unic_cache_spec(teachers, transform, recipe.cache_views, dataset_id, recipe.cache_dtype)
    cache_dir = recipe.cache_dir or str(hf_distill_cache_dir() / "unic_features" / spec.fingerprint())
    # The main process builds the cache; the others wait, then open the same files.
    with args.main_process_first(desc="UNIC feature cache"):
        cache = build_unic_feature_cache(
            teachers,
            images,
            transform,
            cache_dir,
            views=recipe.cache_views,
            seed=recipe.cache_seed,
            batch_size=recipe.eval_batch_size,
            dataset_id=dataset_id,
            dtype=recipe.cache_dtype,
        )
    logger.info("training on %d cached views from %s", len(cache), cache_dir)
    return CachedViewDataset(cache, images, transform, recipe.cache_seed), None


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the recipe; returns the final test metrics of the exported embedder."""
    recipe, args = parse_recipe_args((UnicRecipeArguments, UnicTrainingArguments), argv)
    setup_logging(logging.INFO if args.should_log else logging.WARNING)
    # The Trainer would push whole training checkpoints; only the exported embedder is published, at the end.
    push, args.push_to_hub = args.push_to_hub, False
    if push and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>")
    set_seed(args.seed)

    benchmark = None
    if recipe.train_dataset is None or recipe.benchmark is not None:
        benchmark = load_benchmark(recipe.benchmark, recipe.domains)
    teachers = load_teachers(teacher_specs(recipe))
    images = training_images(recipe, benchmark)
    model = build_student(recipe, teachers)
    train_dataset, online_teachers = build_train_dataset(recipe, args, teachers, images, benchmark)
    validation = None
    if benchmark is not None and args.eval_strategy != "no":
        validation = RetrievalEvaluator(
            benchmark, split="val", protocols=("merged",), batch_size=recipe.eval_batch_size
        )
    trainer = UnicTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        teachers=online_teachers,
        evaluator=validation,
        domain_names=list(benchmark.domains) if benchmark is not None else None,
    )

    checkpoint = args.resume_from_checkpoint or last_complete_checkpoint(args.output_dir)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    embedder = trainer.accelerator.unwrap_model(trainer.model).export_embedder()
    metrics: dict[str, float] = {}
    if trainer.accelerator.is_main_process:
        if benchmark is not None:
            metrics = evaluate_embedder(embedder, benchmark, recipe, args.output_dir)
        export(trainer, embedder, recipe, args, metrics, push)
    trainer.accelerator.wait_for_everyone()
    return metrics


def knn_benchmark(benchmark, max_index_per_domain: int | None):
    """The benchmark with each ``train`` split (the k-NN index) cut to a fixed seed-0 subset, or unchanged."""
    if max_index_per_domain is None:
        return benchmark
    domains = {}
    for name, splits in benchmark.domains.items():
        splits = datasets.DatasetDict(splits)
        if len(splits["train"]) > max_index_per_domain:
            splits["train"] = splits["train"].shuffle(seed=0).select(range(max_index_per_domain))
        domains[name] = splits
    return dataclasses.replace(benchmark, domains=domains)


def evaluate_embedder(
    model, benchmark, recipe: UnicRecipeArguments, output_dir: str | None, transform=None
) -> dict[str, float]:
    """Test retrieval (merged and separate) and the k-NN probe (train index, val queries) of one model.

    Args:
        model: called as ``model(pixel_values=...)``.
        benchmark: the loaded benchmark.
        recipe: supplies ``eval_batch_size``, ``knn_k`` and ``knn_max_index_per_domain``.
        output_dir: where the evaluators write their result files (None: nowhere).
        transform: image → tensor; default from the model's config.
    """
    retrieval = RetrievalEvaluator(
        benchmark, split="test", transform=transform, batch_size=recipe.eval_batch_size
    )
    metrics = retrieval(model, output_path=output_dir)
    knn = KNNClassificationEvaluator(
        knn_benchmark(benchmark, recipe.knn_max_index_per_domain),
        k=recipe.knn_k,
        transform=transform,
        batch_size=recipe.eval_batch_size,
    )
    metrics.update(knn(model, output_path=output_dir))
    logger.info(
        "test merged/mean/R@1 = %.4f, k-NN top-1 = %.4f", metrics["merged/mean/R@1"], metrics["knn/mean/top1"]
    )
    return metrics


def export(
    trainer: UnicTrainer, embedder, recipe: UnicRecipeArguments, args, metrics: dict[str, float], push: bool
) -> None:
    """Save the embedder with processor and card, write the metrics and the run summary, push if asked."""
    export_dir = recipe.export_dir or os.path.join(args.output_dir, "embedder")
    teacher_descriptions = [spec.model for spec in teacher_specs(recipe)]
    card = dict(
        method="unic",
        repo_id=args.hub_model_id,
        model_name="hf-distill-unic-" + recipe.student_backbone.replace("_", "-"),
        metrics={key: value for key, value in metrics.items() if not key.startswith("knn/")},
        teachers=teacher_descriptions,
        domains=list(trainer.domain_names or []),
        hyperparameters={
            "teachers": ", ".join(teacher_descriptions),
            "drop_prob": args.drop_prob,
            "use_feature_cache": recipe.use_feature_cache,
            "cache_views": recipe.cache_views if recipe.use_feature_cache else None,
            **hyperparameters_from_training_args(args),
        },
        log_history=trainer.state.log_history,
    )
    finish_run(trainer, embedder, export_dir, card, metrics, recipe, push)


if __name__ == "__main__":
    main()
