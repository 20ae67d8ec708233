"""The starting point of a run: the untrained backbone, evaluated exactly like the trained embedder.

Every results table starts with the model training starts from. For a universal embedder that is the pretrained
backbone at the same input size, in two forms:

- ``full``: its pooled feature (e.g. 1280-d for EfficientNet-Lite0), L2-normalised — the strongest use of the
  backbone as it is;
- ``pca<d>``: a PCA of the L2-normalised features to ``d`` dimensions (64 by default), fitted on the training
  split and L2-normalised again — the fair comparison for a ``d``-dimensional trained embedding.

Both are :class:`~hf_distill.models.embedder.UniversalEmbedderModel` instances (the PCA is a linear head), so
they are evaluated, saved and loaded like any exported embedder. A run whose final primary metric is below its
starting point is reported with a warning by :func:`compare_to_starting_point`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from datasets import concatenate_datasets
from torch import nn

from hf_distill.evaluation.evaluator import RetrievalEvaluator, default_transform, embed_dataset

logger = logging.getLogger(__name__)

STARTING_POINT_PREFIX = "starting_point"


def _embedder_with_head(embedder: Any, embed_dim: int | None, feature_norm: bool) -> Any:
    """A copy of ``embedder`` (its backbone as it is: pixels in, or cached trunk maps in) under a new head
    configuration (the head is left initialised)."""
    config = copy.deepcopy(embedder.config)
    config.embed_dim = embed_dim
    # A new head was trained at no width yet: only its full width counts (and nothing truncates it).
    config.matryoshka_dims = None
    config.truncate_dim = None
    config.feature_norm = feature_norm
    config.normalize = True
    config.pretrained_file = None
    model = copy.deepcopy(embedder)
    model.config = config
    device = next(embedder.parameters()).device
    model.head = nn.Linear(embedder.feature_dim, embed_dim, device=device) if embed_dim else nn.Identity()
    return model.eval()


def full_feature_embedder(embedder: Any) -> Any:
    """``embedder``'s backbone with an identity head: the L2-normalised pooled feature.

    Args:
        embedder: a ``UniversalEmbedderModel`` (e.g. a method's ``export_embedder()`` before training).
    """
    return _embedder_with_head(embedder, None, feature_norm=False)


def fit_pca_head(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(dim, D)`` and bias ``(dim,)`` of the linear map projecting centred features on their top ``dim``
    principal directions (eigenvectors of the covariance, sign fixed so that each has a positive largest entry).

    Args:
        features: ``(N, D)`` feature rows.
        dim: number of components, at most ``min(N, D)``.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    count, width = features.shape
    if not 0 < dim <= min(count, width):
        raise ValueError(
            f"PCA to {dim} dimensions needs at least {dim} rows and columns, got {count}×{width}"
        )
    data = features.double()
    mean = data.mean(dim=0)
    centred = data - mean
    covariance = centred.T @ centred / max(count - 1, 1)
    _, vectors = torch.linalg.eigh(covariance)
    components = vectors[:, -dim:].flip(1).T.contiguous()  # largest eigenvalue first
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * signs
    return components.float(), (-(components @ mean)).float()


def pca_embedder(embedder: Any, fit_dataset: Any, dim: int = 64, batch_size: int = 256) -> Any:
    """``embedder``'s backbone followed by a PCA to ``dim`` dimensions of its L2-normalised features (fewer, with a
    warning, when there are fewer fitting images or features than ``dim``).

    Args:
        embedder: a ``UniversalEmbedderModel``.
        fit_dataset: a ``datasets.Dataset`` with an ``image`` column (the training images) to fit the PCA on.
        dim: output width.
        batch_size: images per forward pass while fitting.
    """
    full = full_feature_embedder(embedder)
    features = embed_dataset(full, fit_dataset, default_transform(full), batch_size)
    if dim > min(features.shape):
        logger.warning(
            "starting point: a PCA to %d dimensions needs at least %d fitting images and features; fitting %d "
            "dimensions on the %d images and %d features available",
            dim,
            dim,
            min(features.shape),
            features.shape[0],
            features.shape[1],
        )
        dim = min(features.shape)
    model = _embedder_with_head(embedder, dim, feature_norm=True)
    weight, bias = fit_pca_head(features, dim)
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    return model


def training_sample(benchmark: Any, max_images: int, seed: int = 0, split: str = "train") -> Any:
    """At most ``max_images`` training images, the same share from every domain, chosen with a local seed.

    Args:
        benchmark: a ``Benchmark``.
        max_images: total cap.
        seed: seed of the choice (a private generator: the global random state is not touched).
        split: the split to sample.
    """
    from hf_distill.data.loading import subset_split

    names = list(benchmark.domains)
    per_domain = max(max_images // max(len(names), 1), 1)
    parts = [
        subset_split(benchmark.domains[name][split], per_domain, seed).select_columns(["image"])
        for name in names
    ]
    return concatenate_datasets(parts)


def starting_point_embedders(
    embedder: Any, benchmark: Any, pca_dim: int = 64, max_fit_images: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """``{"full": ..., "pca<d>": ...}``: the untrained backbone as the two starting-point embedders.

    Args:
        embedder: the untrained model's ``UniversalEmbedderModel`` (its backbone and preprocessing are used).
        benchmark: supplies the training split the PCA is fitted on.
        pca_dim: width of the PCA embedder (the trained embedding's width).
        max_fit_images: training images the PCA is fitted on (spread evenly over domains).
        seed: seed of that sample.
    """
    fit = training_sample(benchmark, max_fit_images, seed)
    pca = pca_embedder(embedder, fit, pca_dim)
    return {"full": full_feature_embedder(embedder), f"pca{pca.config.embed_dim}": pca}


def evaluate_starting_point(
    embedder: Any,
    benchmark: Any,
    split: str = "test",
    pca_dim: int = 64,
    max_fit_images: int = 10_000,
    seed: int = 0,
    batch_size: int = 256,
    **evaluator_kwargs: Any,
) -> dict[str, float]:
    """Retrieval metrics of the starting-point embedders, keyed ``starting_point/<form>/<metric key>``.

    Args:
        embedder: the untrained model's ``UniversalEmbedderModel``.
        benchmark: the benchmark to evaluate on (and to fit the PCA on its training split).
        split: evaluation split.
        pca_dim / max_fit_images / seed: see :func:`starting_point_embedders`.
        batch_size: images per forward pass.
        **evaluator_kwargs: passed to :class:`~hf_distill.evaluation.RetrievalEvaluator` (``protocols``,
            ``domains``, ...).
    """
    with torch.random.fork_rng(devices=[]):
        embedders = starting_point_embedders(embedder, benchmark, pca_dim, max_fit_images, seed)
        evaluator = RetrievalEvaluator(benchmark, split=split, batch_size=batch_size, **evaluator_kwargs)
        results: dict[str, float] = {}
        for form, model in embedders.items():
            for key, value in evaluator(model).items():
                results[f"{STARTING_POINT_PREFIX}/{form}/{key}"] = value
    return results


def compare_to_starting_point(
    metrics: Mapping[str, float], starting: Mapping[str, float], metric: str, what: str = "the trained model"
) -> float | None:
    """``metrics[metric] - starting[metric]``; logs a loud warning when training ended below its start.

    Args:
        metrics: final metrics.
        starting: the same metrics of the starting point.
        metric: the key to compare (e.g. ``"merged/mean/R@1"``).
        what: how the warning names the final model.
    """
    if metric not in metrics or metric not in starting:
        return None
    delta = float(metrics[metric]) - float(starting[metric])
    if delta < 0:
        logger.warning(
            "!!! %s ends BELOW its starting point: %s %.4f < %.4f (%.4f) — training made the embedding worse; "
            "check backbone_norm, the learning rates and the data before using it",
            what,
            metric,
            metrics[metric],
            starting[metric],
            delta,
        )
    else:
        logger.info(
            "%s is above its starting point: %s %.4f vs %.4f (+%.4f)",
            what,
            metric,
            metrics[metric],
            starting[metric],
            delta,
        )
    return delta


__all__ = [
    "STARTING_POINT_PREFIX",
    "compare_to_starting_point",
    "evaluate_starting_point",
    "fit_pca_head",
    "full_feature_embedder",
    "pca_embedder",
    "starting_point_embedders",
    "training_sample",
]
