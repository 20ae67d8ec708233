"""MLFD stages 1, 3 and 4 run to their validation plateau: training stops where the rule says (not at the epoch cap),
the curve the results page plots is recorded, and the model kept is the best evaluated epoch."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from hf_distill.data import load_domains
from hf_distill.data.domains import Benchmark
from hf_distill.models.mlfd import MlfdClassifierModel
from hf_distill.trainers.mlfd_stages import (
    MlfdStageArguments,
    classifier_config,
    stage1_teachers,
    stage2_cache,
    stage3_joint_teacher,
)

DOMAIN = "digits"


def _tiny_benchmark() -> Benchmark:
    full = load_domains("data/manydomain", [DOMAIN])
    splits = datasets.DatasetDict({split: ds.select(range(16)) for split, ds in full.domains[DOMAIN].items()})
    pairs = {split: {DOMAIN: full.eval_pairs[split][DOMAIN]} for split in full.eval_pairs}
    return Benchmark({DOMAIN: splits}, {DOMAIN: full.num_classes[DOMAIN]}, pairs, full.metadata)


@pytest.mark.parametrize(
    ("min_epochs", "expected_steps"),
    # No gain can reach 100 points (plateau_min_gain=1.0): the rule fires at the first evaluation that has an
    # earlier one before its window. At epoch 1 (step 2) nothing precedes the window (step 0 does not count); at
    # epoch 2 (step 4) the window (3.2, 4] holds epoch 2 and epoch 1 lies before it: stop after 4 steps. With a
    # floor of 3 epochs (6 steps) the first evaluation allowed to stop is epoch 3.
    [(0.0, 4), (3.0, 6)],
)
def test_stage1_stops_on_the_plateau_and_keeps_the_best_epoch(tmp_path, min_epochs, expected_steps):
    args = MlfdStageArguments(
        output_dir=str(tmp_path),
        domains=[DOMAIN],
        teacher_backbones=["resnet10t"],
        seed=0,
        batch_size=8,  # 16 training images: 2 steps per epoch
        eval_batch_size=16,
        teacher_epochs=6,  # the cap: 12 steps
        stop_on_plateau=True,
        plateau_fraction=0.2,
        plateau_min_gain=1.0,
        plateau_min_epochs=min_epochs,
        logging_steps=1,
    )
    stage1_teachers(args, _tiny_benchmark())
    metrics = json.loads((tmp_path / "teachers" / DOMAIN / "metrics.json").read_text())
    assert metrics["steps"] == expected_steps
    steps = [step for step, _ in metrics["curve"]]
    assert steps == list(range(0, expected_steps + 1, 2))  # the step-0 starting point, then one per epoch
    values = dict((step, value) for step, value in metrics["curve"][1:])
    # The kept checkpoint is the best evaluated epoch (the first one on a tie, as the Trainer keeps it) ...
    best = max(values, key=lambda step: (values[step], -step))
    assert metrics["selected_step"] == best
    # ... and the saved teacher is that checkpoint: its val top-1, measured again after training, is the curve's.
    assert abs(metrics["val/top1"] - values[best]) < 1e-9


def test_stage3_joint_teacher_stops_on_its_mean_val_plateau(tmp_path):
    # Two domains of 16 images, random teachers (stage 3 reads their cached maps, not how good they are).
    full = load_domains("data/manydomain", ["digits", "flags"])
    names = ["digits", "flags"]
    splits = {
        n: datasets.DatasetDict({s: d.select(range(16)) for s, d in full.domains[n].items()}) for n in names
    }
    pairs = {split: {n: full.eval_pairs[split][n] for n in names} for split in full.eval_pairs}
    benchmark = Benchmark(splits, {n: full.num_classes[n] for n in names}, pairs, full.metadata)
    args = MlfdStageArguments(
        output_dir=str(tmp_path),
        domains=names,
        teacher_backbones=["resnet10t"],
        seed=0,
        eval_batch_size=16,
        cache_dtype="float32",
        joint_adaptor_channels=8,
        joint_out_channels=8,
        joint_batch_size=8,  # 2 × 16 cached train maps: 4 steps per epoch
        joint_epochs=6,
        stop_on_plateau=True,
        plateau_min_gain=1.0,  # fires at epoch 2 (see the stage-1 test)
        logging_steps=1,
    )
    teachers = {}
    for index, name in enumerate(names):
        torch.manual_seed(index)
        teachers[name] = MlfdClassifierModel(
            classifier_config(args, index, benchmark.num_classes[name])
        ).eval()
        teachers[name].save_pretrained(tmp_path / "teachers" / name)  # the cache is keyed by the weights
    caches = stage2_cache(args, benchmark, teachers)
    stage3_joint_teacher(args, benchmark, teachers, caches)
    metrics = json.loads((tmp_path / "joint_teacher" / "metrics.json").read_text())
    assert metrics["steps"] == 8
    assert [step for step, _ in metrics["curve"]] == [0, 4, 8]
    values = dict((step, value) for step, value in metrics["curve"][1:])
    best = max(values, key=lambda step: (values[step], -step))
    assert metrics["selected_step"] == best
    # The kept joint teacher is that epoch's: the mean of its per-domain val top-1, measured after training.
    mean = (metrics["digits/val/top1"] + metrics["flags/val/top1"]) / 2
    assert abs(mean - values[best]) < 1e-9
