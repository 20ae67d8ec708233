"""UNIC distillation steps: from the feature cache against the student-only limit, and online teachers.

    HF_HUB_OFFLINE=1 python benchmarks/bench_unic_step.py [--images 512] [--batch-size 128] [--steps 4]
        [--vitb-batch-size 4] [--vitb-steps 2] [--skip-vitb] [--threads 2]

Three ways to run the same step (``UnicTrainer.compute_losses`` + backward + AdamW step), timed in turns
(interleaved, median per step, one warm-up step each):

- ``student-only``: the limit. The batch, images and targets alike, is already in memory; only the student runs.
- ``feature cache``: batches come from a ``DataLoader`` over `CachedViewDataset` (Arrow read of the targets,
  the augmented view regenerated from the source image), in the main process (``num_workers=0``).
- ``online teachers``: batches from a ``DataLoader`` over `OnlineImageDataset`; the teachers run every step.

Settings: the offline teachers (EfficientNet-Lite0, MobileNetV2 at 48 px) with the student of
``recipes/configs/unic_offline.yaml`` on training images of the offline benchmark; and two ViT-B/16 teachers
with a ViT-B/16 student at 224 px, random weights (the compute ratio a GPU user of the paper setting sees).
Also times teacher dropping, vectorised against the authors' per-image Python loop. Prints ``ROW`` lines for
``benchmarks/run_all.py`` and the machine's load average, since a shared machine slows every figure down.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import datasets
import timm
import torch
from table import emit_row, interleaved_medians, load_average
from torch.utils.data import DataLoader

from hf_distill.data import load_benchmark
from hf_distill.losses.teacher_dropping import teacher_dropping_coefficients
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel
from hf_distill.teachers import FrozenTeacher, TeacherPreprocessing, load_teachers
from hf_distill.trainers.unic import (
    CachedViewDataset,
    OnlineImageDataset,
    UnicTrainer,
    UnicTrainingArguments,
    build_unic_feature_cache,
    teacher_shapes,
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


def vitb_teachers() -> torch.nn.ModuleDict:
    """Two ViT-B/16 teachers at 224 px with random weights (the paper's DINO + DeiT-III architectures)."""
    teachers = torch.nn.ModuleDict()
    for name, architecture in (("dino", "vit_base_patch16_224.dino"), ("deit3", "deit3_base_patch16_224")):
        model = timm.create_model(architecture, pretrained=False, num_classes=0)
        teachers[name] = FrozenTeacher(
            name, model, "timm", TeacherPreprocessing(image_size=224), f"random:{architecture}"
        )
    return teachers


def _trainer(student: UnicStudentModel, teachers, output_dir: str, total_steps: int) -> UnicTrainer:
    args = UnicTrainingArguments(
        output_dir=output_dir, max_steps=total_steps, report_to="none", use_cpu=True, seed=0
    )
    return UnicTrainer(model=student, args=args, teachers=teachers)


def bench_steps(
    label: str,
    teachers: torch.nn.ModuleDict,
    config: UnicStudentConfig,
    images: datasets.Dataset,
    batch_size: int,
    steps: int,
) -> dict[str, float]:
    """Seconds per step of the three modes (see the module docstring), and print them."""
    transform = unic_train_transform(config.image_size)
    with tempfile.TemporaryDirectory() as work_dir:
        start = time.perf_counter()
        cache = build_unic_feature_cache(
            teachers, images, transform, os.path.join(work_dir, "cache"), seed=0, batch_size=batch_size
        )
        build_s = time.perf_counter() - start
        cached = CachedViewDataset(cache, images, transform, seed=0)
        online = OnlineImageDataset(images, transform)
        loader_kwargs = dict(batch_size=batch_size, shuffle=True, drop_last=True)
        in_memory = [batch for batch, _ in zip(DataLoader(cached, **loader_kwargs), range(steps + 1))]
        sources = {
            "student-only": iter(in_memory * 2),
            "feature cache": _endless(DataLoader(cached, **loader_kwargs)),
            "online teachers": _endless(DataLoader(online, **loader_kwargs)),
        }
        functions = {}
        for mode, batches in sources.items():
            torch.manual_seed(0)
            student = UnicStudentModel(config).train()
            trainer = _trainer(student, teachers if mode == "online teachers" else None, work_dir, steps + 1)
            optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

            def step(batches=batches, student=student, trainer=trainer, optimizer=optimizer) -> None:
                loss = trainer.compute_losses(student, next(batches))["loss"]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                trainer.state.global_step += 1

            functions[mode] = step
        seconds = interleaved_medians(functions, steps)
    print(
        f"\n{label}: cache build {len(images)} images x 1 view in {build_s:.1f} s; batch {batch_size}, "
        f"median of {steps} interleaved steps after 1 warm-up (images/s):"
    )
    for mode, value in seconds.items():
        print(f"  {mode:<16} {batch_size / value:>8,.1f}")
    return seconds


def offline_setting(
    benchmark_dir: str | None, num_images: int
) -> tuple[torch.nn.ModuleDict, UnicStudentConfig, datasets.Dataset]:
    """The offline-teacher setting: EfficientNet-Lite0 and MobileNetV2 at 48 px, the student of
    ``recipes/configs/unic_offline.yaml`` at 32 px, and ``num_images`` training images spread over the domains.

    Args:
        benchmark_dir: the benchmark (default: the offline one).
        num_images: training images in all.
    """
    benchmark = load_benchmark(benchmark_dir)
    per_domain = max(1, num_images // len(benchmark.domains))
    images = datasets.concatenate_datasets(
        [
            splits["train"].select(range(per_domain)).select_columns(["image"])
            for splits in benchmark.domains.values()
        ]
    )
    teachers = load_teachers(
        [{"model": "efficientnet_lite0", "image_size": 48}, {"model": "mobilenet_v2", "image_size": 48}]
    )
    config = UnicStudentConfig(
        backbone_kwargs={"patch_size": 8, "depth": 4, "embed_dim": 192, "num_heads": 3},
        image_size=32,
        teachers=teacher_shapes(teachers),
    )
    return teachers, config, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default=None, help="offline benchmark directory")
    parser.add_argument(
        "--images", type=int, default=512, help="training images of the offline-teacher setting"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per mode")
    parser.add_argument("--vitb-batch-size", type=int, default=4)
    parser.add_argument("--vitb-steps", type=int, default=2)
    parser.add_argument("--skip-vitb", action="store_true", help="skip the ViT-B/16 at 224 px setting")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; load average before: {load_average():.1f}")
    bench_dropping([128, 1024, 4096], num_teachers=2, repeats=3)
    teachers, config, images = offline_setting(args.benchmark, args.images)
    settings = [("offline teachers, 32 px student", teachers, config, images, args.batch_size, args.steps)]
    if not args.skip_vitb:
        vitb = vitb_teachers()
        vitb_config = UnicStudentConfig(
            backbone="vit_base_patch16_224", image_size=224, teachers=teacher_shapes(vitb)
        )
        vitb_images = images.select(range(args.vitb_batch_size * (args.vitb_steps + 2)))
        settings.append(
            (
                "2 x ViT-B/16 teachers, ViT-B/16 student, 224 px, random weights",
                vitb,
                vitb_config,
                vitb_images,
                args.vitb_batch_size,
                args.vitb_steps,
            )
        )
    for label, *setting in settings:
        seconds = bench_steps(label, *setting)
        batch = setting[3]
        short = "offline teachers" if label.startswith("offline") else "2 x ViT-B/16 224 px"
        if label.startswith("offline"):
            emit_row(
                f"UNIC step from the feature cache ({short})",
                batch / seconds["feature cache"],
                "student-only step",
                batch / seconds["student-only"],
                "img/s",
                1.1,
                higher_is_better=True,
                note=f"batch {batch}, median of {setting[4]} interleaved steps, load {load_average():.1f}",
            )
        emit_row(
            f"UNIC online teachers vs feature cache ({short})",
            batch / seconds["online teachers"],
            "feature cache",
            batch / seconds["feature cache"],
            "img/s",
            None,
            higher_is_better=True,
            note="ratio = how much faster the cached step is than the online one",
        )
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    main()
