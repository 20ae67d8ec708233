"""MLFD end to end (SPEC §4): individual teachers → feature cache → joint teacher → dataset-specific students.

    accelerate launch recipes/mlfd.py --config recipes/configs/mlfd_offline.yaml [--key value ...]
    python recipes/mlfd.py --config recipes/configs/mlfd_offline.yaml

Every stage writes its output under ``output_dir`` and is skipped when that output is complete; an interrupted
training stage resumes from its last checkpoint:

- ``teachers/<domain>/``: stage 1, one classifier per domain (trained, or loaded from ``teacher_paths``);
- ``cache/<domain>_<split>/``: stage 2, the frozen teachers' maps on that split (``datasets`` Arrow files whose
  spec names the teachers, their weights, the layer and the preprocessing; a stale cache is refused);
- ``joint_teacher/``: stage 3, the joint teacher trained on the caches of all domains;
- ``students/<domain>/``: stage 4, the distilled student, and ``students/<domain>/embedder/`` its export as a
  universal embedder with a model card.

``results.json`` gathers every stage's metrics: top-1 accuracy of the classifier head on ``val`` (held-out
images of the training classes) and retrieval R@1 on ``test`` (unseen classes, ``separate`` protocol).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import ConcatDataset
from transformers import AutoModel
from transformers.trainer_utils import get_last_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_recipe_args, setup_logging  # noqa: E402

from hf_distill.data import ImageTransform, load_benchmark, with_pixel_values  # noqa: E402
from hf_distill.data.domains import Benchmark  # noqa: E402
from hf_distill.evaluation import RetrievalEvaluator  # noqa: E402
from hf_distill.hub.push import save_embedder  # noqa: E402
from hf_distill.losses import MlfdLoss  # noqa: E402
from hf_distill.models.mlfd import (  # noqa: E402
    JointTeacherConfig,
    JointTeacherModel,
    MlfdClassifierConfig,
    MlfdClassifierModel,
)
from hf_distill.teachers.cache import (  # noqa: E402
    FeatureCacheSpec,
    build_feature_cache,
    load_feature_cache,
    map_column,  # noqa: E402
)
from hf_distill.trainers.arguments import MlfdTrainingArguments  # noqa: E402
from hf_distill.trainers.mlfd import CachedMapsDataset, CachedTargetsDataset, MlfdTrainer  # noqa: E402

logger = logging.getLogger("recipes.mlfd")

METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class MlfdArguments:
    """Arguments of the MLFD recipe (every field can be set in the YAML config or as ``--field value``).

    Args:
        output_dir: root of all stage outputs.
        benchmark_path: the offline benchmark (default: ``$HF_DISTILL_BENCHMARK`` or ``data/offline_benchmark``).
        domains: the datasets; one individual teacher and one student each.
        teacher_backbones: timm backbone of each domain's teacher and student (same order as ``domains``).
        backbone_kwargs: per backbone name, extra timm ``create_model`` arguments (YAML mapping or JSON string).
        teacher_levels: feature level cached from each teacher (``forward_intermediates`` index).
        teacher_paths: per domain, an existing teacher (``MlfdClassifierModel`` folder or Hub id) to load
            instead of training one (YAML mapping or JSON string).
        image_size / train_resize_size: input side; training resizes to ``train_resize_size`` then crops.
        image_mean / image_std: input normalisation of every teacher and student.
        max_train_samples: per domain, keep this many training images (a fixed random subset; all when None).
        seed: seed of training and of the cached views.
        batch_size / eval_batch_size: images per step / per evaluation batch.
        teacher_epochs / teacher_learning_rate: stage 1 (also the no-distillation baseline).
        cache_views: views cached per training image (1 = un-augmented, as in the paper; K > 1 = K augmented
            views, and the student then sees exactly the cached views).
        cache_dtype: storage dtype of the cached maps.
        joint_adaptor_channels / joint_out_channels / joint_fusion_levels / joint_dropout: joint teacher.
        joint_epochs / joint_learning_rate / joint_batch_size: stage 3.
        student_epochs / student_learning_rate: stage 4.
        student_levels: student feature levels distilled, one per fused level (default: the last
            ``joint_fusion_levels + 1`` levels of the student).
        alpha / beta / gamma / temperature: the multi-level loss weights (released defaults 0.6 / 0.2 / 0.2 / 2).
        weight_decay: AdamW weight decay of every stage (released: 1e-3).
        logging_steps: Trainer logging interval.
    """

    output_dir: str = "outputs/mlfd"
    benchmark_path: str | None = None
    domains: list[str] = field(default_factory=lambda: ["clothing", "digits", "animals"])
    teacher_backbones: list[str] = field(
        default_factory=lambda: ["vit_tiny_patch16_224", "resnet10t", "resnet10t"]
    )
    backbone_kwargs: dict | str | None = None
    teacher_levels: list[int] = field(default_factory=lambda: [-1])
    teacher_paths: dict | str | None = None
    image_size: int = 32
    train_resize_size: int = 36
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    max_train_samples: int | None = None
    seed: int = 0
    batch_size: int = 64
    eval_batch_size: int = 256
    teacher_epochs: float = 3.0
    teacher_learning_rate: float = 1e-3
    cache_views: int = 1
    cache_dtype: str = "float16"
    joint_adaptor_channels: int = 128
    joint_out_channels: int = 128
    joint_fusion_levels: int = 0
    joint_dropout: float = 0.9
    joint_epochs: float = 10.0
    joint_learning_rate: float = 1e-3
    joint_batch_size: int = 128
    student_epochs: float = 3.0
    student_learning_rate: float = 1e-3
    student_levels: list[int] | None = None
    alpha: float = 0.6
    beta: float = 0.2
    gamma: float = 0.2
    temperature: float = 2.0
    weight_decay: float = 1e-3
    logging_steps: int = 20

    def __post_init__(self) -> None:
        self.backbone_kwargs = _mapping(self.backbone_kwargs, "backbone_kwargs")
        self.teacher_paths = _mapping(self.teacher_paths, "teacher_paths")
        if len(self.teacher_backbones) == 1:
            self.teacher_backbones = self.teacher_backbones * len(self.domains)
        if len(self.teacher_levels) == 1:
            self.teacher_levels = self.teacher_levels * len(self.domains)
        for name in ("teacher_backbones", "teacher_levels"):
            if len(getattr(self, name)) != len(self.domains):
                raise ValueError(
                    f"{name} needs one entry per domain {self.domains} (or a single one for all)"
                )
        unknown = sorted(set(self.teacher_paths) - set(self.domains))
        if unknown:
            raise ValueError(f"teacher_paths names unknown domain(s) {unknown}; domains are {self.domains}")
        if self.cache_views < 1:
            raise ValueError(f"cache_views must be at least 1, got {self.cache_views}")
        if len(set(self.domains)) != len(self.domains) or not self.domains:
            raise ValueError(f"domains must be distinct and non-empty, got {self.domains}")


def _mapping(value: dict | str | None, name: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"--{name} must be a JSON object: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _is_done(folder: Path) -> bool:
    # metrics.json is written after the weights, so its presence marks a finished stage.
    return (folder / METRICS_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _training_arguments(
    args: MlfdArguments, folder: Path, epochs: float, learning_rate: float, batch_size: int
) -> MlfdTrainingArguments:
    return MlfdTrainingArguments(
        output_dir=str(folder / "checkpoints"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=args.logging_steps,
        save_strategy="epoch",
        save_total_limit=1,
        seed=args.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )


def _train(trainer: MlfdTrainer) -> None:
    checkpoint = (
        get_last_checkpoint(trainer.args.output_dir) if Path(trainer.args.output_dir).is_dir() else None
    )
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)


def _finish(model: torch.nn.Module, folder: Path, metrics: dict) -> None:
    state = PartialState()
    if state.is_main_process:
        model.save_pretrained(folder)
        _write_json(folder / METRICS_FILE, metrics)
        # The final weights are saved; the intermediate checkpoints only served resumption.
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    state.wait_for_everyone()


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def top1_accuracy(
    model: MlfdClassifierModel, dataset: datasets.Dataset, transform: Callable, batch_size: int = 256
) -> float:
    """Top-1 accuracy of the classification head on a split with ``image`` and ``label`` columns.

    Args:
        model: the classifier.
        dataset: the split.
        transform: image -> normalised tensor.
        batch_size: images per forward pass.
    """
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        pixels = torch.stack([transform(image) for image in batch["image"]]).to(device)
        predictions = model(pixel_values=pixels).logits.argmax(-1).cpu()
        correct += int((predictions == torch.as_tensor(batch["label"])).sum())
    return correct / len(dataset)


def evaluate_classifier(
    model: MlfdClassifierModel, benchmark: Benchmark, args: MlfdArguments
) -> dict[str, float]:
    """Val top-1 accuracy and test retrieval metrics (unseen classes) of one domain's classifier.

    Args:
        model: the classifier; its ``config.dataset`` names the domain.
        benchmark: the benchmark.
        args: the recipe arguments (evaluation batch size).
    """
    domain = model.config.dataset
    transform = _eval_transform(model.config)
    metrics = {
        "val/top1": top1_accuracy(model, benchmark.domains[domain]["val"], transform, args.eval_batch_size)
    }
    evaluator = RetrievalEvaluator(
        benchmark,
        split="test",
        protocols=("separate",),
        transform=transform,
        batch_size=args.eval_batch_size,
        domains=[domain],
    )
    retrieval = evaluator(model.export_embedder().to(next(model.parameters()).device))
    metrics.update(
        {f"test/{key.split('/')[-1]}": value for key, value in retrieval.items() if f"/{domain}/" in key}
    )
    return metrics


def _eval_transform(config: MlfdClassifierConfig) -> ImageTransform:
    return ImageTransform(
        config.image_size, config.image_mean, config.image_std, resize_size=config.resize_size
    )


def _train_transform(args: MlfdArguments, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    return ImageTransform(args.image_size, mean, std, train=True, resize_size=args.train_resize_size)


def _train_indices(benchmark: Benchmark, domain: str, args: MlfdArguments) -> list[int]:
    size = len(benchmark.domains[domain]["train"])
    if args.max_train_samples is None or args.max_train_samples >= size:
        return list(range(size))
    # A fixed subset (seed 0) whatever the run seed, so that runs over several seeds see the same images.
    return np.random.default_rng(0).permutation(size)[: args.max_train_samples].tolist()


def _train_split(benchmark: Benchmark, domain: str, args: MlfdArguments) -> datasets.Dataset:
    split = benchmark.domains[domain]["train"]
    indices = _train_indices(benchmark, domain, args)
    # Kept in memory so that nothing is written next to the benchmark's files.
    return split if len(indices) == len(split) else split.select(indices, keep_in_memory=True)


# ------------------------------------------------------------------------------------------------- stage 1


def classifier_config(
    args: MlfdArguments, index: int, num_classes: int, **overrides: Any
) -> MlfdClassifierConfig:
    """The classifier config of domain ``index`` (teacher, student and baseline share the architecture).

    Args:
        args: the recipe arguments.
        index: position of the domain in ``args.domains``.
        num_classes: training classes of the domain.
        overrides: fields to change (e.g. ``feature_levels``, ``distill_channels``).
    """
    backbone = args.teacher_backbones[index]
    values = dict(
        backbone=backbone,
        backbone_kwargs=args.backbone_kwargs.get(backbone, {}),
        num_classes=num_classes,
        dataset=args.domains[index],
        feature_levels=[args.teacher_levels[index]],
        image_size=args.image_size,
        resize_size=args.image_size,
        image_mean=args.image_mean,
        image_std=args.image_std,
    )
    values.update(overrides)
    return MlfdClassifierConfig(**values)


def train_classifier(
    model: MlfdClassifierModel,
    dataset: Any,
    folder: Path,
    benchmark: Benchmark,
    args: MlfdArguments,
    epochs: float,
    learning_rate: float,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train a classifier (stage 1 with cross-entropy, stage 4 with a joint teacher), save it and evaluate it.

    Args:
        model: the classifier.
        dataset: its training set (rows with ``pixel_values`` and ``labels``, plus cached maps in stage 4).
        folder: output folder.
        benchmark: for the evaluation.
        args: the recipe arguments.
        epochs / learning_rate: the schedule.
        trainer_kwargs: passed to :class:`MlfdTrainer` (``loss``, ``domain_names``).
    """
    training_args = _training_arguments(args, folder, epochs, learning_rate, args.batch_size)
    trainer = MlfdTrainer(model=model, args=training_args, train_dataset=dataset, **trainer_kwargs)
    start = time.perf_counter()
    _train(trainer)
    metrics = evaluate_classifier(model, benchmark, args)
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    metrics["train_loss"] = trainer.state.log_history[-1].get("train_loss")
    _finish(model, folder, metrics)
    logger.info("%s: %s", folder, metrics)
    return metrics


def stage1_teachers(args: MlfdArguments, benchmark: Benchmark) -> dict[str, MlfdClassifierModel]:
    """One classifier per domain: loaded when its folder is complete or ``teacher_paths`` names it, else trained."""
    teachers = {}
    for index, domain in enumerate(args.domains):
        folder = Path(args.output_dir) / "teachers" / domain
        if _is_done(folder):
            logger.info("stage 1: teacher %s exists in %s, skipping", domain, folder)
            teachers[domain] = AutoModel.from_pretrained(folder).eval()
            continue
        if domain in args.teacher_paths:
            teacher = AutoModel.from_pretrained(args.teacher_paths[domain])
            if not isinstance(teacher, MlfdClassifierModel):
                raise TypeError(
                    f"teacher_paths[{domain!r}] is a {type(teacher).__name__}, not MlfdClassifierModel"
                )
            _finish(teacher, folder, evaluate_classifier(teacher, benchmark, args))
            teachers[domain] = teacher.eval()
            continue
        logger.info("stage 1: training the %s teacher (%s)", domain, args.teacher_backbones[index])
        torch.manual_seed(args.seed)
        model = MlfdClassifierModel(classifier_config(args, index, benchmark.num_classes[domain]))
        dataset = with_pixel_values(
            _train_split(benchmark, domain, args), _train_transform(args, args.image_mean, args.image_std)
        )
        train_classifier(
            model, dataset, folder, benchmark, args, args.teacher_epochs, args.teacher_learning_rate
        )
        teachers[domain] = model.eval()
    return teachers


# ------------------------------------------------------------------------------------------------- stage 2


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def cache_spec(
    args: MlfdArguments,
    benchmark: Benchmark,
    teachers: dict[str, MlfdClassifierModel],
    domain: str,
    split: str,
) -> FeatureCacheSpec:
    """What identifies the cache of ``domain``/``split``: teachers (and their weights), layers, preprocessing.

    Args:
        args: the recipe arguments.
        benchmark: the benchmark (the spec records which training images are used).
        teachers: the stage-1 teachers by domain.
        domain: the cached domain.
        split: the cached split.
    """
    views = args.cache_views if split == "train" else 1
    names = list(teachers)
    folder = Path(args.output_dir) / "teachers"
    return FeatureCacheSpec(
        teacher=[f"{name}:{teachers[name].config.backbone}" for name in names],
        layer=",".join(str(teachers[name].config.feature_levels) for name in names),
        preprocessing={
            "image_size": args.image_size,
            "resize_size": args.image_size,
            "mean": {name: teachers[name].config.image_mean for name in names},
            "std": {name: teachers[name].config.image_std for name in names},
        },
        views=views,
        augmentation=(
            f"resize {args.train_resize_size}, random crop {args.image_size}, horizontal flip"
            if views > 1
            else None
        ),
        extra={
            "dataset": domain,
            "split": split,
            "source_rows": _digest(
                json.dumps(_train_indices(benchmark, domain, args) if split == "train" else None)
            ),
            "teacher_weights": {name: _file_digest(folder / name / WEIGHTS_FILE) for name in names},
            "dtype": args.cache_dtype,
        },
    )


def teacher_extractor(
    teachers: dict[str, MlfdClassifierModel],
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``pixels in [0, 1] -> {maps_<teacher>: map}``: each teacher normalises the batch its own way first.

    Args:
        teachers: the frozen teachers by name.
    """

    def extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for name, teacher in teachers.items():
            device = next(teacher.parameters()).device
            mean = torch.tensor(teacher.config.image_mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(teacher.config.image_std, device=device).view(1, 3, 1, 1)
            features[map_column(name)] = teacher.feature_maps((pixels.to(device) - mean) / std)[0]
        return features

    return extract


def _view_transform(args: MlfdArguments, views: int) -> ImageTransform:
    # Pixels in [0, 1]; each teacher (and the student) applies its own normalisation afterwards.
    if views > 1:
        return ImageTransform(
            args.image_size, (0, 0, 0), (1, 1, 1), train=True, resize_size=args.train_resize_size
        )
    return ImageTransform(args.image_size, (0, 0, 0), (1, 1, 1), resize_size=args.image_size)


def stage2_cache(
    args: MlfdArguments, benchmark: Benchmark, teachers: dict[str, MlfdClassifierModel]
) -> dict[tuple[str, str], datasets.Dataset]:
    """Cache every teacher's map on the train and val split of every domain (built once, then reused)."""
    extract = teacher_extractor(teachers)
    caches = {}
    for domain in args.domains:
        for split in ("train", "val"):
            spec = cache_spec(args, benchmark, teachers, domain, split)
            folder = Path(args.output_dir) / "cache" / f"{domain}_{split}"
            if folder.exists():
                logger.info("stage 2: cache %s exists, checking its spec", folder)
                caches[domain, split] = load_feature_cache(folder, spec)
                continue
            source = (
                _train_split(benchmark, domain, args)
                if split == "train"
                else benchmark.domains[domain][split]
            )
            caches[domain, split] = build_feature_cache(
                source,
                extract,
                _view_transform(args, spec.views),
                spec,
                folder,
                batch_size=args.eval_batch_size,
                seed=args.seed,
                dtype=args.cache_dtype,
            )
    return caches


# ------------------------------------------------------------------------------------------------- stage 3


@torch.no_grad()
def joint_teacher_accuracy(model: JointTeacherModel, dataset: CachedMapsDataset, batch_size: int) -> float:
    """Top-1 accuracy of the joint teacher on the cached maps of one split.

    Args:
        model: the joint teacher.
        dataset: the split's cached maps with labels and dataset id.
        batch_size: rows per forward pass.
    """
    model.eval()
    device = next(model.parameters()).device
    labels = torch.tensor(dataset.labels)
    correct = 0
    for start in range(0, len(dataset), batch_size):
        rows = slice(start, start + batch_size)
        maps = [dataset.maps[map_column(name)][rows].to(device) for name in model.config.teacher_names]
        domain_ids = torch.full((len(labels[rows]),), dataset.domain_id, device=device)
        logits = model(teacher_maps=maps, domain_ids=domain_ids).logits
        correct += int((logits.argmax(-1).cpu() == labels[rows]).sum())
    return correct / len(dataset)


def _labels(split: datasets.Dataset) -> list[int]:
    return list(split.select_columns(["label"])["label"])


def stage3_joint_teacher(
    args: MlfdArguments,
    benchmark: Benchmark,
    teachers: dict[str, MlfdClassifierModel],
    caches: dict[tuple[str, str], datasets.Dataset],
) -> JointTeacherModel:
    """Train the joint teacher on the train caches of all domains (or load it when done)."""
    folder = Path(args.output_dir) / "joint_teacher"
    if _is_done(folder):
        logger.info("stage 3: joint teacher exists in %s, skipping", folder)
        return AutoModel.from_pretrained(folder).eval()
    names = list(teachers)
    first = caches[args.domains[0], "train"][0]
    config = JointTeacherConfig(
        teacher_names=names,
        teacher_configs=[teachers[name].config.to_dict() for name in names],
        teacher_channels=[teachers[name].level_channels[0] for name in names],
        teacher_grids=[list(first[map_column(name)].shape[-2:]) for name in names],
        datasets=list(args.domains),
        num_classes=[benchmark.num_classes[domain] for domain in args.domains],
        adaptor_channels=args.joint_adaptor_channels,
        out_channels=args.joint_out_channels,
        fusion_levels=args.joint_fusion_levels,
        dropout=args.joint_dropout,
    )
    torch.manual_seed(args.seed)
    model = JointTeacherModel(config)
    train = ConcatDataset(
        [
            CachedMapsDataset(
                caches[domain, "train"], _labels(_train_split(benchmark, domain, args)), index, names
            )
            for index, domain in enumerate(args.domains)
        ]
    )
    training_args = _training_arguments(
        args, folder, args.joint_epochs, args.joint_learning_rate, args.joint_batch_size
    )
    trainer = MlfdTrainer(
        model=model, args=training_args, train_dataset=train, domain_names=list(args.domains)
    )
    start = time.perf_counter()
    _train(trainer)
    metrics: dict[str, Any] = {"train_seconds": round(time.perf_counter() - start, 1)}
    for index, domain in enumerate(args.domains):
        val = CachedMapsDataset(
            caches[domain, "val"], _labels(benchmark.domains[domain]["val"]), index, names
        )
        metrics[f"{domain}/val/top1"] = joint_teacher_accuracy(model, val, args.eval_batch_size)
    _finish(model, folder, metrics)
    logger.info("stage 3: joint teacher %s", metrics)
    return model.eval()


# ------------------------------------------------------------------------------------------------- stage 4


def stage4_students(
    args: MlfdArguments,
    benchmark: Benchmark,
    joint: JointTeacherModel,
    caches: dict[tuple[str, str], datasets.Dataset],
) -> dict[str, dict[str, Any]]:
    """Distil the joint teacher into one student per domain; export each as a universal embedder."""
    results = {}
    levels = args.joint_fusion_levels + 1
    for index, domain in enumerate(args.domains):
        folder = Path(args.output_dir) / "students" / domain
        if _is_done(folder) and (folder / "embedder" / WEIGHTS_FILE).is_file():
            logger.info("stage 4: student %s exists in %s, skipping", domain, folder)
            results[domain] = json.loads((folder / METRICS_FILE).read_text())
            continue
        student_levels = args.student_levels or list(range(-levels, 0))
        config = classifier_config(
            args,
            index,
            benchmark.num_classes[domain],
            feature_levels=student_levels,
            distill_channels=[joint.config.out_channels] * len(student_levels),
        )
        torch.manual_seed(args.seed)
        student = MlfdClassifierModel(config)
        source = _train_split(benchmark, domain, args)
        if args.cache_views > 1:
            view_kwargs = dict(
                view_transform=_view_transform(args, args.cache_views),
                normalize=_normalizer(config.image_mean, config.image_std),
            )
        else:
            view_kwargs = dict(train_transform=_train_transform(args, config.image_mean, config.image_std))
        dataset = CachedTargetsDataset(
            caches[domain, "train"], source, index, joint.config.teacher_names, seed=args.seed, **view_kwargs
        )
        loss = MlfdLoss(joint, args.alpha, args.beta, args.gamma, args.temperature)
        logger.info("stage 4: distilling the joint teacher into the %s student", domain)
        metrics = train_classifier(
            student,
            dataset,
            folder,
            benchmark,
            args,
            args.student_epochs,
            args.student_learning_rate,
            loss=loss,
            domain_names=list(args.domains),
        )
        export_student(student, folder / "embedder", metrics, args)
        results[domain] = metrics
    return results


def _normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_tensor, std_tensor = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return lambda pixels: (pixels - mean_tensor) / std_tensor


def export_student(
    student: MlfdClassifierModel, folder: Path, metrics: dict[str, Any], args: MlfdArguments
) -> Path:
    """Save a student as a self-contained universal embedder with its model card.

    Args:
        student: the trained student.
        folder: output folder.
        metrics: its evaluation metrics (retrieval ones go into the card).
        args: the recipe arguments (card hyperparameters).
    """
    domain = student.config.dataset
    retrieval = {
        f"separate/{domain}/{key.split('/', 1)[1]}": value
        for key, value in metrics.items()
        if key.startswith("test/")
    }
    card = dict(
        method="mlfd",
        model_name=f"mlfd-{domain}-{student.config.backbone}",
        metrics=retrieval,
        teachers=[f"{name} ({backbone})" for name, backbone in zip(args.domains, args.teacher_backbones)],
        domains=[domain],
        hyperparameters={
            key: value
            for key, value in asdict(args).items()
            if key
            in ("alpha", "beta", "gamma", "temperature", "student_epochs", "student_learning_rate", "seed")
        },
    )
    if PartialState().is_main_process:
        save_embedder(student.export_embedder(), folder, card=card)
    PartialState().wait_for_everyone()
    return folder


# --------------------------------------------------------------------------------------------------- main


def run_mlfd(args: MlfdArguments) -> dict[str, Any]:
    """Run the four stages (each skipped when its output exists) and write ``results.json``.

    Args:
        args: the recipe arguments.

    Returns:
        the content of ``results.json``: per-stage metrics.
    """
    start = time.perf_counter()
    benchmark = load_benchmark(args.benchmark_path, domains=args.domains)
    teachers = stage1_teachers(args, benchmark)
    # The main process builds the caches; the others then find them complete and load them.
    with PartialState().main_process_first():
        caches = stage2_cache(args, benchmark, teachers)
    joint = stage3_joint_teacher(args, benchmark, teachers, caches)
    students = stage4_students(args, benchmark, joint, caches)
    output = Path(args.output_dir)
    results = {
        "teachers": {
            d: json.loads((output / "teachers" / d / METRICS_FILE).read_text()) for d in args.domains
        },
        "joint_teacher": json.loads((output / "joint_teacher" / METRICS_FILE).read_text()),
        "students": students,
        "seconds": round(time.perf_counter() - start, 1),
        "arguments": asdict(args),
    }
    if PartialState().is_main_process:
        _write_json(output / "results.json", results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    datasets.disable_progress_bars()
    (args,) = parse_recipe_args([MlfdArguments], argv)
    results = run_mlfd(args)
    for domain in args.domains:
        teacher, student = results["teachers"][domain], results["students"][domain]
        print(
            f"{domain}: teacher/baseline val top-1 {teacher['val/top1']:.4f} test R@1 {teacher['test/R@1']:.4f} | "
            f"MLFD student val top-1 {student['val/top1']:.4f} test R@1 {student['test/R@1']:.4f}"
        )
    print(f"results: {Path(args.output_dir) / 'results.json'} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
