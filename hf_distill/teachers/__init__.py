"""Frozen teachers: loading (timm, transformers, local files, offline pretrained weights, hf_distill models)
and the on-disk feature cache."""

from hf_distill.teachers.loader import (
    FrozenTeacher,
    TeacherLoadError,
    TeacherOutput,
    TeacherPreprocessing,
    TeacherSpec,
    load_teacher,
    load_teachers,
)
from hf_distill.teachers.offline import (
    OfflineWeights,
    OfflineWeightsError,
    available_offline_weights,
    create_offline_model,
    hf_distill_cache_dir,
    resolve_offline_weights,
)

__all__ = [
    "FrozenTeacher",
    "OfflineWeights",
    "OfflineWeightsError",
    "TeacherLoadError",
    "TeacherOutput",
    "TeacherPreprocessing",
    "TeacherSpec",
    "available_offline_weights",
    "create_offline_model",
    "hf_distill_cache_dir",
    "load_teacher",
    "load_teachers",
    "resolve_offline_weights",
]
