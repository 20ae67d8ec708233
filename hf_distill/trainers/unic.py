"""``UnicTrainer``: multi-teacher feature distillation into a ViT student (UNIC, SPEC §3).

Each step the student predicts every teacher's CLS and patch tokens through its projector ladders; the targets
are standardised with running statistics (`FeatureStandardizer`), compared with the cosine + smooth-L1 loss
and weighed per image by teacher dropping. Targets come either from the frozen teachers run on the same
augmented view as the student (online, the default: any augmentation) or from a feature cache built once
with ``datasets.map`` for a fixed number of augmented views per image (`build_unic_feature_cache`), so that
distillation epochs run only the student.

Training batches hold ``images``: ``(batch, 3, H, W)`` floats in ``[0, 1]`` at the student's resolution. The
trainer normalises them for the student, and each teacher resizes and normalises them its own way. Over a cached
trunk (``trainable_from``) they hold ``pixel_values`` instead, the student's trunk maps of the cached view.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import datasets
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from hf_distill.data.decoding import to_rgb
from hf_distill.layers.pixels import PixelNormalize
from hf_distill.losses.standardization import FeatureStandardizer
from hf_distill.losses.unic import UnicLoss
from hf_distill.models.unic import TOKEN_TYPES, UnicStudentConfig, UnicStudentModel
from hf_distill.registry import MethodCard, MethodSpec, get_method, register_method
from hf_distill.teachers.cache import (
    CachedViewDataset,
    FeatureCacheSpec,
    build_feature_cache,
    load_feature_cache,
    read_cache_metadata,
)
from hf_distill.teachers.loader import FrozenTeacher
from hf_distill.trainers.arguments import UnicTrainingArguments
from hf_distill.trainers.base import DistillationTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "CachedViewDataset",
    "cached_training_set",
    "OnlineImageDataset",
    "UnicTrainer",
    "build_unic_feature_cache",
    "target_column",
    "teacher_shapes",
    "teacher_targets",
    "unic_cache_spec",
    "unic_train_transform",
]


def target_column(teacher: str, token_type: str) -> str:
    """Name of a teacher's cached target column (``"<teacher>__cls"`` / ``"<teacher>__patch"``)."""
    return f"{teacher}__{token_type}"


@torch.no_grad()
def teacher_targets(teachers: nn.ModuleDict, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Run every teacher on the same ``[0, 1]`` images.

    Args:
        teachers: name → `FrozenTeacher`.
        images: ``(batch, 3, H, W)`` in ``[0, 1]``.

    Returns:
        name → ``{"cls": (batch, D), "patch": (batch, h * w, D)}``.
    """
    targets = {}
    for name, teacher in teachers.items():
        output = teacher(teacher.prepare(images))
        targets[name] = {"cls": output.global_features, "patch": output.tokens}
    return targets


class UnicTrainer(DistillationTrainer):
    """Trainer of a `UnicStudentModel` with a :class:`~hf_distill.losses.UnicLoss`.

    What is the trainer's own: the teacher targets (online teachers or cached columns) and their running
    standardisation (`FeatureStandardizer`, saved in every checkpoint).

    Args:
        *args: passed to `DistillationTrainer` (``model`` must be a `UnicStudentModel`).
        teachers: name → `FrozenTeacher` for online targets; ``None`` when every batch carries cached targets.
        loss: a :class:`~hf_distill.losses.UnicLoss` (default: the released code's settings).
        **kwargs: passed to `DistillationTrainer` (``evaluator``, ``train_dataset`` …).
    """

    method = "unic"

    def __init__(
        self,
        *args: Any,
        teachers: nn.ModuleDict | None = None,
        loss: UnicLoss | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, loss=loss, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, get_method(self.method).model_class):
            raise TypeError(f"UnicTrainer trains a UnicStudentModel, got {type(model).__name__}")
        if self.loss is None:
            self.loss = UnicLoss(list(model.config.teachers))
        self.teacher_names = list(model.config.teachers)
        if teachers is not None:
            missing = sorted(set(self.teacher_names) - set(teachers))
            if missing:
                raise ValueError(
                    f"the student predicts teachers {missing} that were not given to the trainer"
                )
            for name in self.teacher_names:
                expected = tuple(model.config.teachers[name]["grid"])
                if tuple(teachers[name].grid) != expected:
                    raise ValueError(
                        f"teacher {name!r} gives a {teachers[name].grid} token grid, the student was built for {expected}"
                    )
            teachers = teachers.to(self.args.device)
        self.teachers = teachers
        if list(self.loss.teacher_names) != self.teacher_names:
            raise ValueError(
                f"the loss weighs teachers {self.loss.teacher_names}, the student predicts {self.teacher_names}"
            )
        self.standardizer = FeatureStandardizer(
            1,
            self.args.momentum_start,
            self.args.momentum_end,
            min_std_ratio=self.args.standardize_min_std_ratio,
        )
        self.register_checkpoint_state("feature_standardizer", self.standardizer)
        self._student_norm = PixelNormalize(model.config.image_mean, model.config.image_std).to(
            self.args.device
        )
        self._draws = (-1, 0)

    def _dropping_generator(self, device: torch.device) -> torch.Generator:
        # Teacher dropping draws from its own generator seeded by (seed, step, rank, micro-batch), so a resumed
        # run draws exactly what the uninterrupted one did.
        step, micro = self._draws
        micro = micro + 1 if step == self.state.global_step else 0
        self._draws = (self.state.global_step, micro)
        seed = hash((self.args.seed, self.state.global_step, self.args.process_index, micro)) % (2**63)
        return torch.Generator(device=device).manual_seed(seed)

    def targets_from_inputs(self, inputs: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Cached targets carried by the batch, or the online teachers' outputs on ``inputs["images"]``."""
        columns = [
            target_column(name, token_type) for name in self.teacher_names for token_type in TOKEN_TYPES
        ]
        if all(column in inputs for column in columns):
            return {
                name: {
                    token_type: inputs[target_column(name, token_type)].float() for token_type in TOKEN_TYPES
                }
                for name in self.teacher_names
            }
        if self.teachers is None:
            missing = [column for column in columns if column not in inputs]
            raise KeyError(
                f"the batch lacks cached target columns {missing} and the trainer has no online teachers"
            )
        return teacher_targets(self.teachers, inputs["images"])

    def compute_losses(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """UNIC loss of one batch (see the module docstring)."""
        if "pixel_values" in inputs:
            # Over a cached trunk the batch carries the student's input itself: the trunk's maps of the view.
            pixels = inputs["pixel_values"]
        else:
            pixels = self._student_norm(inputs["images"])
        targets = self.targets_from_inputs(inputs)
        if self.args.standardize_targets:
            self.standardizer.total_steps = max(int(self.state.max_steps or 1), 1)
            step = self.state.global_step
            targets = {
                name: {
                    token_type: self.standardizer(f"{name}/{token_type}", value, step, update=model.training)
                    for token_type, value in per_type.items()
                }
                for name, per_type in targets.items()
            }
        generator = self._dropping_generator(pixels.device)
        return self.loss(model, {"pixel_values": pixels, "targets": targets}, generator=generator)


def unic_train_transform(image_size: int, scale_min: float = 0.35, color_jitter: float = 0.0) -> v2.Compose:
    """The student's (and teachers') training view: PIL → ``(3, image_size, image_size)`` in ``[0, 1]``.

    A random resized crop (scale ``[scale_min, 1]``) and a horizontal flip; with ``color_jitter > 0`` also the
    DINO-style colour jitter (applied with probability 0.8) and random greyscale (0.2) used by the paper.

    Args:
        image_size: output side.
        scale_min: smallest crop area fraction.
        color_jitter: brightness/contrast/saturation strength (hue gets a quarter of it); 0 disables.
    """
    steps = [
        v2.Lambda(to_rgb),
        v2.PILToTensor(),
        v2.RandomResizedCrop(image_size, scale=(scale_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if color_jitter > 0:
        jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter / 2, color_jitter / 4)
        steps += [v2.RandomApply([jitter], p=0.8), v2.RandomGrayscale(p=0.2)]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


class OnlineImageDataset(Dataset):
    """Images of a ``datasets.Dataset`` turned into ``{"images": [0, 1] tensor}`` by a (random) transform.

    Args:
        dataset: rows with an ``image`` column.
        transform: PIL image → ``(3, H, W)`` floats in ``[0, 1]`` (e.g. ``ImageTransform`` with mean 0 and
            std 1); random for training.
    """

    def __init__(self, dataset: datasets.Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.images = dataset.select_columns(["image"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"images": self.transform(self.images[int(index)]["image"])}


def unic_cache_spec(
    teachers: nn.ModuleDict,
    transform: Callable[[Any], torch.Tensor],
    views: int,
    dataset_id: str,
    dtype: str = "float16",
) -> FeatureCacheSpec:
    """The `FeatureCacheSpec` of a UNIC cache: teachers, their preprocessing, the view transform and data.

    Args:
        teachers: name → `FrozenTeacher`.
        transform: the view transform (its ``repr`` records the augmentation).
        views: augmented views per image.
        dataset_id: identifies the source images (e.g. benchmark path, domains and the dataset fingerprint).
        dtype: storage dtype.
    """
    return FeatureCacheSpec(
        teacher=[f"{name}={teacher.description}" for name, teacher in teachers.items()],
        layer="cls+patch",
        preprocessing={name: teacher.preprocessing.to_dict() for name, teacher in teachers.items()},
        views=views,
        augmentation=repr(transform),
        extra={"dataset": dataset_id, "dtype": dtype},
    )


def build_unic_feature_cache(
    teachers: nn.ModuleDict,
    dataset: datasets.Dataset,
    transform: Callable[[Any], torch.Tensor],
    cache_dir: str | os.PathLike,
    views: int = 1,
    seed: int = 0,
    batch_size: int = 128,
    dataset_id: str | None = None,
    dtype: str = "float16",
) -> datasets.Dataset:
    """Load the UNIC feature cache in ``cache_dir``, building it first when it does not exist.

    Args:
        teachers: name → `FrozenTeacher`.
        dataset: source images (column ``image``).
        transform: PIL → ``[0, 1]`` tensor at the student's resolution, random when ``views > 1``.
        cache_dir: cache directory (a mismatching existing cache raises an error naming the differing fields).
        views: augmented views per image.
        seed: seed of the views.
        batch_size: images per teacher forward pass.
        dataset_id: identifies the source images in the spec (default: the dataset's fingerprint).
        dtype: storage dtype of the targets (``"float16"`` halves the disk use).
    """
    spec = unic_cache_spec(teachers, transform, views, dataset_id or dataset._fingerprint, dtype)
    if os.path.isdir(cache_dir):
        metadata = read_cache_metadata(cache_dir)
        if metadata.get("seed") != seed:
            raise ValueError(
                f"feature cache {cache_dir} was built with seed {metadata.get('seed')}, not {seed}"
            )
        return load_feature_cache(cache_dir, spec)
    device = next(teachers.parameters()).device

    def extract(images: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = teacher_targets(teachers, images.to(device))
        return {
            target_column(name, t): value
            for name, per_type in targets.items()
            for t, value in per_type.items()
        }

    return build_feature_cache(dataset, extract, transform, spec, cache_dir, batch_size, seed, dtype=dtype)


def cached_training_set(
    teachers: nn.ModuleDict,
    images: datasets.Dataset,
    transform: Callable[[Any], torch.Tensor],
    source: dict[str, Any],
    views: int = 1,
    seed: int = 0,
    dtype: str = "float16",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    trunk: Any = None,
) -> CachedViewDataset:
    """The student's training set from the feature cache: cached teacher targets next to the same views.

    Over a cached trunk (``trunk``, a :class:`~hf_distill.data.trunk_cache.TrunkCache` built with
    ``concatenated_view_seeds`` over the same images, transform, views and seed) a row holds the targets and, as
    ``pixel_values``, the student's trunk maps of the same view instead of the view's pixels.

    The cache lives in ``cache_dir`` (default ``$HF_DISTILL_CACHE/unic_features/<spec fingerprint>``) and is built
    on first use; its spec records the teachers, the view transform, the number of views, the dtype and where the
    images come from (``source`` plus the images' fingerprint), so a different setting never reads a stale cache.

    Args:
        teachers: the frozen teachers by name.
        images: the training images (column ``image``).
        transform: the view transform (image → ``[0, 1]`` tensor).
        source: JSON-serialisable description of where ``images`` come from (benchmark, domains, subset).
        views / seed / dtype: cached views per image, their seed, the storage dtype.
        cache_dir: where the cache goes.
        batch_size: images per teacher forward while building.
        trunk: the student's cached trunk, or None (pixels).
    """
    from hf_distill.teachers import hf_distill_cache_dir

    dataset_id = json.dumps({**source, "fingerprint": images._fingerprint}, sort_keys=True)
    spec = unic_cache_spec(teachers, transform, views, dataset_id, dtype)
    cache_dir = cache_dir or str(hf_distill_cache_dir() / "unic_features" / spec.fingerprint())
    cache = build_unic_feature_cache(
        teachers, images, transform, cache_dir, views=views, seed=seed, batch_size=batch_size,
        dataset_id=dataset_id, dtype=dtype,
    )  # fmt: skip
    logger.info("training on %d cached views from %s", len(cache), cache_dir)
    if trunk is None:
        return CachedViewDataset(cache, images, transform, seed)
    rows = cache.with_format(None).select_columns(["source_index", "view"])[:]
    if list(zip(rows["source_index"], rows["view"])) != [tuple(row) for row in trunk.train_rows]:
        raise ValueError(
            f"the trunk cache's training views do not match the teacher cache in {cache_dir} (another image set, "
            "view count or order); build both from the same training images with concatenated_view_seeds"
        )
    maps = trunk.train_dataset.with_format(None).select_columns(["pixel_values"])
    combined = datasets.concatenate_datasets([cache.with_format(None), maps], axis=1)
    return CachedViewDataset(combined.with_format("torch"))


def teacher_shapes(teachers: dict[str, FrozenTeacher]) -> dict[str, dict[str, Any]]:
    """The ``UnicStudentConfig.teachers`` entry of each teacher (``global_dim``, ``token_dim``, ``grid``)."""
    return {
        name: {"global_dim": teacher.global_dim, "token_dim": teacher.token_dim, "grid": list(teacher.grid)}
        for name, teacher in teachers.items()
    }


UNIC_CARD = MethodCard(
    title="UNIC — Universal Classification models via multi-teacher distillation (Sariyildiz et al., ECCV 2024)",
    summary=(
        "Trained with UNIC: a student distilled from several frozen teachers through a ladder of projectors, "
        "with feature standardisation and teacher dropping."
    ),
    citation="""@inproceedings{sariyildiz2024unic,
  title     = {{UNIC}: Universal Classification Models via Multi-teacher Distillation},
  author    = {Sariyildiz, Mert Bulent and Weinzaepfel, Philippe and Lucas, Thomas and Larlus, Diane and Kalantidis, Yannis},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}""",
)

register_method(
    MethodSpec(
        name="unic",
        config_class=UnicStudentConfig,
        model_class=UnicStudentModel,
        loss_class=UnicLoss,
        training_arguments_class=UnicTrainingArguments,
        trainer_class=UnicTrainer,
        card=UNIC_CARD,
    )
)
