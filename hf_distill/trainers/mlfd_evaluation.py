"""Evaluation and export of MLFD's models (SPEC §4), used by the stage runner (:mod:`.mlfd_stages`).

A classifier (an individual teacher, the no-distillation baseline or a student) is measured by the top-1 accuracy
of its head on ``val`` (held-out images of the training classes) and by the retrieval metrics of its exported
embedder on ``test`` (unseen classes, the domain's own index: the ``separate`` protocol).
:class:`MlfdClassifierEvaluator` gives that measure the evaluator call signature, so a trainer measures its
untrained model at step 0 (the starting point) exactly like the trained one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState

from hf_distill.data import ImageTransform
from hf_distill.data.domains import Benchmark
from hf_distill.evaluation import RetrievalEvaluator
from hf_distill.hub.push import save_embedder
from hf_distill.models.mlfd import JointTeacherModel, MlfdClassifierConfig, MlfdClassifierModel
from hf_distill.teachers.cache import CachedViewDataset, map_column

STARTING_POINT_FORM = "untrained"


def eval_transform(config: MlfdClassifierConfig) -> ImageTransform:
    """The deterministic input pipeline of a classifier (its own size and normalisation).

    Args:
        config: the classifier's configuration.
    """
    return ImageTransform(
        config.image_size, config.image_mean, config.image_std, resize_size=config.resize_size
    )


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
    model: MlfdClassifierModel, benchmark: Benchmark, batch_size: int = 256
) -> dict[str, float]:
    """Val top-1 accuracy and test retrieval metrics (unseen classes) of one domain's classifier.

    Args:
        model: the classifier; its ``config.dataset`` names the domain.
        benchmark: the benchmark.
        batch_size: images per forward pass.

    Returns:
        ``{"val/top1", "test/R@1", "test/mP@5", ...}``.
    """
    domain = model.config.dataset
    if domain not in benchmark.domains:
        raise ValueError(
            f"classifier of domain {domain!r}, but the benchmark has {sorted(benchmark.domains)}"
        )
    transform = eval_transform(model.config)
    metrics = {"val/top1": top1_accuracy(model, benchmark.domains[domain]["val"], transform, batch_size)}
    evaluator = RetrievalEvaluator(
        benchmark,
        split="test",
        protocols=("separate",),
        transform=transform,
        batch_size=batch_size,
        domains=[domain],
    )
    retrieval = evaluator(model.export_embedder().to(next(model.parameters()).device))
    metrics.update(
        {f"test/{key.split('/')[-1]}": value for key, value in retrieval.items() if f"/{domain}/" in key}
    )
    return metrics


class MlfdClassifierEvaluator:
    """:func:`evaluate_classifier` behind the evaluator call signature of the trainers.

    Given to a stage-1 or stage-4 :class:`~hf_distill.trainers.mlfd.MlfdTrainer`, it measures the untrained
    classifier before the first step (``evaluate_starting_point``), logged at step 0.

    Args:
        benchmark: the benchmark.
        batch_size: images per forward pass.
    """

    primary_metric = "val/top1"

    def __init__(self, benchmark: Benchmark, batch_size: int = 256) -> None:
        self.benchmark = benchmark
        self.batch_size = batch_size

    def __call__(
        self, model: MlfdClassifierModel, output_path: str | None = None, epoch: float = -1, steps: int = -1
    ) -> dict[str, float]:
        return evaluate_classifier(model, self.benchmark, self.batch_size)


class JointTeacherEvaluator:
    """The joint teacher's val top-1 on the cached val maps of every domain, behind the trainers' evaluator call.

    ``val/top1`` (its ``primary_metric``) is the unweighted mean over domains, ``<domain>/val/top1`` each
    domain's: what stage 3 needs to run to its plateau and keep its best epoch.

    Args:
        splits: ``{domain: CachedViewDataset}`` of the val maps, read ``in_memory`` with labels and domain ids.
        batch_size: rows per forward pass.
    """

    primary_metric = "val/top1"

    def __init__(self, splits: dict[str, CachedViewDataset], batch_size: int = 256) -> None:
        self.splits = splits
        self.batch_size = batch_size

    def __call__(
        self, model: JointTeacherModel, output_path: str | None = None, epoch: float = -1, steps: int = -1
    ) -> dict[str, float]:
        metrics = {
            f"{domain}/val/top1": joint_teacher_accuracy(model, split, self.batch_size)
            for domain, split in self.splits.items()
        }
        metrics["val/top1"] = sum(metrics.values()) / len(metrics)
        return metrics


@torch.no_grad()
def joint_teacher_accuracy(model: JointTeacherModel, dataset: CachedViewDataset, batch_size: int) -> float:
    """Top-1 accuracy of the joint teacher on the cached maps of one split.

    Args:
        model: the joint teacher.
        dataset: the split's cached maps with ``labels`` and ``domain_id`` (read ``in_memory``).
        batch_size: rows per forward pass.
    """
    if dataset.features is None or dataset.labels is None or dataset.domain_id is None:
        raise ValueError(
            "joint_teacher_accuracy needs a CachedViewDataset in_memory, with labels and domain_id"
        )
    model.eval()
    device = next(model.parameters()).device
    labels = torch.tensor(dataset.labels)
    correct = 0
    for start in range(0, len(dataset), batch_size):
        rows = slice(start, start + batch_size)
        maps = [dataset.features[map_column(name)][rows].to(device) for name in model.config.teacher_names]
        domain_ids = torch.full((len(labels[rows]),), dataset.domain_id, device=device)
        logits = model(teacher_maps=maps, domain_ids=domain_ids).logits
        correct += int((logits.argmax(-1).cpu() == labels[rows]).sum())
    return correct / len(dataset)


def export_student(
    student: MlfdClassifierModel,
    folder: str | Path,
    metrics: Mapping[str, Any],
    teachers: Sequence[str],
    hyperparameters: Mapping[str, Any],
    repo_id: str | None = None,
) -> Path:
    """Save a student as a self-contained universal embedder with its model card (main process only).

    Args:
        student: the trained student.
        folder: output folder.
        metrics: its evaluation metrics (``test/*`` go into the card; ``starting_point`` too, first row).
        teachers: the teachers, as shown on the card.
        hyperparameters: settings shown on the card.
        repo_id: the Hub repository the card's usage example loads.
    """
    domain = student.config.dataset

    def retrieval(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}separate/{domain}/{key.split('/', 1)[1]}": value
            for key, value in values.items()
            if key.startswith("test/")
        }

    card = dict(
        method="mlfd",
        model_name=f"mlfd-{domain}-{student.config.backbone}",
        repo_id=repo_id,
        metrics=retrieval(metrics),
        starting_point=retrieval(metrics.get("starting_point", {}), f"starting_point/{STARTING_POINT_FORM}/"),
        teachers=list(teachers),
        domains=[domain],
        hyperparameters=dict(hyperparameters),
    )
    folder = Path(folder)
    if PartialState().is_main_process:
        save_embedder(student.export_embedder(), folder, card=card)
    PartialState().wait_for_everyone()
    return folder


__all__ = [
    "MlfdClassifierEvaluator",
    "eval_transform",
    "evaluate_classifier",
    "export_student",
    "joint_teacher_accuracy",
    "top1_accuracy",
]
