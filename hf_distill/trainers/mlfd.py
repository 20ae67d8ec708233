"""``MlfdTrainer``: the three trainable MLFD stages (SPEC §4) on the shared :class:`DistillationTrainer`.

- stage 1, an individual teacher: an :class:`MlfdClassifierModel` on images, cross-entropy only (also the
  dataset-specific student trained without distillation, the baseline MLFD is compared with);
- stage 3, the joint teacher: a :class:`JointTeacherModel` on cached teacher maps of every dataset;
- stage 4, a student: an :class:`MlfdClassifierModel` on images, with the frozen joint teacher's logits and fused
  maps as targets. The joint teacher runs on the cached maps of the very image (and view) in the batch, so no
  individual teacher runs during training.

:class:`~hf_distill.losses.MlfdLoss` picks the stage's loss from the model it trains and whether it holds a
joint teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import datasets
import torch
from torch import nn
from torch.utils.data import Dataset

from hf_distill.losses.mlfd import MlfdLoss
from hf_distill.models.mlfd import (
    JointTeacherConfig,
    JointTeacherModel,
    MlfdClassifierConfig,
    MlfdClassifierModel,
)
from hf_distill.registry import MethodCard, MethodSpec, register_method
from hf_distill.teachers.cache import map_column, transform_view, view_seed
from hf_distill.trainers.arguments import MlfdTrainingArguments
from hf_distill.trainers.base import DistillationTrainer


def load_cached_maps(
    cache: datasets.Dataset, teacher_names: Sequence[str], chunk_size: int = 1024
) -> dict[str, torch.Tensor]:
    """Read the map columns of a feature cache into memory, in the cache's storage dtype.

    Row-by-row reads of fixed-shape Arrow arrays cost milliseconds each, far more than a training step of the
    small joint teacher; read in chunks once, random access is free.

    Args:
        cache: a feature cache (from :func:`~hf_distill.teachers.cache.build_feature_cache`).
        teacher_names: the teachers whose ``maps_<name>`` columns are read.
        chunk_size: rows converted at a time.
    """
    columns = [map_column(name) for name in teacher_names]
    missing = [column for column in columns if column not in cache.column_names]
    if missing:
        raise ValueError(f"the feature cache has no column(s) {missing}; it has {cache.column_names}")
    maps = cache.select_columns(columns).with_format("numpy")
    chunks: dict[str, list[torch.Tensor]] = {column: [] for column in columns}
    for start in range(0, len(maps), chunk_size):
        batch = maps[start : start + chunk_size]
        for column in columns:
            chunks[column].append(torch.from_numpy(batch[column]))
    return {column: torch.cat(parts) for column, parts in chunks.items()}


class CachedMapsDataset(Dataset):
    """Cached teacher maps with the label and dataset id of their source image (joint-teacher training, stage 3).

    Args:
        cache: the feature cache of one dataset split, rows ``(source_index, view, maps_*)``.
        labels: the labels of the source split, indexed by ``source_index``.
        domain_id: the dataset's index among the joint teacher's datasets.
        teacher_names: the joint teacher's teachers, whose map columns are returned.
    """

    def __init__(
        self, cache: datasets.Dataset, labels: Sequence[int], domain_id: int, teacher_names: Sequence[str]
    ) -> None:
        self.maps = load_cached_maps(cache, teacher_names)
        indices = cache.with_format(None).select_columns(["source_index", "view"])[:]
        self.source_index = [int(index) for index in indices["source_index"]]
        self.view = [int(view) for view in indices["view"]]
        if self.source_index and max(self.source_index) >= len(labels):
            raise ValueError(
                f"the cache refers to source image {max(self.source_index)} but the source split has {len(labels)}"
            )
        self.labels = [int(labels[index]) for index in self.source_index]
        self.domain_id = domain_id

    def __len__(self) -> int:
        return len(self.source_index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {column: values[index] for column, values in self.maps.items()}
        item.update(labels=self.labels[index], domain_ids=self.domain_id)
        return item


class CachedTargetsDataset(CachedMapsDataset):
    """A dataset's images paired with the cached teacher maps of the same image and view (stage 4).

    Row ``r`` of the cache is view ``view[r]`` of source image ``source_index[r]``. With one un-augmented view
    per image (the paper's default), the student sees ``train_transform`` (a fresh random augmentation) while the
    targets come from the un-augmented image. With several cached augmented views, the student sees exactly the
    view the targets were computed from: ``view_transform`` re-run with the view's seed, then ``normalize``.

    Args:
        cache: the feature cache of the dataset, rows ``(source_index, view, maps_*)``.
        source: the source split (columns ``image`` and ``label``).
        domain_id: the dataset's index among the joint teacher's datasets.
        teacher_names: the joint teacher's teachers, whose map columns are returned.
        train_transform: image -> student pixels, used when ``view_transform`` is None.
        view_transform: the cache's (random) view transform, when the student is to see the cached views.
        normalize: the student's normalisation applied after ``view_transform``.
        seed: the seed the cache was built with.
    """

    def __init__(
        self,
        cache: datasets.Dataset,
        source: datasets.Dataset,
        domain_id: int,
        teacher_names: Sequence[str],
        train_transform: Callable[[Any], torch.Tensor] | None = None,
        view_transform: Callable[[Any], torch.Tensor] | None = None,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if (train_transform is None) == (view_transform is None):
            raise ValueError("give exactly one of train_transform (fresh augmentation) and view_transform")
        if view_transform is not None and normalize is None:
            raise ValueError("view_transform needs the student's normalize function")
        super().__init__(cache, source.select_columns(["label"])["label"], domain_id, teacher_names)
        self.images = source.select_columns(["image"])
        self.train_transform, self.view_transform, self.normalize = train_transform, view_transform, normalize
        self.seed = seed

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        source_index = self.source_index[index]
        image = self.images[source_index]["image"]
        if self.view_transform is not None:
            seed = view_seed(self.seed, source_index, self.view[index])
            item["pixel_values"] = self.normalize(transform_view(self.view_transform, image, seed))
        else:
            item["pixel_values"] = self.train_transform(image)
        return item


class MlfdTrainer(DistillationTrainer):
    """Trains an MLFD individual teacher, the joint teacher or a student with an :class:`~hf_distill.losses.MlfdLoss`
    (see the module docstring); the stage runner (:mod:`hf_distill.trainers.mlfd_stages`) chains the stages.

    Args:
        *args: passed to :class:`DistillationTrainer`.
        loss: the stage's :class:`~hf_distill.losses.MlfdLoss` (default: cross-entropy, stages 1 and 3; give one
            with ``joint_teacher`` for stage 4).
        **kwargs: passed to :class:`DistillationTrainer`.
    """

    method = "mlfd"

    def __init__(self, *args: Any, loss: MlfdLoss | None = None, **kwargs: Any) -> None:
        super().__init__(*args, loss=loss if loss is not None else MlfdLoss(), **kwargs)
        joint_teacher = self.loss.joint_teacher
        if joint_teacher is not None:
            joint_teacher.to(self.args.device)
            self._check_student_matches(self.accelerator.unwrap_model(self.model), joint_teacher)

    @staticmethod
    def _check_student_matches(student: nn.Module, joint_teacher: JointTeacherModel) -> None:
        if not isinstance(student, MlfdClassifierModel):
            raise TypeError(
                f"a joint teacher distils into an MlfdClassifierModel, got {type(student).__name__}"
            )
        levels = joint_teacher.config.fusion_levels + 1
        if len(student.config.feature_levels) != levels:
            raise ValueError(
                f"the joint teacher has {levels} fused map(s) but the student distils "
                f"{len(student.config.feature_levels)} level(s) ({student.config.feature_levels}); give the "
                "student one feature level per fusion level"
            )
        if student.config.dataset not in joint_teacher.config.datasets:
            raise ValueError(
                f"student dataset {student.config.dataset!r} has no head in the joint teacher "
                f"({joint_teacher.config.datasets})"
            )


MLFD_CARD = MethodCard(
    title=(
        "MLFD — Multi-Level Feature Distillation of joint teachers trained on distinct image datasets "
        "(Iordache et al., WACV 2025)"
    ),
    summary=(
        "Trained with MLFD: dataset-specific teachers are fused into a joint teacher on cached features, "
        "whose multi-level fused maps and logits are distilled into the student."
    ),
    citation="""@inproceedings{iordache2025mlfd,
  title     = {Multi-Level Feature Distillation of Joint Teachers Trained on Distinct Image Datasets},
  author    = {Iordache, Adrian and Alexe, Bogdan and Ionescu, Radu Tudor},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2025}
}""",
)

register_method(
    MethodSpec(
        name="mlfd",
        config_class=MlfdClassifierConfig,
        model_class=MlfdClassifierModel,
        loss_class=MlfdLoss,
        training_arguments_class=MlfdTrainingArguments,
        trainer_class=MlfdTrainer,
        card=MLFD_CARD,
        extra_models=((JointTeacherConfig, JointTeacherModel),),
    )
)


__all__ = ["CachedMapsDataset", "CachedTargetsDataset", "MlfdTrainer", "load_cached_maps"]
