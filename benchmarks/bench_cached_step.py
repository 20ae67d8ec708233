"""UDON step on cached features through ``UdonTrainer.train()`` against a bare PyTorch loop on the same tensors.

    HF_HUB_OFFLINE=1 python benchmarks/bench_cached_step.py [--steps 120] [--repeats 2] [--batch-size 64]
        [--rows-per-domain 2000] [--threads 1]

The setting of ``benchmarks/udon_results.py``: cached 1280-d Lite0 features of ``data/manydomain``'s eight
domains (random values of that shape and the benchmark's class counts here — the step's cost does not depend on
the values), ``backbone_source="features"`` with its residual adapter, ``UdonLoss``, AdamW, gradient clipping 5,
round-robin single-domain batches. The figure is ``UdonTrainer.train()`` on a ``datasets.Dataset`` of the
features (what the results scripts train on: batched reads, domain sampler, loss-component logging, the
trainer's optimizer and scheduler); the limit is a bare loop that indexes in-memory tensors and calls the same
model, loss, optimizer and clipping. Runs alternate (``--repeats`` times); each figure is the median time
between consecutive step ends, the first five steps of each run left out.
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
from table import emit_row, load_average
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, alternating")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-domain", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
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
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
