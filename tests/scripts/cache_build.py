"""Builds a feature cache of the tiny benchmark's digits on every process of an ``accelerate launch``, for
tests/test_cache_multiprocess.py (two augmented views per image, features of a fixed function of the pixels)."""

import argparse

import torch
from accelerate import PartialState

from hf_distill.data import ImageTransform, load_benchmark
from hf_distill.teachers.cache import FeatureCacheSpec
from hf_distill.teachers.sharded_cache import build_feature_cache_on_processes

SPEC = FeatureCacheSpec(
    teacher="pooled-pixels", layer="avgpool4", views=2, augmentation="resize-crop-flip 16"
)


def extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image features computed image by image (no batch-size-dependent kernels): exact across processes."""
    return {
        "pooled": torch.stack([torch.nn.functional.avg_pool2d(p, 4).flatten() for p in pixels]),
        "mean": torch.stack([p.mean() for p in pixels]).unsqueeze(1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--domain", default="digits")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    # On a machine without GPUs the processes join a gloo group only when asked for CPU training.
    PartialState(cpu=not torch.cuda.is_available())
    dataset = load_benchmark(args.benchmark).domains[args.domain]["train"]
    build_feature_cache_on_processes(
        dataset,
        extract,
        ImageTransform(16, train=True),
        SPEC,
        args.cache_dir,
        batch_size=args.batch_size,
        seed=3,
    )


if __name__ == "__main__":
    main()
