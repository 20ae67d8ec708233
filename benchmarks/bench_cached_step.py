"""Training steps on cached inputs through each method's ``Trainer.train()`` against a bare PyTorch loop on the
same tensors, and building a trunk cache against the bare frozen forward of the same images.

    HF_HUB_OFFLINE=1 python benchmarks/bench_cached_step.py [--steps 120] [--repeats 2] [--batch-size 64]
        [--rows-per-domain 2000] [--threads 1] [--cache-images 512] [--cache-workers 1]
        [--unic-images 512] [--mlfd-images 512] [--only udon unic mlfd cache] [--benchmark data/manydomain]

Every step row has the same shape: the figure is the method's trainer (``train()`` on its training set: batched
reads, sampler, loss-component logging, the trainer's optimizer and scheduler); the limit is a bare loop that
takes in-memory batches and calls the same model, loss, AdamW and gradient clipping (5). Runs alternate
(``--repeats`` times); each figure is the median time between consecutive step ends, the first five steps of
each run left out. Limit: 1.2x.

- UDON: cached 1280-d Lite0 features of ``data/manydomain``'s eight domains (random values of that shape and the
  benchmark's class counts — the step's cost does not depend on the values), ``backbone_source="features"``
  with its residual adapter, ``UdonLoss``, round-robin single-domain batches (the setting of
  ``benchmarks/udon_results.py``).
- UNIC: ``UnicTrainer`` on ``cached_training_set`` (the offline teachers' targets cached once, each view
  regenerated from its source image under its view seed) with the student of ``benchmarks/bench_unic_step.py``'s
  offline setting; the bare loop applies the same pixel normalisation, target standardisation and ``UnicLoss``
  to batches of that training set read into memory beforehand.
- MLFD stage 4: ``MlfdTrainer`` on ``student_training_set`` (a ResNet-10t student on fresh augmentations of the
  clothing images, the joint teacher run on the two teachers' cached maps of the same image), as
  ``stage4_students`` builds it; teachers and joint teacher with random weights (cost does not depend on them).

Trunk cache (``--cache-images`` real images of the benchmark's cjk training split, EfficientNet-Lite0 offline
weights, 64 px, ``trainable_from=5``): ``build_feature_cache`` as ``hf_distill.data.trunk_cache`` calls it (decode
and seeded transform in ``--cache-workers`` DataLoader workers, trunk forward, Arrow write) against the trunk
forward alone on the same images already transformed in memory, same batch size; ``--threads`` torch threads for
both. Limit: 1.1x. Rows needing the benchmark are skipped without it.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from table import emit_row, interleaved_medians, load_average
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from transformers import Trainer, TrainerCallback

from hf_distill.losses import UdonLoss
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.udon import UdonTrainer

FEATURE_DIM = 1280
# Training classes of data/manydomain's domains (docs/benchmark.md), so the classifiers cost what they cost there.
CLASSES = {
    "cjk": 3000,
    "hangul": 800,
    "typefaces": 37,
    "emoji": 1500,
    "flags": 250,
    "photos": 37,
    "clothing": 10,
    "digits": 10,
}
SKIP = 5


class StepEnds(TrainerCallback):
    """Wall-clock time of every step end."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def intervals(ends: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(ends[SKIP:], ends[SKIP + 1 :])]


def make_data(rows_per_domain: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    features, labels, domain_ids = [], [], []
    for domain, classes in enumerate(CLASSES.values()):
        features.append(torch.randn(rows_per_domain, FEATURE_DIM, generator=generator).abs())
        labels.append(torch.randint(0, classes, (rows_per_domain,), generator=generator))
        domain_ids.append(torch.full((rows_per_domain,), domain))
    return torch.cat(features), torch.cat(labels), torch.cat(domain_ids)


def feature_dataset(features: torch.Tensor, labels: torch.Tensor, domain_ids: torch.Tensor) -> Dataset:
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.numpy().reshape(-1)), FEATURE_DIM)
    table = pa.table({"pixel_values": column, "labels": labels.numpy(), "domain_ids": domain_ids.numpy()})
    return Dataset(table).with_format("numpy")


def build_model() -> UdonModel:
    torch.manual_seed(0)
    config = UdonConfig(
        backbone="features",
        backbone_source="features",
        backbone_kwargs={"dim": FEATURE_DIM, "layers": 1, "hidden": 512},
        domains=list(CLASSES),
        num_classes=list(CLASSES.values()),
    )
    return UdonModel(config)


# Training arguments every trainer run shares (the bare loop does the same: constant rate, clipping 5, no saving).
COMMON_ARGUMENTS = dict(
    lr_scheduler_type="constant",
    max_grad_norm=5.0,
    logging_steps=25,
    save_strategy="no",
    eval_strategy="no",
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    remove_unused_columns=False,
    evaluate_starting_point=False,
    dataloader_num_workers=0,
    dataloader_pin_memory=False,
    seed=0,
)


def train_intervals(trainer: Trainer) -> list[float]:
    """``trainer.train()``; the times between its step ends."""
    timer = StepEnds()
    trainer.add_callback(timer)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    trainer.train()
    return intervals(timer.ends)


def bare_intervals(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, dict[str, Any], int], torch.Tensor],
    next_batch: Callable[[int], dict[str, Any]],
    steps: int,
    learning_rate: float,
    weight_decay: float,
) -> list[float]:
    """The bare loop: ``loss_fn(model, next_batch(step), step)``, backward, clipping 5, AdamW; the times between
    its step ends."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    model.train()
    ends = []
    for step in range(steps):
        loss = loss_fn(model, next_batch(step), step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad()
        ends.append(time.perf_counter())
    return intervals(ends)


def in_memory_batches(dataset: TorchDataset, batch_size: int, count: int) -> Callable[[int], dict[str, Any]]:
    """``step -> batch``: ``count`` shuffled batches of ``dataset`` read (views made, rows collated) beforehand
    and served in turn, so the bare loop pays for none of the reading."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    batches = [batch for batch, _ in zip(loader, range(count))]
    return lambda step: batches[step % len(batches)]


def step_row(
    figure: str,
    runs: dict[str, Callable[[], list[float]]],
    limit_name: str,
    args: argparse.Namespace,
    note: str,
) -> None:
    """Alternate ``runs["trainer"]`` and ``runs["bare"]`` ``--repeats`` times, print both medians and the row."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].extend(run())
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{figure}:")
    for name, value in medians.items():
        print(f"  {name:>8}: median {value * 1e3:.1f} ms per step over {len(times[name])} steps")
    emit_row(
        figure,
        medians["trainer"],
        limit_name,
        medians["bare"],
        "s",
        1.2,
        note=f"batch {args.batch_size}, {note}, {args.threads} thread(s), load {load_average():.1f}",
    )


def udon_row(args: argparse.Namespace) -> None:
    """The UDON row (see the module docstring)."""
    features, labels, domain_ids = make_data(args.rows_per_domain)
    dataset = feature_dataset(features, labels, domain_ids)
    initial = build_model()
    generator = torch.Generator().manual_seed(0)
    per_domain = [
        torch.nonzero(domain_ids == d).flatten()[
            torch.randperm(int((domain_ids == d).sum()), generator=generator)
        ]
        for d in range(len(CLASSES))
    ]
    positions = [0] * len(CLASSES)

    def round_robin(step: int) -> dict[str, torch.Tensor]:
        domain = step % len(CLASSES)
        rows = per_domain[domain][positions[domain] : positions[domain] + args.batch_size]
        positions[domain] = (positions[domain] + args.batch_size) % (
            len(per_domain[domain]) - args.batch_size
        )
        return {"pixel_values": features[rows], "labels": labels[rows], "domain_ids": domain_ids[rows]}

    loss = UdonLoss()
    with tempfile.TemporaryDirectory() as output_dir:

        def trainer() -> list[float]:
            training_args = UdonTrainingArguments(
                output_dir=output_dir,
                max_steps=args.steps,
                per_device_train_batch_size=args.batch_size,
                learning_rate=1e-3,
                backbone_lr_ratio=1.0,
                backbone_frozen_epochs=0,
                weight_decay=1e-6,
                sampling_strategy="round_robin",
                plot_sampling_curves=False,
                **COMMON_ARGUMENTS,
            )
            model = copy.deepcopy(initial)
            return train_intervals(UdonTrainer(model=model, args=training_args, train_dataset=dataset))

        def bare() -> list[float]:
            return bare_intervals(
                copy.deepcopy(initial),
                lambda model, batch, step: loss(model, batch)["loss"],
                round_robin,
                args.steps,
                1e-3,
                1e-6,
            )

        step_row(
            "UDON step on cached features via UdonTrainer.train()",
            {"trainer": trainer, "bare": bare},
            "bare PyTorch loop, same model/loss/AdamW/clipping on in-memory tensors",
            args,
            "8 domains, 1280-d features",
        )


def unic_row(args: argparse.Namespace) -> None:
    """The UNIC cached-step row (see the module docstring)."""
    from bench_unic_step import offline_setting

    from hf_distill.layers.pixels import PixelNormalize
    from hf_distill.losses import UnicLoss
    from hf_distill.losses.standardization import FeatureStandardizer
    from hf_distill.models.unic import TOKEN_TYPES, UnicStudentModel
    from hf_distill.trainers.unic import (
        UnicTrainer,
        UnicTrainingArguments,
        cached_training_set,
        target_column,
        unic_train_transform,
    )

    teachers, config, images = offline_setting(args.benchmark, args.unic_images)
    transform = unic_train_transform(config.image_size)
    names = list(config.teachers)
    torch.manual_seed(0)
    initial = UnicStudentModel(config)
    with tempfile.TemporaryDirectory() as root:
        dataset = cached_training_set(
            teachers, images, transform, {"benchmark": args.benchmark}, cache_dir=f"{root}/cache"
        )
        batches = in_memory_batches(dataset, args.batch_size, len(dataset) // args.batch_size)

        def trainer() -> list[float]:
            training_args = UnicTrainingArguments(
                output_dir=f"{root}/run",
                max_steps=args.steps,
                per_device_train_batch_size=args.batch_size,
                learning_rate=1e-4,
                weight_decay=0.0,
                **COMMON_ARGUMENTS,
            )
            model = copy.deepcopy(initial)
            return train_intervals(UnicTrainer(model=model, args=training_args, train_dataset=dataset))

        def bare() -> list[float]:
            loss = UnicLoss(names)
            normalize = PixelNormalize(config.image_mean, config.image_std)
            standardizer = FeatureStandardizer(args.steps)

            def loss_fn(model: torch.nn.Module, batch: dict[str, Any], step: int) -> torch.Tensor:
                targets = {
                    name: {
                        kind: standardizer(f"{name}/{kind}", batch[target_column(name, kind)].float(), step)
                        for kind in TOKEN_TYPES
                    }
                    for name in names
                }
                inputs = {"pixel_values": normalize(batch["images"]), "targets": targets}
                return loss(model, inputs, generator=torch.Generator().manual_seed(step))["loss"]

            return bare_intervals(copy.deepcopy(initial), loss_fn, batches, args.steps, 1e-4, 0.0)

        step_row(
            "UNIC step on cached targets via UnicTrainer.train()",
            {"trainer": trainer, "bare": bare},
            "bare PyTorch loop, same student/UnicLoss/AdamW/clipping on in-memory batches",
            args,
            f"{len(images)} images, Lite0 + MobileNetV2 targets, 32 px student",
        )


def mlfd_row(args: argparse.Namespace) -> None:
    """The MLFD stage-4 row (see the module docstring)."""
    from hf_distill.data import load_domains
    from hf_distill.losses import MlfdLoss
    from hf_distill.models.mlfd import JointTeacherModel, MlfdClassifierModel
    from hf_distill.trainers.arguments import MlfdTrainingArguments
    from hf_distill.trainers.mlfd import MlfdTrainer
    from hf_distill.trainers.mlfd_stages import (
        MlfdStageArguments,
        classifier_config,
        joint_teacher_config,
        stage2_cache,
        student_config,
        student_training_set,
    )

    with tempfile.TemporaryDirectory() as root:
        stage_args = MlfdStageArguments(
            output_dir=root,
            benchmark=args.benchmark,
            domains=["clothing", "digits"],
            teacher_backbones=["resnet10t"],
            max_train_per_domain=args.mlfd_images,
            batch_size=args.batch_size,
        )
        benchmark = load_domains(args.benchmark, stage_args.domains)
        teachers = {}
        for index, domain in enumerate(stage_args.domains):
            torch.manual_seed(index)
            teachers[domain] = MlfdClassifierModel(
                classifier_config(stage_args, index, benchmark.num_classes[domain])
            ).eval()
            # The cache spec digests the teachers' saved weights, as after stage 1.
            teachers[domain].save_pretrained(f"{root}/teachers/{domain}")
        caches = stage2_cache(stage_args, benchmark, teachers)
        torch.manual_seed(0)
        joint = JointTeacherModel(joint_teacher_config(stage_args, benchmark, teachers, caches)).eval()
        initial = MlfdClassifierModel(student_config(stage_args, benchmark, joint, 0))
        dataset = student_training_set(stage_args, benchmark, joint, caches, 0, initial)
        batches = in_memory_batches(dataset, args.batch_size, len(dataset) // args.batch_size)

        def loss() -> MlfdLoss:
            return MlfdLoss(
                joint, stage_args.alpha, stage_args.beta, stage_args.gamma, stage_args.temperature
            )

        def trainer() -> list[float]:
            training_args = MlfdTrainingArguments(
                output_dir=f"{root}/run",
                max_steps=args.steps,
                per_device_train_batch_size=args.batch_size,
                learning_rate=1e-3,
                weight_decay=stage_args.weight_decay,
                **COMMON_ARGUMENTS,
            )
            model = copy.deepcopy(initial)
            student_trainer = MlfdTrainer(
                model=model,
                args=training_args,
                train_dataset=dataset,
                loss=loss(),
                domain_names=stage_args.domains,
            )
            return train_intervals(student_trainer)

        def bare() -> list[float]:
            loss_module = loss()
            return bare_intervals(
                copy.deepcopy(initial),
                lambda model, batch, step: loss_module(model, batch)["loss"],
                batches,
                args.steps,
                1e-3,
                stage_args.weight_decay,
            )

        step_row(
            "MLFD stage-4 step (joint teacher on cached maps) via MlfdTrainer.train()",
            {"trainer": trainer, "bare": bare},
            "bare PyTorch loop, same student/MlfdLoss/AdamW/clipping on in-memory batches",
            args,
            f"{len(dataset)} clothing images, ResNet-10t student and 2 teachers, 32 px",
        )


def cache_building(args: argparse.Namespace) -> None:
    """The trunk-cache row (see the module docstring)."""
    from hf_distill.data import ImageTransform, load_domains
    from hf_distill.layers.trunk import trunk_forward
    from hf_distill.teachers.cache import FeatureCacheSpec, build_feature_cache
    from hf_distill.teachers.offline import create_offline_model, resolve_offline_weights

    images = load_domains(args.benchmark, ["cjk"]).domains["cjk"]["train"].select(range(args.cache_images))
    images = images.select_columns(["image"])
    weights = resolve_offline_weights("efficientnet_lite0")
    backbone = create_offline_model("efficientnet_lite0", num_classes=0).eval()
    backbone = backbone.to(memory_format=torch.channels_last)
    transform = ImageTransform(64, weights.mean, weights.std, train=False)

    def extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return {"maps": trunk_forward(backbone, pixels, 5).float().contiguous()}

    pixels = torch.stack([transform(image) for image in images["image"]])

    def bare() -> None:
        with torch.inference_mode():
            for chunk in pixels.split(128):
                extract(chunk)

    with tempfile.TemporaryDirectory() as root:
        runs = iter(range(10_000))

        def build() -> None:
            spec = FeatureCacheSpec(teacher="tf_efficientnet_lite0", layer="trunk: blocks before 5")
            build_feature_cache(
                images, extract, transform, spec, f"{root}/{next(runs)}", batch_size=128,
                num_workers=args.cache_workers,
            )  # fmt: skip

        logging.getLogger("hf_distill").setLevel(logging.WARNING)
        medians = interleaved_medians({"build": build, "bare": bare}, repeats=args.repeats)
    print(
        f"  trunk cache of {args.cache_images} images: build {medians['build']:.2f} s, "
        f"bare forward {medians['bare']:.2f} s"
    )
    emit_row(
        f"trunk cache build ({args.cache_workers} decoding worker(s), trunk forward, Arrow write), Lite0 64 px, cut 5",
        medians["build"],
        "trunk forward alone on the same images in memory",
        medians["bare"],
        "s",
        1.1,
        note=f"{args.cache_images} images, batch 128, {args.threads} thread(s), load {load_average():.1f}",
    )


ROWS = {"udon": udon_row, "unic": unic_row, "mlfd": mlfd_row, "cache": cache_building}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-domain", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-images", type=int, default=512)
    parser.add_argument("--cache-workers", type=int, default=1, help="DataLoader workers of the cache build")
    parser.add_argument("--unic-images", type=int, default=512, help="training images of the UNIC row")
    parser.add_argument(
        "--mlfd-images", type=int, default=512, help="clothing training images of the MLFD row"
    )
    parser.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run")
    parser.add_argument("--benchmark", default="data/manydomain")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; load average before: {load_average():.1f}")
    have_benchmark = os.path.isfile(os.path.join(args.benchmark, "benchmark.json"))
    for name in args.only:
        if name == "udon":
            udon_row(args)
        elif not have_benchmark:
            print(f"no benchmark at {args.benchmark}: {name} row skipped (make data)")
        else:
            ROWS[name](args)
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
