"""What one run of the UNIC page (``unic_results.py``) does: its settings (:class:`Settings`, and where each
part is stored), the evaluation images and evaluators every model is measured with, the students' target cache,
a frozen net's evaluation, a ViT student trained with ``UnicTrainer`` and a pretrained student through
``recipes/unic.py``."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import sweep
import torch
import torch.nn.functional as F
from sweep import Row
from torch import nn

from hf_distill.data import ImageTransform, load_benchmark, subset_split
from hf_distill.evaluation import KNNClassificationEvaluator, RetrievalEvaluator
from hf_distill.layers import PixelNormalize
from hf_distill.models.unic import UnicStudentConfig
from hf_distill.trainers.unic import build_unic_feature_cache, teacher_shapes, unic_train_transform

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = "merged/mean/R@1"
SCRATCH_TEACHERS = ["efficientnet_lite0", "mobilenet_v2"]
STORED_BY = {  # the settings each stored part depends on (see `Settings.directory`)
    "evaluation": tuple(
        "benchmark teachers teacher_image_size student_backbone student_kwargs image_size knn_index_per_domain".split()
    ),
    "cache": tuple(
        "benchmark teachers teacher_image_size image_size max_train_per_domain train_scale_min".split()
    ),
}


@dataclass
class Settings:
    """Everything a run depends on (see :meth:`directory` for where results are stored).

    Args:
        benchmark: benchmark directory.
        teachers: offline teacher names.
        teacher_image_size: side every teacher resizes the student's view to.
        student_kwargs: timm ViT arguments of the student.
        image_size: the student's input side.
        max_train_per_domain: training images per domain (seeded subset, the same for every run).
        steps: the cap of the plateau rule (``stop_on_plateau``; ``eval_steps`` apart, ``plateau_*`` its window and
            threshold).
        batch_size / learning_rate / warmup_steps / weight_decay / max_grad_norm: optimisation.
        train_scale_min: smallest crop of the cached view.
        knn_index_per_domain: cap of the k-NN index (train images of the val classes) per domain.
        eval_batch_size: images per forward pass in evaluation.
    """

    benchmark: str = "data/manydomain"
    teachers: list[str] = field(default_factory=lambda: list(SCRATCH_TEACHERS))
    teacher_image_size: int = 48
    student_backbone: str = "vit_tiny_patch16_224"
    student_kwargs: dict = field(
        default_factory=lambda: {"patch_size": 8, "depth": 4, "embed_dim": 192, "num_heads": 3}
    )
    image_size: int = 32
    max_train_per_domain: int = 500
    steps: int = 4000
    eval_steps: int = 200
    plateau_fraction: float = 0.2
    plateau_min_gain: float = 0.003
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.03
    max_grad_norm: float = 3.0
    train_scale_min: float = 0.35
    knn_index_per_domain: int = 500
    eval_batch_size: int = 256

    def directory(self, root: str | Path, part: str) -> Path:
        """Where ``part`` (``evaluation``, ``cache`` or ``training``) is stored, named by the settings it depends
        on: teachers and starting points do not change with the training settings, nor the cache with the steps.
        """
        values = asdict(self)
        if part != "training":
            values = {name: values[name] for name in STORED_BY[part]}
        key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
        return Path(root) / f"{part}-{key}"


class TeacherEmbedder(nn.Module):
    """A frozen teacher's L2-normalised global feature, computed from ``[0, 1]`` pixels the way the student's
    targets were (``teacher.prepare`` resizes and normalises them).

    Args:
        teacher: a ``FrozenTeacher``.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.teacher(self.teacher.prepare(pixel_values)).global_features, dim=-1)


def teacher_specs(settings: Settings) -> list[dict[str, Any]]:
    return [
        {"model": name, "name": name, "image_size": settings.teacher_image_size} for name in settings.teachers
    ]


def training_images(benchmark: Any, settings: Settings) -> datasets.Dataset:
    """The distillation set: at most ``max_train_per_domain`` train images of every domain (seed 0)."""
    parts = [
        subset_split(splits["train"], settings.max_train_per_domain, seed=0).select_columns(["image"])
        for splits in benchmark.domains.values()
    ]
    return datasets.concatenate_datasets(parts)


def knn_benchmark(benchmark: Any, cap: int) -> Any:
    """A copy of ``benchmark`` whose train split holds only images of the val classes, at most ``cap`` per domain.

    A random cap of a split with thousands of classes (cjk: 3,000 classes, 7 images each) would leave most val
    classes without a single index image; restricted to the val classes, every query has neighbours to find.
    """
    from dataclasses import replace

    domains = {}
    for name, splits in benchmark.domains.items():
        val_classes = set(splits["val"]["label"])
        train = splits["train"]
        keep = [index for index, label in enumerate(train["label"]) if label in val_classes]
        splits = datasets.DatasetDict(splits)
        splits["train"] = subset_split(train.select(keep, keep_in_memory=True), cap, seed=0)
        domains[name] = splits
    return replace(benchmark, domains=domains)


def pixels_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """Stored ``uint8`` evaluation pixels → floats in ``[0, 1]`` (the evaluators' transform)."""
    return pixels.float() / 255.0


class NormalizedEmbedder(nn.Module):
    """An exported embedder fed ``[0, 1]`` pixels: normalises them with its own statistics first.

    Args:
        embedder: a ``UniversalEmbedderModel``.
    """

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder
        self.normalize = PixelNormalize(embedder.config.image_mean, embedder.config.image_std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embedder(pixel_values=self.normalize(pixel_values)).embeddings


def evaluation_benchmark(settings: Settings, path: Path) -> Any:
    """The evaluation images of every model, decoded and resized once: test (retrieval), val (k-NN queries)
    and the k-NN index (as ``train``), stored under ``path`` as ``uint8`` arrays.

    They go through the student's evaluation geometry (`ImageTransform` at ``image_size``: resize the short
    side, centre crop), which works on ``uint8`` tensors, so storing its output loses nothing; every model then
    normalises the ``[0, 1]`` pixels its own way (`NormalizedEmbedder`, `TeacherEmbedder`).
    """
    from dataclasses import replace

    benchmark = load_benchmark(settings.benchmark)
    if not (path / "complete").exists():
        knn_index = knn_benchmark(benchmark, settings.knn_index_per_domain)
        transform = ImageTransform(
            settings.image_size, (0.0,) * 3, (1.0,) * 3, resize_size=settings.image_size
        )
        side = settings.image_size
        for name, splits in benchmark.domains.items():
            stored = {}
            for split, dataset in (
                ("test", splits["test"]),
                ("val", splits["val"]),
                ("train", knn_index.domains[name]["train"]),
            ):
                pixels = torch.stack([transform(image) for image in dataset["image"]])
                features = datasets.Features(
                    {"image": datasets.Array3D((3, side, side), "uint8"), "label": dataset.features["label"]}
                )
                stored[split] = datasets.Dataset.from_dict(
                    {"image": (pixels * 255).round().to(torch.uint8).numpy(), "label": dataset["label"]},
                    features=features,
                )
            datasets.DatasetDict(stored).save_to_disk(str(path / name))
        (path / "complete").write_text("")
    domains = {
        name: datasets.DatasetDict(
            {
                split: dataset.with_format("torch", columns=["image"], output_all_columns=True)
                for split, dataset in datasets.load_from_disk(str(path / name)).items()
            }
        )
        for name in benchmark.domains
    }
    return replace(benchmark, domains=domains)


def evaluate(model: nn.Module, benchmark: Any, settings: Settings) -> dict[str, float]:
    """Test retrieval (merged and separate) and the k-NN probe of one model on `evaluation_benchmark`'s images."""
    model.eval()
    metrics = RetrievalEvaluator(
        benchmark, split="test", transform=pixels_to_unit, batch_size=settings.eval_batch_size
    )(model)
    knn = KNNClassificationEvaluator(
        benchmark, k=20, transform=pixels_to_unit, batch_size=settings.eval_batch_size
    )
    metrics.update(knn(model))
    return metrics


def student_config(settings: Settings, teachers: Any, ladder_blocks: list[int] | None) -> UnicStudentConfig:
    return UnicStudentConfig(
        backbone=settings.student_backbone,
        backbone_kwargs=settings.student_kwargs,
        teachers=teacher_shapes(teachers),
        ladder_blocks=ladder_blocks,
        image_size=settings.image_size,
    )


def feature_cache(settings: Settings, teachers: Any, images: datasets.Dataset, root: str | Path):
    """The teachers' targets on one augmented view of every training image, built once (seed 0)."""
    transform = unic_train_transform(settings.image_size, settings.train_scale_min)
    cache = build_unic_feature_cache(
        teachers,
        images,
        transform,
        settings.directory(root, "cache"),
        views=1,
        seed=0,
        batch_size=settings.eval_batch_size,
        dataset_id=settings.directory(root, "cache").name,
    )
    return cache, transform


class ValidationEvaluator:
    """The trainer's evaluator: merged retrieval on the stored val images (what the plateau rule watches)."""

    primary_metric = PRIMARY

    def __init__(self, benchmark: Any, settings: Settings) -> None:
        self.evaluator = RetrievalEvaluator(
            benchmark, split="val", transform=pixels_to_unit, batch_size=settings.eval_batch_size
        )

    def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
        return self.evaluator(NormalizedEmbedder(model.export_embedder()).eval())


def recipe_run(name: str, values: dict, seed: int, options: dict[str, Any], student_start: dict) -> dict:
    """Regime (ii) students: ``recipes/unic.py`` with the row's recipe settings (its variant's switches
    ``options``, the student's start ``student_start``) and the plateau rule."""
    # Imported as a module (a dataclass needs its module in ``sys.modules``), as the script's `accepted` imports it.
    if str(ROOT / "recipes") not in sys.path:
        sys.path.insert(0, str(ROOT / "recipes"))
    module = importlib.import_module("unic")
    out = Path(values["work_dir"]) / f"{name}_seed{seed}"
    # The shipped CNN config (batch 128, lr 5e-4 cosine, AdamW 0.9/0.99, wd 0.03, clip 3, trunk cache) with the
    # row's settings on top.
    argv = ["--config", str(ROOT / "recipes" / "configs" / "unic_cnn_offline.yaml"),
            "--benchmark", values["benchmark"], "--seed", str(seed), "--output_dir", str(out),
            "--teachers", *values["teachers"], "--image_size", str(values["image_size"]),
            "--max_steps", str(values["steps"]), "--eval_strategy", "steps", "--eval_steps", str(values["eval_steps"]),
            "--save_steps", str(values["eval_steps"]), "--load_best_model_at_end", "true", "--stop_on_plateau", "true",
            "--drop_prob", str(options["drop_prob"]), "--standardize_targets", str(options["standardize_targets"])]  # fmt: skip
    argv += [f"--{key}={value}" for key, value in student_start.items()] + ["--report_to", "none"]
    argv += ["--max_train_per_domain", str(values["max_train_per_domain"])]
    if "recipe_learning_rate" in values:
        argv += ["--learning_rate", str(values["recipe_learning_rate"])]
    argv += [f"--{key}={values[key]}" for key in ("plateau_fraction", "plateau_min_gain")]
    if options["ladder_blocks"] is not None:
        argv += ["--ladder_blocks", *map(str, options["ladder_blocks"])]
    # The recipe's k-NN probe indexes a random cap of the train split (most cjk val classes then have no index
    # image), not `knn_benchmark`'s val-class index the teachers and the starting point are probed on: its
    # figures are not comparable and stay out of the row (its retrieval equals the page's: the untrained
    # student's val merged R@1 at step 0 equals the starting point's on `evaluation_benchmark`, 0.4206).
    metrics = {key: value for key, value in module.main(argv).items() if not key.startswith("knn/")}
    return {**metrics, **sweep.recipe_curve(out)}


def trainer_run(values: dict, seed: int, variants: dict[str, dict[str, Any]]) -> dict:
    """A frozen net (a teacher, a pretrained starting point) evaluated, or a ViT student (its switches from
    ``variants``) trained with ``UnicTrainer`` to the plateau and evaluated."""
    from transformers import set_seed

    from hf_distill.losses import UnicLoss
    from hf_distill.models.unic import UnicStudentModel
    from hf_distill.teachers import load_teachers
    from hf_distill.teachers.cache import CachedViewDataset
    from hf_distill.trainers.unic import UnicTrainer, UnicTrainingArguments

    settings, work_dir = sweep.dataclass_of(Settings, values), values["work_dir"]
    images_dir = settings.directory(work_dir, "evaluation") / "images"
    benchmark = evaluation_benchmark(settings, images_dir)
    if values["kind"] == "teacher":
        spec = {
            "model": values["teacher"],
            "name": values["teacher"],
            "image_size": settings.teacher_image_size,
        }
        teacher = next(iter(load_teachers([spec]).values()))
        return evaluate(TeacherEmbedder(teacher), benchmark, settings)
    variant = values["variant"]
    options = variants["all_on" if variant == "starting_point" else variant]
    teachers = load_teachers(teacher_specs(settings))
    set_seed(seed)
    model = UnicStudentModel(student_config(settings, teachers, options["ladder_blocks"]))
    record: dict[str, Any] = {"steps": 0}
    if variant != "starting_point":
        images = training_images(load_benchmark(settings.benchmark), settings)
        cache, transform = feature_cache(settings, teachers, images, work_dir)
        out = settings.directory(work_dir, "training") / f"{variant}_seed{seed}"
        args = UnicTrainingArguments(
            output_dir=str(out), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, weight_decay=settings.weight_decay, adam_beta1=0.9,
            adam_beta2=0.99, lr_scheduler_type="cosine", warmup_steps=settings.warmup_steps,
            max_grad_norm=settings.max_grad_norm, standardize_targets=options["standardize_targets"], seed=seed,
            logging_steps=max(settings.eval_steps // 4, 1), eval_strategy="steps", eval_steps=settings.eval_steps,
            save_strategy="steps", save_steps=settings.eval_steps, save_total_limit=2, load_best_model_at_end=True,
            metric_for_best_model=PRIMARY, stop_on_plateau=True, plateau_fraction=settings.plateau_fraction,
            plateau_min_gain=settings.plateau_min_gain, report_to="none", use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = UnicTrainer(
            model=model, args=args, train_dataset=CachedViewDataset(cache, images, transform, 0),
            loss=UnicLoss(list(settings.teachers), drop_prob=options["drop_prob"]),
            domain_names=list(benchmark.domains), evaluator=ValidationEvaluator(benchmark, settings),
        )  # fmt: skip
        trainer.train()
        record.update(
            curve=sweep.validation_curve(trainer.state.log_history),
            selected_step=sweep.selected_step(trainer.state.best_model_checkpoint),
            steps=trainer.state.global_step,
        )
    record.update(evaluate(NormalizedEmbedder(model.export_embedder()), benchmark, settings))
    return record


def prepare(rows: list[Row], shared: dict) -> None:
    """Build the evaluation images and the students' target cache once, here, before the workers read them."""
    from hf_distill.teachers import load_teachers

    for row in rows:
        values = {**shared, **row.settings}
        if "student_offline_weights" in values:
            continue
        settings = sweep.dataclass_of(Settings, values)
        evaluation_benchmark(settings, settings.directory(values["work_dir"], "evaluation") / "images")
        if values["kind"] == "student" and values["variant"] != "starting_point":
            images = training_images(load_benchmark(settings.benchmark), settings)
            feature_cache(settings, load_teachers(teacher_specs(settings)), images, values["work_dir"])
