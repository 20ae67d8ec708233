"""A benchmark seen through a frozen backbone trunk: its output maps cached once per image (or view).

Fine-tuning the top of a pretrained backbone (``trainable_from``, ``hf_distill.layers.trunk``) trains from the
maps the frozen lower blocks produce. They are computed once with the fingerprinted feature cache
(``hf_distill.teachers.cache``): ``views`` augmented views of every training image (training transform), one
view of every evaluation image (evaluation transform), and one of the training images the starting point's PCA
is fitted on, the same sample ``hf_distill.evaluation.starting_point.training_sample`` draws. The result is

- ``train_dataset``: ``pixel_values`` (the maps), ``labels``, ``domain_ids`` — numpy-formatted, so the trainers
  read whole batches of it as contiguous arrays;
- ``benchmark``: a ``Benchmark`` with the same domains, classes and evaluation pairs whose ``image`` column holds
  the maps, so every evaluator, the starting point included, runs on it without a second pass over the images
  (the evaluated model reads maps: ``hf_distill.layers.trunk.over_cached_trunk``).

Layout: ``<cache_root>/<domain>/<split>-<spec fingerprint>/`` (a changed backbone, cut, transform, subset or
benchmark build gives another fingerprint, hence another folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from hf_distill.data.domains import Benchmark
from hf_distill.data.frozen_features import domain_digest
from hf_distill.data.loading import subset_indices
from hf_distill.layers.trunk import check_trainable_from, trunk_forward, trunk_modules
from hf_distill.teachers.cache import SPEC_FILE, FeatureCacheSpec, build_feature_cache, load_feature_cache

logger = logging.getLogger(__name__)

MAPS_COLUMN = "maps"


@dataclass
class TrunkCache:
    """What :func:`cache_trunk` returns.

    Args:
        train_dataset: training rows (``pixel_values`` = maps, ``labels``, ``domain_ids``), views of an image
            in consecutive rows.
        train_domain_ids: the domain id of every training row.
        benchmark: the evaluation benchmark over maps (``image`` = maps).
        train_rows: ``(source index, view)`` of every training row, the pair its view was seeded with
            (:func:`~hf_distill.teachers.cache.view_seed`).
    """

    train_dataset: datasets.Dataset
    train_domain_ids: list[int]
    benchmark: Benchmark
    train_rows: list[tuple[int, int]] = field(default_factory=list)


def _digest(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def trunk_digest(backbone: nn.Module, trainable_from: int) -> str:
    """A digest of the trunk's weights (its maps depend on them only), for the spec of a trunk cache.

    Args:
        backbone: a timm backbone (``hf_distill.layers.trunk``).
        trainable_from: index of the first block that trains.
    """
    weights = hashlib.sha256()
    for module in trunk_modules(backbone, trainable_from):
        for name, tensor in module.state_dict().items():
            weights.update(name.encode("utf-8"))
            weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return weights.hexdigest()[:16]


def cache_trunk(
    benchmark: Benchmark,
    backbone: nn.Module,
    trainable_from: int,
    backbone_id: str,
    train_transform: Callable[[Any], torch.Tensor],
    eval_transform: Callable[[Any], torch.Tensor],
    cache_root: str | os.PathLike,
    views: int = 1,
    max_train_per_domain: int | None = None,
    subset_seed: int = 0,
    fit_images: int = 5000,
    seed: int = 0,
    batch_size: int = 128,
    concatenated_view_seeds: bool = False,
) -> TrunkCache:
    """Cache ``backbone``'s trunk maps of a benchmark (built where missing, reused where present).

    Args:
        benchmark: the benchmark (its ``train`` split and every split its evaluation pairs name).
        backbone: the pretrained backbone (its trunk runs in eval mode, without gradient).
        trainable_from: first stage/block that trains (``hf_distill.layers.trunk``).
        backbone_id: the backbone's architecture, for the spec (its trunk's weights are digested here).
        train_transform: the training augmentation; ``views`` seeded views of every training image.
        eval_transform: the evaluation transform (evaluation splits and the starting point's fitting sample).
        cache_root: where the caches live.
        views: views per training image.
        max_train_per_domain / subset_seed: the recipe's seeded subset of each training split.
        fit_images: training images the starting point's PCA is fitted on (as the recipe's
            ``starting_point_fit_images``).
        seed: seed of the training views.
        batch_size: images per trunk forward.
        concatenated_view_seeds: seed the training views by each image's index in the concatenation of every
            domain's training subset (domain order) instead of its index in its domain: the views a cache built
            over that concatenation makes with the same transform and seed (UNIC's teacher targets), so that a row
            of each is one view of one image.
    """
    check_trainable_from(backbone, trainable_from)
    # The maps depend on the trunk's weights only: their digest goes into every spec.
    trunk_id = f"{backbone_id} (trunk weights {trunk_digest(backbone, trainable_from)})"
    backbone.eval()
    device = next(backbone.parameters()).device

    def extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        # channels_last: EfficientNet/MobileNet depthwise convolutions run several times faster so on the CPU.
        pixels = pixels.to(device).contiguous(memory_format=torch.channels_last)
        return {MAPS_COLUMN: trunk_forward(backbone, pixels, trainable_from).float().cpu().contiguous()}

    def cached(
        domain: str, split: str, rows: list[int], transform: Any, split_views: int, offset: int = 0
    ) -> datasets.Dataset:
        source = benchmark.domains[domain][split]
        extra = {
            "benchmark": domain_digest(benchmark, domain),
            "domain": domain,
            "split": split,
            "rows": _digest(rows) if len(rows) != len(source) else len(source),
            "seed": seed,
        }
        if concatenated_view_seeds and transform is train_transform:
            extra["view_index_offset"] = offset  # other views: another cache
        spec = FeatureCacheSpec(
            teacher=trunk_id,
            layer=f"trunk: blocks before {trainable_from}",
            preprocessing={"transform": repr(transform)},
            views=split_views,
            augmentation=repr(transform) if split_views > 1 or transform is train_transform else None,
            extra=extra,
        )
        folder = Path(cache_root) / domain / f"{split}-{spec.fingerprint()}"
        if (folder / SPEC_FILE).is_file():
            return load_feature_cache(folder, spec)
        images = source.select_columns(["image"])
        if len(rows) != len(source):
            images = images.select(rows)
        logger.info(
            "caching the trunk maps of %s/%s (%d images x %d views)", domain, split, len(rows), split_views
        )
        return build_feature_cache(
            images, extract, transform, spec, folder, batch_size=batch_size, seed=seed, index_offset=offset
        )

    train_parts, train_domain_ids, train_rows, cached_domains, offset = [], [], [], {}, 0
    eval_splits = sorted(
        {part for pairs in benchmark.eval_pairs.values() for pair in pairs.values() for part in pair}
    )
    per_fit_domain = max(fit_images // max(len(benchmark.domains), 1), 1)
    for domain_id, domain in enumerate(benchmark.domains):
        splits = benchmark.domains[domain]
        train = splits["train"]
        rows = subset_indices(len(train), max_train_per_domain, subset_seed)
        offset_here = offset if concatenated_view_seeds else 0
        cache = cached(domain, "train", rows, train_transform, views, offset_here).with_format("numpy")
        offset += len(rows)
        labels = np.asarray(train.select_columns(["label"])["label"], dtype=np.int64)[rows]
        indexed = cache.select_columns(["source_index", "view"])[:]
        source = np.asarray(indexed["source_index"]) - offset_here
        train_rows.extend(zip(indexed["source_index"].tolist(), indexed["view"].tolist()))
        part = cache.select_columns([MAPS_COLUMN]).rename_column(MAPS_COLUMN, "pixel_values")
        part = part.add_column("labels", labels[source].tolist())
        part = part.add_column("domain_ids", [domain_id] * len(part))
        train_parts.append(part)
        train_domain_ids.extend([domain_id] * len(part))
        # The starting point's PCA sample: the rows training_sample draws from the full training split.
        fit_rows = subset_indices(len(train), per_fit_domain, 0)
        evaluation = {
            "train": _as_images(cached(domain, "train", fit_rows, eval_transform, 1), train, fit_rows)
        }
        for split in eval_splits:
            if split in splits:
                all_rows = list(range(len(splits[split])))
                evaluation[split] = _as_images(
                    cached(domain, split, all_rows, eval_transform, 1), splits[split], all_rows
                )
        cached_domains[domain] = datasets.DatasetDict(evaluation)
    train_dataset = datasets.concatenate_datasets(train_parts).with_format("numpy")
    cached_benchmark = Benchmark(
        domains=cached_domains,
        num_classes=dict(benchmark.num_classes),
        eval_pairs=benchmark.eval_pairs,
        metadata=benchmark.metadata,
        path=benchmark.path,
    )
    return TrunkCache(train_dataset, train_domain_ids, cached_benchmark, train_rows)


def _as_images(cache: datasets.Dataset, split: datasets.Dataset, rows: list[int]) -> datasets.Dataset:
    """A cache of one view per image as an evaluation split: ``image`` = maps, ``label`` and ``domain`` kept."""
    others = [name for name in ("label", "domain") if name in split.column_names]
    source = split.select_columns(others)
    if len(rows) != len(split):
        # Flattened: an axis-1 concatenation with an index mapping turns the maps' Array3D type into nested
        # lists, which read about a hundred times slower and cannot be concatenated with another domain's maps.
        source = source.select(rows).flatten_indices()
    maps = cache.select_columns([MAPS_COLUMN]).rename_column(MAPS_COLUMN, "image")
    combined = datasets.concatenate_datasets([maps, source], axis=1)
    return combined.with_format("numpy", columns=["image"], output_all_columns=True)
