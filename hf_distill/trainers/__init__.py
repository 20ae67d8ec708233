"""Trainers: the shared ``DistillationTrainer`` and one subclass per method."""

from hf_distill.trainers.arguments import (
    DistillationTrainingArguments,
    MlfdTrainingArguments,
    UdonTrainingArguments,
    UnicTrainingArguments,
)
from hf_distill.trainers.base import DistillationTrainer, NonFiniteLossError, last_complete_checkpoint
from hf_distill.trainers.callbacks import SamplingCurvesCallback
from hf_distill.trainers.mlfd import MlfdTrainer
from hf_distill.trainers.udon import UdonTrainer
from hf_distill.trainers.unic import UnicTrainer

__all__ = [
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "MlfdTrainingArguments",
    "MlfdTrainer",
    "NonFiniteLossError",
    "SamplingCurvesCallback",
    "UdonTrainer",
    "UdonTrainingArguments",
    "UnicTrainer",
    "UnicTrainingArguments",
    "last_complete_checkpoint",
]
