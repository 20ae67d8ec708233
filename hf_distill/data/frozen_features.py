"""Frozen-backbone features of a benchmark's splits, computed once and cached on disk.

Training a small head on frozen features (the "learning pays" check of ``benchmarks/benchmark_fitness.py``,
head sweeps) needs every image embedded once by the frozen backbone. ``benchmark_features`` does that per
domain and split with ``hf_distill.teachers.cache.build_feature_cache`` and reuses the cache on the next
call; the cache's spec records the backbone, the preprocessing and a digest of the benchmark's
``benchmark.json`` entry, so a rebuilt domain or another input size never reads stale features.

Layout: ``<cache_root>/<backbone>-<image_size>px/<domain>/<split>/`` (one feature cache each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from hf_distill.data.domains import Benchmark
from hf_distill.data.transforms import ImageTransform
from hf_distill.teachers.cache import FeatureCacheSpec, build_feature_cache, load_feature_cache
from hf_distill.teachers.offline import create_offline_model, resolve_offline_weights

logger = logging.getLogger(__name__)

FEATURE_COLUMN = "features"
DEFAULT_CACHE_ROOT = Path("outputs") / "feature_cache"


def domain_digest(benchmark: Benchmark, domain: str) -> str:
    """A digest of one domain's build facts (seed, scale, image size, counts, class names) in ``benchmark.json``.

    It changes when that domain is rebuilt differently, and only then: rebuilding another domain keeps the cache.
    """
    metadata = benchmark.metadata
    facts = {key: metadata.get(key) for key in ("seed", "scale", "image_size")}
    facts["domain"] = metadata.get("domains", {}).get(domain)
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def frozen_feature_spec(
    backbone: str, transform: ImageTransform, benchmark: Benchmark, domain: str, split: str
) -> FeatureCacheSpec:
    """The cache spec of one split's features: backbone, preprocessing, benchmark digest, domain and split."""
    return FeatureCacheSpec(
        teacher=backbone,
        layer="pooled (timm num_classes=0)",
        preprocessing={
            "image_size": transform.image_size,
            "resize_size": transform.resize_size,
            "mean": list(transform.mean),
            "std": list(transform.std),
        },
        extra={
            "benchmark": domain_digest(benchmark, domain),
            "domain": domain,
            "split": split,
            "num_images": len(benchmark.domains[domain][split]),
        },
    )


def benchmark_features(
    benchmark: Benchmark,
    backbone: str = "efficientnet_lite0",
    image_size: int = 64,
    splits: Sequence[str] = ("train", "val", "test"),
    cache_root: str | os.PathLike = DEFAULT_CACHE_ROOT,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Pooled features of a frozen offline backbone for every domain and split, cached under ``cache_root``.

    Images are resized to ``image_size`` (no crop: the benchmark's images are already square) and normalised
    with the backbone's pretraining statistics. The backbone is built only when some cache is missing.

    Args:
        benchmark: a loaded benchmark (``hf_distill.data.load_benchmark``).
        backbone: an offline weights name (``hf_distill.teachers.offline``), e.g. ``"efficientnet_lite0"``.
        image_size: input side for the backbone.
        splits: splits to embed (each must exist in every domain).
        cache_root: where caches live (see the module docstring).
        batch_size: images per forward pass.
        device: where the backbone runs (default: CUDA when available, else CPU).

    Returns:
        ``{domain: {split: float32 tensor (num_images, num_features)}}`` in the splits' row order.
    """
    weights = resolve_offline_weights(backbone)
    transform = ImageTransform(image_size, weights.mean, weights.std, train=False, resize_size=image_size)
    root = Path(cache_root) / f"{backbone}-{image_size}px"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = None

    def extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        # channels_last: the depthwise convolutions of EfficientNet/MobileNet run several times faster on CPU.
        pixels = pixels.to(device).contiguous(memory_format=torch.channels_last)
        return {FEATURE_COLUMN: model(pixels).float().cpu()}

    features: dict[str, dict[str, torch.Tensor]] = {}
    for domain, splits_of_domain in benchmark.domains.items():
        features[domain] = {}
        for split in splits:
            if split not in splits_of_domain:
                raise ValueError(f"domain {domain!r} has no split {split!r}; it has {list(splits_of_domain)}")
            spec = frozen_feature_spec(backbone, transform, benchmark, domain, split)
            cache_dir = root / domain / split
            if (cache_dir / "feature_cache.json").is_file():
                cache = load_feature_cache(cache_dir, spec)
            else:
                if model is None:
                    model = create_offline_model(backbone, num_classes=0).eval()
                    model = model.to(device, memory_format=torch.channels_last)
                logger.info(
                    "embedding %s/%s (%d images) with %s",
                    domain,
                    split,
                    len(splits_of_domain[split]),
                    backbone,
                )
                cache = build_feature_cache(
                    splits_of_domain[split].select_columns(["image"]),
                    extract,
                    transform,
                    spec,
                    cache_dir,
                    batch_size=batch_size,
                )
            # Numpy slicing reads the fixed-length feature column as one 2-D array (fast); rows are in image order.
            features[domain][split] = torch.from_numpy(cache.with_format("numpy")[:][FEATURE_COLUMN]).float()
    return features
