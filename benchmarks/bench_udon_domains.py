"""UDON step time through the trainer with 2 and with 32 domains: it must not grow with the number of domains.

    HF_HUB_OFFLINE=1 python benchmarks/bench_udon_domains.py [--domains 2 32] [--classes 1000] [--steps 6]
        [--repeats 2] [--batch-size 32] [--threads 2]

Each setting is a ``UdonTrainer.train()`` run (domain batch sampler with dynamic sampling, per-domain loss and
sampling-probability logging, AdamW over every domain's classifiers, gradient clipping) of a ``UdonModel``
whose domains each have ``--classes`` classes, on random 32-px images held in memory. Every step does the same
work (one single-domain batch of ``--batch-size`` through the same backbone), so only the per-domain
bookkeeping can differ. Runs alternate between settings (``--repeats`` times); the figure is the median
wall-clock time between consecutive steps, the first step of each run left out.

Backbone: the EfficientNet-Lite0 of ``recipes/configs/udon_offline.yaml`` (random weights), 32 px.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import torch
from table import emit_row, load_average
from torch.utils.data import Dataset
from transformers import TrainerCallback

from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.udon import UdonTrainer


class RandomDomainImages(Dataset):
    """``rows`` random 32-px images in memory, split evenly over ``domains`` domains, labels in ``classes``."""

    def __init__(self, rows: int, domains: int, classes: int, image_size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(rows, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, classes, (rows,), generator=generator)
        self.domain_ids = torch.arange(rows) % domains

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.pixel_values[index],
            "labels": self.labels[index],
            "domain_ids": self.domain_ids[index],
        }


class StepTimes(TrainerCallback):
    """Wall-clock seconds between consecutive step ends (data loading, forward, backward, optimizer, logging)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.ends, self.ends[1:])]


def build_trainer(domains: int, args: argparse.Namespace, output_dir: str) -> tuple[UdonTrainer, StepTimes]:
    names = [f"domain{number:02d}" for number in range(domains)]
    config = UdonConfig(
        backbone="tf_efficientnet_lite0",
        domains=names,
        num_classes=[args.classes] * domains,
        image_size=32,
    )
    torch.manual_seed(0)
    model = UdonModel(config)
    # Enough rows that no domain runs out within a run: each domain holds several batches.
    rows = domains * args.batch_size * max(4, args.steps)
    dataset = RandomDomainImages(rows, domains, args.classes, 32)
    training_args = UdonTrainingArguments(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        backbone_lr_ratio=0.1,
        backbone_frozen_epochs=0,
        sampling_update_every=4,
        max_grad_norm=5.0,
        logging_steps=4,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        plot_sampling_curves=False,
        dataloader_num_workers=0,
        seed=0,
    )
    timer = StepTimes()
    trainer = UdonTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        train_domain_ids=dataset.domain_ids.tolist(),
        callbacks=[timer],
    )
    return trainer, timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--domains", type=int, nargs=2, default=[2, 32], help="the two domain counts compared"
    )
    parser.add_argument("--classes", type=int, default=1000, help="classes per domain")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print(f"torch threads: {args.threads}; load average before: {load_average():.1f}")
    intervals: dict[int, list[float]] = {count: [] for count in args.domains}
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(args.repeats):
            for count in args.domains:
                # A fresh trainer per run (a trainer's domain sampler is not meant to be trained twice).
                trainer, timer = build_trainer(count, args, output_dir)
                trainer.train()
                intervals[count].extend(timer.intervals())
    medians = {count: statistics.median(values) for count, values in intervals.items()}
    few, many = args.domains
    print(f"UDON step through the trainer, batch {args.batch_size}, {args.classes} classes per domain:")
    for count, value in medians.items():
        print(
            f"  {count:>3} domains: median {value * 1e3:.1f} ms per step over {len(intervals[count])} steps"
        )
    emit_row(
        f"UDON step via trainer, {many} domains x {args.classes} classes",
        medians[many],
        f"{few} domains x {args.classes} classes",
        medians[few],
        "s",
        1.1,
        note=f"batch {args.batch_size}, EfficientNet-Lite0 32 px, median of {len(intervals[many])} steps, "
        f"load {load_average():.1f}",
    )
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    main()
