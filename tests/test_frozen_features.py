"""Cached frozen-backbone features of a benchmark (hf_distill.data.frozen_features)."""

import json

import pytest
import torch

from hf_distill.data.benchmark import FAST_BENCHMARK, build_offline_benchmark, load_benchmark
from hf_distill.data.frozen_features import benchmark_features
from hf_distill.data.transforms import ImageTransform
from hf_distill.teachers.offline import create_offline_model, resolve_offline_weights


def test_features_are_the_backbone_outputs_and_are_read_back_from_the_cache(tmp_path):
    bench = build_offline_benchmark(
        tmp_path / "bench", scale=0.02, domains=["lowres_digits"], benchmark=FAST_BENCHMARK
    )
    benchmark = load_benchmark(bench)
    cache_root = tmp_path / "cache"
    first = benchmark_features(benchmark, image_size=32, splits=("test",), cache_root=cache_root)
    features = first["lowres_digits"]["test"]
    test = benchmark.domains["lowres_digits"]["test"]
    assert features.shape == (len(test), 1280) and features.dtype == torch.float32

    # The same numbers as running the backbone directly on the resized, normalised images, in row order.
    weights = resolve_offline_weights("efficientnet_lite0")
    transform = ImageTransform(32, weights.mean, weights.std, resize_size=32)
    model = create_offline_model("efficientnet_lite0", num_classes=0).eval()
    with torch.inference_mode():
        direct = model(torch.stack([transform(image) for image in test.select(range(3))["image"]]))
    torch.testing.assert_close(features[:3], direct, atol=1e-4, rtol=1e-4)

    # A second call reads the cache (the spec file is untouched) and returns the same tensor.
    spec_file = cache_root / "efficientnet_lite0-32px" / "lowres_digits" / "test" / "feature_cache.json"
    written = spec_file.stat().st_mtime_ns
    again = benchmark_features(benchmark, image_size=32, splits=("test",), cache_root=cache_root)
    assert spec_file.stat().st_mtime_ns == written
    torch.testing.assert_close(again["lowres_digits"]["test"], features, atol=0, rtol=0)


def test_a_rebuilt_domain_never_reads_stale_features(tmp_path):
    cache_root = tmp_path / "cache"
    digests = []
    for seed in (0, 1):
        path = build_offline_benchmark(
            tmp_path / f"bench{seed}",
            seed=seed,
            scale=0.02,
            domains=["lowres_digits"],
            benchmark=FAST_BENCHMARK,
        )
        benchmark = load_benchmark(path)
        root = cache_root / f"seed{seed}"
        features = benchmark_features(benchmark, image_size=32, splits=("test",), cache_root=root)
        spec = json.loads(
            (root / "efficientnet_lite0-32px/lowres_digits/test/feature_cache.json").read_text()
        )
        digests.append(spec["spec"]["extra"]["benchmark"])
        assert len(features["lowres_digits"]["test"]) == len(benchmark.domains["lowres_digits"]["test"])
    assert digests[0] != digests[1]
    # Reading seed 1's benchmark with seed 0's cache is refused, naming the field that differs.
    with pytest.raises(ValueError, match="different spec.*extra"):
        benchmark_features(benchmark, image_size=32, splits=("test",), cache_root=cache_root / "seed0")
