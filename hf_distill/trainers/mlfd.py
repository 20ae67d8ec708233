"""``MlfdTrainer``: the three trainable MLFD stages (SPEC §4) on the shared :class:`DistillationTrainer`.

- stage 1, an individual teacher: an :class:`MlfdClassifierModel` on images, cross-entropy only (also the
  dataset-specific student trained without distillation, the baseline MLFD is compared with);
- stage 3, the joint teacher: a :class:`JointTeacherModel` on cached teacher maps of every dataset;
- stage 4, a student: an :class:`MlfdClassifierModel` on images, with the frozen joint teacher's logits and fused
  maps as targets (:class:`~hf_distill.losses.multilevel.MultiLevelDistillationLoss`). The joint teacher runs on
  the cached maps of the very image (and view) in the batch, so no individual teacher runs during training.

The trainer picks the stage from the model it trains and whether a joint teacher is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import datasets
import torch
from torch import nn
from torch.utils.data import Dataset

from hf_distill.losses.multilevel import MultiLevelDistillationLoss
from hf_distill.models.mlfd import JointTeacherModel, MlfdClassifierModel
from hf_distill.teachers.cache import transform_view, view_seed
from hf_distill.trainers.base import DistillationTrainer

MAP_COLUMN_PREFIX = "maps_"


def map_column(teacher_name: str) -> str:
    """Name of the cache column holding ``teacher_name``'s feature map.

    Args:
        teacher_name: a name from ``JointTeacherConfig.teacher_names``.
    """
    return f"{MAP_COLUMN_PREFIX}{teacher_name}"


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
    """Trains an MLFD individual teacher, the joint teacher or a student (see the module docstring).

    Args:
        *args: passed to :class:`DistillationTrainer`.
        joint_teacher: the trained joint teacher (stage 4 only); frozen and kept in eval mode.
        distillation_loss: the stage-4 loss (default: released weights α=0.6, β=0.2, γ=0.2, T=2).
        **kwargs: passed to :class:`DistillationTrainer`.
    """

    def __init__(
        self,
        *args: Any,
        joint_teacher: JointTeacherModel | None = None,
        distillation_loss: MultiLevelDistillationLoss | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.joint_teacher = joint_teacher
        if joint_teacher is not None:
            joint_teacher.to(self.args.device).eval().requires_grad_(False)
            self._check_student_matches(self.accelerator.unwrap_model(self.model), joint_teacher)
        self.distillation_loss = distillation_loss or MultiLevelDistillationLoss()

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

    def _teacher_maps(self, inputs: dict[str, Any], names: Sequence[str]) -> list[torch.Tensor]:
        missing = [map_column(name) for name in names if map_column(name) not in inputs]
        if missing:
            raise KeyError(f"the batch lacks the cached teacher map column(s) {missing}")
        return [inputs[map_column(name)] for name in names]

    def compute_losses(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Stage 1: cross-entropy; stage 3: the joint teacher's cross-entropy; stage 4: the multi-level loss.

        Args:
            model: the model being trained.
            inputs: the batch (``pixel_values``/``labels``, plus ``maps_*`` and ``domain_ids`` in stages 3-4).
        """
        unwrapped = self.accelerator.unwrap_model(model)
        if isinstance(unwrapped, JointTeacherModel):
            maps = self._teacher_maps(inputs, unwrapped.config.teacher_names)
            output = model(teacher_maps=maps, domain_ids=inputs["domain_ids"], labels=inputs["labels"])
            return {"loss": output.loss}
        if self.joint_teacher is None:
            output = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])
            return {"loss": output.loss}
        joint_config = self.joint_teacher.config
        with torch.no_grad():
            teacher = self.joint_teacher(
                teacher_maps=self._teacher_maps(inputs, joint_config.teacher_names),
                domain_ids=inputs["domain_ids"],
            )
        num_classes = joint_config.num_classes[joint_config.datasets.index(unwrapped.config.dataset)]
        output = model(pixel_values=inputs["pixel_values"], output_feature_maps=True)
        return self.distillation_loss(
            output.logits,
            inputs["labels"],
            teacher.logits[:, :num_classes],
            output.distill_maps,
            teacher.fused_maps,
        )


__all__ = ["CachedMapsDataset", "CachedTargetsDataset", "MlfdTrainer", "load_cached_maps", "map_column"]
