"""UDON step on cached features through ``UdonTrainer.train()`` against a bare PyTorch loop on the same tensors,
and building a trunk cache against the bare frozen forward of the same images.

    HF_HUB_OFFLINE=1 python benchmarks/bench_cached_step.py [--steps 120] [--repeats 2] [--batch-size 64]
        [--rows-per-domain 2000] [--threads 1] [--cache-images 512] [--benchmark data/manydomain]

The setting of ``benchmarks/udon_results.py``: cached 1280-d Lite0 features of ``data/manydomain``'s eight
domains (random values of that shape and the benchmark's class counts here — the step's cost does not depend on
the values), ``backbone_source="features"`` with its residual adapter, ``UdonLoss``, AdamW, gradient clipping 5,
round-robin single-domain batches. The figure is ``UdonTrainer.train()`` on a ``datasets.Dataset`` of the
features (what the results scripts train on: batched reads, domain sampler, loss-component logging, the
trainer's optimizer and scheduler); the limit is a bare loop that indexes in-memory tensors and calls the same
model, loss, optimizer and clipping. Runs alternate (``--repeats`` times); each figure is the median time
between consecutive step ends, the first five steps of each run left out.

Trunk cache (``--cache-images`` real images of the benchmark's cjk training split, EfficientNet-Lite0 offline
weights, 64 px, ``trainable_from=5``): ``build_feature_cache`` as ``hf_distill.data.trunk_cache`` calls it (decode,
seeded transform, trunk forward, Arrow write) against the trunk forward alone on the same images already
transformed in memory, same batch size; ``--threads`` torch threads for both. Skipped without the benchmark.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from table import emit_row, interleaved_medians, load_average
from transformers import TrainerCallback

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


def trainer_run(model: UdonModel, dataset: Dataset, args: argparse.Namespace, output_dir: str) -> list[float]:
    timer = StepEnds()
    training_args = UdonTrainingArguments(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        backbone_lr_ratio=1.0,
        backbone_frozen_epochs=0,
        weight_decay=1e-6,
        lr_scheduler_type="constant",
        sampling_strategy="round_robin",
        max_grad_norm=5.0,
        logging_steps=25,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        plot_sampling_curves=False,
        evaluate_starting_point=False,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = UdonTrainer(model=model, args=training_args, train_dataset=dataset, callbacks=[timer])
    logging.getLogger("transformers").setLevel(logging.ERROR)
    trainer.train()
    return intervals(timer.ends)


def bare_run(
    model: UdonModel, tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor], args: argparse.Namespace
) -> list[float]:
    features, labels, domain_ids = tensors
    loss_module = UdonLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-6)
    generator = torch.Generator().manual_seed(0)
    per_domain = [
        torch.nonzero(domain_ids == d).flatten()[
            torch.randperm(int((domain_ids == d).sum()), generator=generator)
        ]
        for d in range(len(CLASSES))
    ]
    positions = [0] * len(CLASSES)
    model.train()
    ends = []
    for step in range(args.steps):
        domain = step % len(CLASSES)
        rows = per_domain[domain][positions[domain] : positions[domain] + args.batch_size]
        positions[domain] = (positions[domain] + args.batch_size) % (
            len(per_domain[domain]) - args.batch_size
        )
        inputs = {"pixel_values": features[rows], "labels": labels[rows], "domain_ids": domain_ids[rows]}
        loss = loss_module(model, inputs)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad()
        ends.append(time.perf_counter())
    return intervals(ends)


def cache_building(args: argparse.Namespace) -> None:
    """The trunk-cache row (see the module docstring)."""
    import os

    from hf_distill.data import ImageTransform, load_domains
    from hf_distill.layers.trunk import trunk_forward
    from hf_distill.teachers.cache import FeatureCacheSpec, build_feature_cache
    from hf_distill.teachers.offline import create_offline_model, resolve_offline_weights

    if not os.path.isfile(os.path.join(args.benchmark, "benchmark.json")):
        print(f"no benchmark at {args.benchmark}: trunk-cache row skipped (make data)")
        return
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
            build_feature_cache(images, extract, transform, spec, f"{root}/{next(runs)}", batch_size=128)

        logging.getLogger("hf_distill").setLevel(logging.WARNING)
        medians = interleaved_medians({"build": build, "bare": bare}, repeats=args.repeats)
    print(
        f"  trunk cache of {args.cache_images} images: build {medians['build']:.2f} s, "
        f"bare forward {medians['bare']:.2f} s"
    )
    emit_row(
        "trunk cache build (decode, transform, trunk forward, Arrow write), Lite0 64 px, cut 5",
        medians["build"],
        "trunk forward alone on the same images in memory",
        medians["bare"],
        "s",
        1.1,
        note=f"{args.cache_images} images, batch 128, {args.threads} thread(s), load {load_average():.1f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-domain", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-images", type=int, default=512)
    parser.add_argument("--benchmark", default="data/manydomain")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; load average before: {load_average():.1f}")
    tensors = make_data(args.rows_per_domain)
    dataset = feature_dataset(*tensors)
    initial = build_model()
    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(args.repeats):
            times["trainer"].extend(trainer_run(copy.deepcopy(initial), dataset, args, output_dir))
            times["bare"].extend(bare_run(copy.deepcopy(initial), tensors, args))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:>8}: median {value * 1e3:.1f} ms per step over {len(times[name])} steps")
    emit_row(
        "UDON step on cached features via UdonTrainer.train()",
        medians["trainer"],
        "bare PyTorch loop, same model/loss/AdamW/clipping on in-memory tensors",
        medians["bare"],
        "s",
        1.2,
        note=f"batch {args.batch_size}, 8 domains, 1280-d features, {args.threads} thread(s), "
        f"load {load_average():.1f}",
    )
    cache_building(args)
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
