"""Throughput of UNIC distillation steps: online teachers vs the feature cache, and vectorised teacher dropping vs
a per-image Python loop (the authors' released code loops over images).

    HF_HUB_OFFLINE=1 python benchmarks/bench_unic_step.py [--images 512] [--batch-size 128] [--threads 2]

Uses the two offline teachers (EfficientNet-Lite0, MobileNetV2 at 48x48) and the student of
``recipes/configs/unic_offline.yaml`` on training images of the offline benchmark. Prints images per second
(wall clock) and the machine's load average, since a shared machine slows every figure down.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import datasets
import torch
from torch.utils.data import DataLoader

from hf_distill.data import load_benchmark
from hf_distill.losses.standardization import FeatureStandardizer
from hf_distill.losses.teacher_dropping import teacher_dropping_coefficients
from hf_distill.losses.unic import UnicDistillationLoss
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel
from hf_distill.teachers import load_teachers
from hf_distill.trainers.unic import (
    CachedViewDataset,
    OnlineImageDataset,
    build_unic_feature_cache,
    teacher_shapes,
    teacher_targets,
    unic_train_transform,
)


def per_image_loop_coefficients(losses: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Teacher dropping one image at a time, as a Python loop (the reference the vectorised version replaces)."""
    batch, num_teachers = losses.shape
    coefficients = torch.zeros(batch, num_teachers)
    for image in range(batch):
        keep_index = int(losses[image].argmax())
        for teacher in range(num_teachers):
            if teacher == keep_index or float(torch.rand(())) >= drop_prob:
                coefficients[image, teacher] = 1.0
    return coefficients / coefficients.sum()


def bench_dropping(batch_sizes: list[int], num_teachers: int, repeats: int) -> None:
    print(f"\nteacher dropping, {num_teachers} teachers, p = 0.5 (images/s, best of {repeats})")
    print(f"{'batch':>6} {'vectorised':>14} {'per-image loop':>16} {'speed-up':>9}")
    for batch in batch_sizes:
        losses = torch.rand(batch, num_teachers)
        timings = {}
        for label, function in (
            ("vectorised", teacher_dropping_coefficients),
            ("loop", per_image_loop_coefficients),
        ):
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                function(losses, 0.5)
                best = min(best, time.perf_counter() - start)
            timings[label] = batch / best
        print(
            f"{batch:>6} {timings['vectorised']:>14,.0f} {timings['loop']:>16,.0f} "
            f"{timings['vectorised'] / timings['loop']:>8.0f}x"
        )


def _endless(loader: DataLoader):
    while True:
        yield from loader


def bench_steps(images: datasets.Dataset, batch_size: int, steps: int) -> None:
    teachers = load_teachers(
        [{"model": "efficientnet_lite0", "image_size": 48}, {"model": "mobilenet_v2", "image_size": 48}]
    )
    config = UnicStudentConfig(
        backbone_kwargs={"patch_size": 8, "depth": 4, "embed_dim": 192, "num_heads": 3},
        image_size=32,
        teachers=teacher_shapes(teachers),
    )
    transform = unic_train_transform(32)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache = build_unic_feature_cache(
            teachers, images, transform, os.path.join(cache_dir, "cache"), seed=0
        )
        build_s = time.perf_counter() - start
        cached = CachedViewDataset(cache, images, transform, seed=0)
        online = OnlineImageDataset(images, transform)
        print(
            f"\ncache build: {len(images)} images x 1 view through both teachers in {build_s:.1f} s "
            f"({len(images) / build_s:,.0f} images/s)"
        )
        print(f"distillation step, batch {batch_size}, {steps} timed steps after 1 warm-up (images/s):")
        for label, dataset, run_teachers in (
            ("online teachers", online, True),
            ("feature cache", cached, False),
        ):
            torch.manual_seed(0)
            student = UnicStudentModel(config).train()
            optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
            loss_fn = UnicDistillationLoss(list(teachers))
            standardizer = FeatureStandardizer(total_steps=steps + 1)
            mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(config.image_std).view(1, 3, 1, 1)
            loader = _endless(DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True))
            elapsed = 0.0
            for step in range(steps + 1):
                start = time.perf_counter()
                batch = next(loader)
                if run_teachers:
                    targets = teacher_targets(teachers, batch["images"])
                else:
                    targets = {
                        name: {kind: batch[f"{name}__{kind}"].float() for kind in ("cls", "patch")}
                        for name in teachers
                    }
                targets = {
                    name: {
                        kind: standardizer(f"{name}/{kind}", value, step) for kind, value in per_kind.items()
                    }
                    for name, per_kind in targets.items()
                }
                output = student((batch["images"] - mean) / std, output_predictions=True)
                loss = loss_fn(output.predictions, targets)["loss"]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step > 0:
                    elapsed += time.perf_counter() - start
            print(f"  {label:<16} {steps * batch_size / elapsed:>8,.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default=None, help="offline benchmark directory")
    parser.add_argument("--images", type=int, default=512, help="training images used for the step benchmark")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; load average before: {os.getloadavg()[0]:.1f}")
    bench_dropping([128, 1024, 4096], num_teachers=2, repeats=3)
    bench_dropping([1024], num_teachers=4, repeats=3)
    benchmark = load_benchmark(args.benchmark)
    per_domain = max(1, args.images // len(benchmark.domains))
    images = datasets.concatenate_datasets(
        [
            splits["train"].select(range(per_domain)).select_columns(["image"])
            for splits in benchmark.domains.values()
        ]
    )
    bench_steps(images, args.batch_size, args.steps)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
