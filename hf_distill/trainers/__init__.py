"""Trainers: the shared ``DistillationTrainer`` and one subclass per method."""

from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.base import DistillationTrainer, NonFiniteLossError, last_complete_checkpoint
from hf_distill.trainers.callbacks import SamplingCurvesCallback
from hf_distill.trainers.mlfd import MlfdTrainer
from hf_distill.trainers.udon import UdonTrainer
from hf_distill.trainers.unic import UnicTrainer, UnicTrainingArguments

__all__ = [
    "DistillationTrainer",
    "MlfdTrainer",
    "NonFiniteLossError",
    "SamplingCurvesCallback",
    "UdonTrainer",
    "UdonTrainingArguments",
    "UnicTrainer",
    "UnicTrainingArguments",
    "last_complete_checkpoint",
]
