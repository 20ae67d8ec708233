"""MLFD end to end (SPEC §4): individual teachers → feature cache → joint teacher → dataset-specific students.

:func:`run_mlfd_stages` chains the four stages; each writes its output under ``output_dir`` and is skipped when
that output is complete, and an interrupted training stage resumes from its last checkpoint:

- ``teachers/<domain>/``: stage 1, one classifier per domain (trained, or loaded from ``teacher_paths``);
- ``cache/<domain>_<split>/``: stage 2, the frozen teachers' maps on that split (``datasets`` Arrow files whose
  spec names the teachers, their weights, the layer and the preprocessing; a stale cache is refused);
- ``joint_teacher/``: stage 3, the joint teacher trained on the caches of all domains;
- ``students/<domain>/``: stage 4, the distilled student, and ``students/<domain>/embedder/`` its export as a
  universal embedder with a model card (:func:`push_students` publishes them).

``results.json`` gathers every stage's metrics (:mod:`.mlfd_evaluation`): top-1 accuracy of the classifier head on
``val`` and retrieval R@1 on ``test``; per teacher and student also its ``starting_point``, the untrained model
measured the same way before the first step.

Why one module of about 700 lines: it reads top to bottom in run order (arguments, stage 1 to 4, runner, push),
and a quarter of it is the arguments' documentation; the evaluation and export it calls are in
:mod:`.mlfd_evaluation`, the trainer in :mod:`.mlfd`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState
from torch.utils.data import ConcatDataset
from transformers import AutoModel

from hf_distill.data import ImageTransform, with_pixel_values
from hf_distill.data.domains import Benchmark
from hf_distill.data.loading import subset_indices, subset_split
from hf_distill.data.trunk_cache import MAPS_COLUMN as TRUNK_MAPS
from hf_distill.data.trunk_cache import trunk_digest
from hf_distill.hub.push import push_embedder
from hf_distill.layers.pixels import PixelNormalize
from hf_distill.layers.trunk import trunk_forward
from hf_distill.losses import MlfdLoss
from hf_distill.models.mlfd import (
    JointTeacherConfig,
    JointTeacherModel,
    MlfdClassifierConfig,
    MlfdClassifierModel,
)
from hf_distill.teachers.cache import (
    SPEC_FILE,
    CachedViewDataset,
    FeatureCacheSpec,
    build_feature_cache,
    load_feature_cache,
    map_column,
    read_cache_metadata,
)
from hf_distill.teachers.offline import is_offline_name, resolve_offline_weights
from hf_distill.trainers.arguments import MlfdTrainingArguments
from hf_distill.trainers.base import last_complete_checkpoint
from hf_distill.trainers.callbacks import selected_step, starting_point_from_history, validation_curve
from hf_distill.trainers.mlfd import MlfdTrainer
from hf_distill.trainers.mlfd_evaluation import (
    JointTeacherEvaluator,
    MlfdClassifierEvaluator,
    evaluate_classifier,
    export_student,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.safetensors"
RESULTS_FILE = "results.json"
# The training subset is fixed whatever the run seed, so that runs over several seeds see the same images.
SUBSET_SEED = 0


@dataclass
class MlfdStageArguments:
    """Arguments of the MLFD stages (every field can be set in a recipe's YAML config or as ``--field value``).

    Args:
        output_dir: root of all stage outputs.
        benchmark: the domains (see :func:`~hf_distill.data.load_domains`; default: the offline benchmark); the
            same key as the UDON and UNIC recipes'.
        domains: the datasets; one individual teacher and one student each.
        teacher_backbones: timm backbone of each domain's teacher and student (same order as ``domains``).
        backbone_kwargs: per backbone name, extra timm ``create_model`` arguments (YAML mapping or JSON string).
        teacher_levels: feature level cached from each teacher (``forward_intermediates`` index).
        teacher_paths: per domain, an existing teacher (``MlfdClassifierModel`` folder or Hub id) to load
            instead of training one (YAML mapping or JSON string).
        image_size / train_resize_size: input side; training resizes to ``train_resize_size`` then crops.
        image_mean / image_std: input normalisation of every teacher and student.
        max_train_per_domain: per domain, keep this many training images (a fixed random subset; all when None).
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
        student_pretrained: backbone weights of every student: an offline weights name
            (``hf_distill.teachers.offline``, e.g. ``efficientnet_lite0``) or a local safetensors file; the
            students' backbones (``teacher_backbones``) must be that architecture. ``None``: from scratch.
        trainable_from: train each student over a cached trunk (``hf_distill.layers.trunk``; timm
            EfficientNet/MobileNet students): its stages before this index are frozen and run once over the
            stage-4 training views, the cached teachers' views (the un-augmented image when ``cache_views`` is
            1, the K augmented views otherwise), and training runs the stages above, the adaptors and the head.
            Every distilled level must lie above the frozen stages. ``None``: the whole student trains on pixels.
        alpha / beta / gamma / temperature: the multi-level loss weights (released defaults 0.6 / 0.2 / 0.2 / 2).
        weight_decay: AdamW weight decay of every stage (released: 1e-3).
        logging_steps: Trainer logging interval.
        evaluate_starting_point: measure each untrained teacher and student before its first step.
        stop_on_plateau / plateau_fraction / plateau_min_gain: run stages 1, 3 and 4 to convergence: evaluate val
            top-1 every epoch (the joint teacher's: its mean over domains on the cached val maps), stop once it gained at most ``plateau_min_gain`` over the last ``plateau_fraction``
            of the steps (``*_epochs`` become the caps) and keep the best epoch
            (:class:`~hf_distill.trainers.callbacks.PlateauStoppingCallback`); never before
            ``plateau_min_epochs`` epochs.
        push_to_hub / hub_model_id: publish each student's embedder as ``<hub_model_id>-<domain>``.
    """

    output_dir: str = "outputs/mlfd"
    benchmark: str | None = None
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
    max_train_per_domain: int | None = None
    seed: int = 0
    stop_on_plateau: bool = False
    plateau_fraction: float = 0.2
    plateau_min_gain: float = 0.003
    plateau_min_epochs: float = 0.0
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
    student_pretrained: str | None = None
    trainable_from: int | None = None
    alpha: float = 0.6
    beta: float = 0.2
    gamma: float = 0.2
    temperature: float = 2.0
    weight_decay: float = 1e-3
    logging_steps: int = 20
    evaluate_starting_point: bool = True
    push_to_hub: bool = False
    hub_model_id: str | None = None

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
        if self.plateau_min_epochs < 0:
            raise ValueError(f"plateau_min_epochs must be >= 0, got {self.plateau_min_epochs}")
        if self.cache_views < 1:
            raise ValueError(f"cache_views must be at least 1, got {self.cache_views}")
        if self.trainable_from is not None and (
            not isinstance(self.trainable_from, int) or self.trainable_from < 0
        ):
            raise ValueError(
                f"trainable_from must be a block index >= 0 or None, got {self.trainable_from!r}"
            )
        if len(set(self.domains)) != len(self.domains) or not self.domains:
            raise ValueError(f"domains must be distinct and non-empty, got {self.domains}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id <user>/<name> (one repository per domain)")


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


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _training_arguments(
    args: MlfdStageArguments,
    folder: Path,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    evaluated: bool = False,
    steps_per_epoch: int = 0,
) -> MlfdTrainingArguments:
    # Stages with an evaluator (all: the joint teacher's is its val top-1 on the cached maps) can run to their
    # val plateau.
    plateau = (
        {
            "stop_on_plateau": True,
            "eval_strategy": "epoch",
            "load_best_model_at_end": True,
            "metric_for_best_model": MlfdClassifierEvaluator.primary_metric,
            "plateau_fraction": args.plateau_fraction,
            "plateau_min_gain": args.plateau_min_gain,
            "plateau_min_steps": math.ceil(args.plateau_min_epochs * steps_per_epoch),
        }
        if args.stop_on_plateau and evaluated
        else {}
    )
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
        evaluate_starting_point=args.evaluate_starting_point,
        **plateau,
    )


def _train(trainer: MlfdTrainer) -> None:
    checkpoint = last_complete_checkpoint(trainer.args.output_dir)
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


def _train_transform(args: MlfdStageArguments, mean: list[float], std: list[float]) -> ImageTransform:
    return ImageTransform(args.image_size, mean, std, train=True, resize_size=args.train_resize_size)


def _train_split(benchmark: Benchmark, domain: str, args: MlfdStageArguments) -> datasets.Dataset:
    return subset_split(benchmark.domains[domain]["train"], args.max_train_per_domain, SUBSET_SEED)


def _labels(split: datasets.Dataset) -> list[int]:
    return list(split.select_columns(["label"])["label"])


# ------------------------------------------------------------------------------------------------- stage 1


def classifier_config(
    args: MlfdStageArguments, index: int, num_classes: int, **overrides: Any
) -> MlfdClassifierConfig:
    """The classifier config of domain ``index`` (teacher, student and baseline share the architecture).

    Args:
        args: the stage arguments.
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
    args: MlfdStageArguments,
    epochs: float,
    learning_rate: float,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train a classifier (stage 1 or 4) with resume, evaluate it, save it with its ``metrics.json``.

    The trainer's evaluator measures the untrained model at step 0; that measure is kept as ``starting_point``.

    Args:
        model: the classifier.
        dataset: its training set (rows with ``pixel_values`` and ``labels``, plus cached maps in stage 4).
        folder: output folder.
        benchmark: for the evaluation.
        args: the stage arguments.
        epochs / learning_rate: the schedule.
        trainer_kwargs: passed to :class:`MlfdTrainer` (``loss``, ``domain_names``).
    """
    steps_per_epoch = math.ceil(len(dataset) / args.batch_size)
    training_args = _training_arguments(
        args, folder, epochs, learning_rate, args.batch_size, evaluated=True, steps_per_epoch=steps_per_epoch
    )
    evaluator = MlfdClassifierEvaluator(benchmark, args.eval_batch_size)
    trainer = MlfdTrainer(
        model=model, args=training_args, train_dataset=dataset, evaluator=evaluator, **trainer_kwargs
    )
    start = time.perf_counter()
    _train(trainer)
    metrics: dict[str, Any] = evaluate_classifier(model, benchmark, args.eval_batch_size)
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    metrics["train_loss"] = trainer.state.log_history[-1].get("train_loss")
    # What a reader needs to see the plateau: val top-1 against steps, the checkpoint kept, the steps run.
    metrics["curve"] = validation_curve(trainer.state.log_history, MlfdClassifierEvaluator.primary_metric)
    metrics["selected_step"] = selected_step(trainer.state.best_model_checkpoint)
    metrics["steps"] = trainer.state.global_step
    starting_point = starting_point_from_history(trainer.state.log_history)
    if starting_point:
        metrics["starting_point"] = starting_point
    _finish(model, folder, metrics)
    logger.info("%s: %s", folder, metrics)
    return metrics


def stage1_teachers(args: MlfdStageArguments, benchmark: Benchmark) -> dict[str, MlfdClassifierModel]:
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
            _finish(teacher, folder, evaluate_classifier(teacher, benchmark, args.eval_batch_size))
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
    args: MlfdStageArguments,
    benchmark: Benchmark,
    teachers: dict[str, MlfdClassifierModel],
    domain: str,
    split: str,
) -> FeatureCacheSpec:
    """What identifies the cache of ``domain``/``split``: teachers (and their weights), layers, preprocessing.

    Args:
        args: the stage arguments.
        benchmark: the benchmark (the spec records which training images are used).
        teachers: the stage-1 teachers by domain.
        domain: the cached domain.
        split: the cached split.
    """
    views = args.cache_views if split == "train" else 1
    names = list(teachers)
    folder = Path(args.output_dir) / "teachers"
    rows = None
    if split == "train":
        rows = subset_indices(len(benchmark.domains[domain]["train"]), args.max_train_per_domain, SUBSET_SEED)
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
            "source_rows": _digest(json.dumps(rows)),
            "teacher_weights": {name: _file_digest(folder / name / WEIGHTS_FILE) for name in names},
            "dtype": args.cache_dtype,
        },
    )


def teacher_extractor(teachers: dict[str, MlfdClassifierModel]) -> Any:
    """``pixels in [0, 1] -> {maps_<teacher>: map}``: each teacher normalises the batch its own way first.

    Args:
        teachers: the frozen teachers by name.
    """
    normalizers = {
        name: PixelNormalize(teacher.config.image_mean, teacher.config.image_std)
        for name, teacher in teachers.items()
    }

    def extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for name, teacher in teachers.items():
            inputs = normalizers[name](pixels.to(next(teacher.parameters()).device))
            features[map_column(name)] = teacher.feature_maps(inputs)[0]
        return features

    return extract


def _view_transform(args: MlfdStageArguments, views: int) -> ImageTransform:
    # Pixels in [0, 1]; each teacher (and the student) applies its own normalisation afterwards.
    if views > 1:
        return ImageTransform(
            args.image_size, (0, 0, 0), (1, 1, 1), train=True, resize_size=args.train_resize_size
        )
    return ImageTransform(args.image_size, (0, 0, 0), (1, 1, 1), resize_size=args.image_size)


def stage2_cache(
    args: MlfdStageArguments, benchmark: Benchmark, teachers: dict[str, MlfdClassifierModel]
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


def joint_teacher_config(
    args: MlfdStageArguments,
    benchmark: Benchmark,
    teachers: dict[str, MlfdClassifierModel],
    caches: dict[tuple[str, str], datasets.Dataset],
) -> JointTeacherConfig:
    """The joint teacher's architecture: one adaptor per teacher (its cached map's channels and grid), one head
    per domain, and the ``joint_*`` stage arguments.

    Args:
        args: the stage arguments.
        benchmark: the domains (their class counts).
        teachers: the stage-1 teachers by domain.
        caches: the stage-2 caches (the first domain's training cache gives the map grids).
    """
    names = list(teachers)
    first = caches[args.domains[0], "train"][0]
    return JointTeacherConfig(
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


def stage3_joint_teacher(
    args: MlfdStageArguments,
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
    columns = [map_column(name) for name in names]
    torch.manual_seed(args.seed)
    model = JointTeacherModel(joint_teacher_config(args, benchmark, teachers, caches))

    def maps(domain: str, split: str, labels: list[int]) -> CachedViewDataset:
        index = args.domains.index(domain)
        cache = caches[domain, split]
        return CachedViewDataset(cache, columns=columns, labels=labels, domain_id=index, in_memory=True)

    train = ConcatDataset(
        [maps(domain, "train", _labels(_train_split(benchmark, domain, args))) for domain in args.domains]
    )
    val = {domain: maps(domain, "val", _labels(benchmark.domains[domain]["val"])) for domain in args.domains}
    evaluator = JointTeacherEvaluator(val, args.eval_batch_size)
    training_args = _training_arguments(
        args,
        folder,
        args.joint_epochs,
        args.joint_learning_rate,
        args.joint_batch_size,
        evaluated=True,
        steps_per_epoch=math.ceil(len(train) / args.joint_batch_size),
    )
    # The evaluator measures val top-1 every epoch only under stop_on_plateau (``_training_arguments``).
    trainer = MlfdTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        domain_names=list(args.domains),
        evaluator=evaluator if args.stop_on_plateau else None,
    )
    start = time.perf_counter()
    _train(trainer)
    metrics: dict[str, Any] = {"train_seconds": round(time.perf_counter() - start, 1)}
    metrics.update({key: value for key, value in evaluator(model).items() if key != "val/top1"})
    if args.stop_on_plateau:
        metrics["curve"] = validation_curve(trainer.state.log_history, JointTeacherEvaluator.primary_metric)
        metrics["selected_step"] = selected_step(trainer.state.best_model_checkpoint)
        metrics["steps"] = trainer.state.global_step
    _finish(model, folder, metrics)
    logger.info("stage 3: joint teacher %s", metrics)
    return model.eval()


# ------------------------------------------------------------------------------------------------- stage 4


def student_config(
    args: MlfdStageArguments, benchmark: Benchmark, joint: JointTeacherModel, index: int
) -> MlfdClassifierConfig:
    """The config of domain ``index``'s student: its classifier, distilling one level per fused map
    (``student_levels``, default the last ones), each adapted to the fused maps' channels.

    Args:
        args: the stage arguments.
        benchmark: the domains (their class counts).
        joint: the trained joint teacher.
        index: position of the domain in ``args.domains``.
    """
    levels = args.student_levels or list(range(-(args.joint_fusion_levels + 1), 0))
    pretrained = args.student_pretrained
    if pretrained is not None and is_offline_name(pretrained):
        pretrained = str(resolve_offline_weights(pretrained).path)
    return classifier_config(
        args,
        index,
        benchmark.num_classes[args.domains[index]],
        feature_levels=levels,
        distill_channels=[joint.config.out_channels] * len(levels),
        pretrained_file=pretrained,
        trainable_from=args.trainable_from,
    )


def student_training_set(
    args: MlfdStageArguments,
    benchmark: Benchmark,
    joint: JointTeacherModel,
    caches: dict[tuple[str, str], datasets.Dataset],
    index: int,
    student: MlfdClassifierModel,
) -> CachedViewDataset:
    """Domain ``index``'s stage-4 training rows: the student's view of each image (``pixel_values``), its label,
    its domain id and the teachers' cached maps of that image (the joint teacher's inputs).

    With ``cache_views > 1`` the student sees exactly the cached augmented views; with one un-augmented cached
    view (the paper) it sees a fresh augmentation of the image. A student with ``trainable_from`` gets, instead of
    pixels, its frozen trunk's maps of the cached views (``trunk_maps``, :func:`student_trunk_cache`).

    Args:
        args: the stage arguments.
        benchmark: the domains.
        joint: the joint teacher (its teacher names give the map columns).
        caches: the stage-2 caches.
        index: position of the domain in ``args.domains``.
        student: the student (its normalisation; its trunk over a cached trunk).
    """
    config = student.config
    domain = args.domains[index]
    source = _train_split(benchmark, domain, args)
    columns = [map_column(name) for name in joint.config.teacher_names]
    rows = dict(labels=_labels(source), domain_id=index, in_memory=True)
    if config.trainable_from is not None:
        trunk = student_trunk_cache(args, caches, index, student, source)
        teacher_maps = caches[domain, "train"].select_columns(["source_index", "view", *columns])
        combined = datasets.concatenate_datasets(
            [teacher_maps, trunk.select_columns([TRUNK_MAPS]).rename_column(TRUNK_MAPS, "trunk_maps")], axis=1
        )
        return CachedViewDataset(combined, columns=[*columns, "trunk_maps"], **rows)
    if args.cache_views > 1:
        # The student sees exactly the cached (augmented) views, with its own normalisation.
        pixels = dict(
            view_transform=_view_transform(args, args.cache_views),
            normalize=PixelNormalize(config.image_mean, config.image_std),
        )
    else:
        pixels = dict(fresh_transform=_train_transform(args, config.image_mean, config.image_std))
    return CachedViewDataset(
        caches[domain, "train"],
        source,
        seed=args.seed,
        columns=columns,
        pixels_key="pixel_values",
        **rows,
        **pixels,
    )


def student_trunk_cache(
    args: MlfdStageArguments,
    caches: dict[tuple[str, str], datasets.Dataset],
    index: int,
    student: MlfdClassifierModel,
    source: datasets.Dataset,
) -> datasets.Dataset:
    """The student's frozen trunk maps of every stage-4 training view, row for row the views of the teachers'
    cache (same images, transform, seed and views), built once under ``cache/<domain>_train_trunk-<fingerprint>``.

    Args:
        args: the stage arguments.
        caches: the stage-2 caches.
        index: position of the domain in ``args.domains``.
        student: a student with ``trainable_from``.
        source: the domain's training images (the teachers' cache's source).
    """
    config = student.config
    split = config.trainable_from
    domain = args.domains[index]
    transform = _view_transform(args, args.cache_views)
    normalize = PixelNormalize(config.image_mean, config.image_std)
    teachers_cache = Path(args.output_dir) / "cache" / f"{domain}_train"
    teachers_spec = read_cache_metadata(teachers_cache)
    spec = FeatureCacheSpec(
        teacher=f"{domain} student {config.backbone} (trunk weights {trunk_digest(student.backbone, split)})",
        layer=f"trunk: blocks before {split}",
        preprocessing={"transform": repr(transform), "mean": config.image_mean, "std": config.image_std},
        views=args.cache_views,
        augmentation=teachers_spec["spec"]["augmentation"],
        # The views are the teachers' cache's: its fingerprint and seed pin them.
        extra={"views_of": teachers_spec["fingerprint"], "seed": args.seed},
    )
    folder = Path(args.output_dir) / "cache" / f"{domain}_train_trunk-{spec.fingerprint()}"
    if (folder / SPEC_FILE).is_file():
        trunk = load_feature_cache(folder, spec)
    else:
        backbone = student.backbone
        device = next(backbone.parameters()).device
        was_training = backbone.training
        backbone.eval()

        def extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
            # channels_last: EfficientNet/MobileNet depthwise convolutions run several times faster so on the CPU.
            inputs = normalize(pixels.to(device)).contiguous(memory_format=torch.channels_last)
            return {TRUNK_MAPS: trunk_forward(backbone, inputs, split).float().cpu().contiguous()}

        logger.info("stage 4: caching the %s student's trunk (blocks before %d)", domain, split)
        trunk = build_feature_cache(
            source.select_columns(["image"]),
            extract,
            transform,
            spec,
            folder,
            batch_size=args.eval_batch_size,
            seed=args.seed,
        )
        backbone.train(was_training)
    teachers = caches[domain, "train"].with_format(None).select_columns(["source_index", "view"])[:]
    mine = trunk.with_format(None).select_columns(["source_index", "view"])[:]
    if teachers != mine:
        raise ValueError(
            f"the trunk cache {folder} does not hold the views of the teachers' cache {teachers_cache} row for row; "
            "delete both and run stage 2 again"
        )
    return trunk


def stage4_students(
    args: MlfdStageArguments,
    benchmark: Benchmark,
    joint: JointTeacherModel,
    caches: dict[tuple[str, str], datasets.Dataset],
) -> dict[str, dict[str, Any]]:
    """Distil the joint teacher into one student per domain; export each as a universal embedder."""
    results = {}
    for index, domain in enumerate(args.domains):
        folder = Path(args.output_dir) / "students" / domain
        if _is_done(folder) and (folder / "embedder" / WEIGHTS_FILE).is_file():
            logger.info("stage 4: student %s exists in %s, skipping", domain, folder)
            results[domain] = _read_json(folder / METRICS_FILE)
            continue
        torch.manual_seed(args.seed)
        student = MlfdClassifierModel(student_config(args, benchmark, joint, index))
        dataset = student_training_set(args, benchmark, joint, caches, index, student)
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
        export_student(
            student,
            folder / "embedder",
            metrics,
            teachers=[f"{name} ({backbone})" for name, backbone in zip(args.domains, args.teacher_backbones)],
            hyperparameters={key: getattr(args, key) for key in CARD_HYPERPARAMETERS},
            repo_id=student_repo_id(args, domain),
        )
        results[domain] = metrics
    return results


CARD_HYPERPARAMETERS = (
    "alpha",
    "beta",
    "gamma",
    "temperature",
    "student_epochs",
    "student_learning_rate",
    "seed",
)


def student_repo_id(args: MlfdStageArguments, domain: str) -> str | None:
    """The Hub repository of ``domain``'s student: ``<hub_model_id>-<domain>`` (None without a hub_model_id)."""
    return f"{args.hub_model_id}-{domain}" if args.hub_model_id else None


# --------------------------------------------------------------------------------------------------- all


def run_mlfd_stages(args: MlfdStageArguments, benchmark: Benchmark) -> dict[str, Any]:
    """Run the four stages (each skipped when its output exists) and write ``results.json``.

    Args:
        args: the stage arguments.
        benchmark: the domains (e.g. from :func:`~hf_distill.data.load_domains`); ``args.domains`` are used.

    Returns:
        the content of ``results.json``: per-stage metrics.
    """
    missing = sorted(set(args.domains) - set(benchmark.domains))
    if missing:
        raise ValueError(f"domains {missing} are not in the benchmark (it has {sorted(benchmark.domains)})")
    start = time.perf_counter()
    teachers = stage1_teachers(args, benchmark)
    # The main process builds the caches; the others then find them complete and load them.
    with PartialState().main_process_first():
        caches = stage2_cache(args, benchmark, teachers)
    joint = stage3_joint_teacher(args, benchmark, teachers, caches)
    students = stage4_students(args, benchmark, joint, caches)
    output = Path(args.output_dir)
    results = {
        "teachers": {d: _read_json(output / "teachers" / d / METRICS_FILE) for d in args.domains},
        "joint_teacher": _read_json(output / "joint_teacher" / METRICS_FILE),
        "students": students,
        "seconds": round(time.perf_counter() - start, 1),
        "arguments": asdict(args),
    }
    if PartialState().is_main_process:
        _write_json(output / RESULTS_FILE, results)
    return results


def push_students(args: MlfdStageArguments, token: str | None = None) -> dict[str, str]:
    """Push every student's exported embedder to ``<hub_model_id>-<domain>`` (main process only).

    Args:
        args: the stage arguments of a finished run (``hub_model_id`` set).
        token: a write token; None uses ``$HF_TOKEN`` or the logged-in token.

    Returns:
        domain -> repository id.
    """
    if not args.hub_model_id:
        raise ValueError("push_students needs hub_model_id (<user>/<name>; one repository per domain)")
    pushed = {}
    for domain in args.domains:
        folder = Path(args.output_dir) / "students" / domain / "embedder"
        repo_id = student_repo_id(args, domain)
        if PartialState().is_main_process:
            push_embedder(folder, repo_id, token=token)
        pushed[domain] = repo_id
    PartialState().wait_for_everyone()
    return pushed


__all__ = [
    "MlfdStageArguments",
    "cache_spec",
    "classifier_config",
    "joint_teacher_config",
    "push_students",
    "run_mlfd_stages",
    "stage1_teachers",
    "stage2_cache",
    "stage3_joint_teacher",
    "stage4_students",
    "student_config",
    "student_training_set",
    "student_trunk_cache",
    "student_repo_id",
    "teacher_extractor",
    "train_classifier",
]
