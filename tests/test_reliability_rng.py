"""Library steps that run only on a first use (weights conversion, feature-cache building) leave the global
random state alone, so a first run with a seed equals every later run with that seed."""

import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from hf_distill.teachers.cache import FeatureCacheSpec, build_feature_cache
from hf_distill.teachers.offline import available_offline_weights, resolve_offline_weights


def global_rng_state():
    return torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def assert_same_state(before, after):
    assert torch.equal(before[0], after[0]), "torch's global RNG was consumed"
    assert np.array_equal(before[1], after[1]), "numpy's global RNG was consumed"
    assert before[2] == after[2], "random's global RNG was consumed"


@pytest.mark.skipif("efficientnet_lite0" not in available_offline_weights(), reason="package not installed")
def test_converting_offline_weights_consumes_no_global_random_numbers(tmp_path):
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    before = global_rng_state()
    weights = resolve_offline_weights("efficientnet_lite0", tmp_path)  # empty cache: converts now
    assert weights.path.is_file()
    assert_same_state(before, global_rng_state())


def test_building_a_feature_cache_consumes_no_global_random_numbers(tmp_path):
    images = [Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)) for i in range(5)]
    dataset = Dataset.from_dict({"image": images})

    def transform(image):  # a random augmentation drawing from all three generators
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255
        return pixels + torch.rand(1) + float(np.random.rand()) + random.random()

    def extract(pixels):
        return {"mean": pixels.mean(dim=(2, 3))}

    spec = FeatureCacheSpec(teacher="toy", layer="mean", views=2, augmentation="noise")
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    before = global_rng_state()
    cache = build_feature_cache(dataset, extract, transform, spec, tmp_path / "cache", batch_size=2, seed=1)
    assert len(cache) == 10
    assert_same_state(before, global_rng_state())
