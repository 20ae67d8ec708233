"""Exact resume for UNIC and MLFD: a run killed in its second epoch and relaunched ends with the weights of an
uninterrupted run, bit for bit.

The kill is an exception raised from a callback after the step it names, inside the second epoch (nothing is
saved on the way out, as after a real kill); the relaunch resumes from the last complete checkpoint and must
continue the second epoch's data order, augmentation and random state. UNIC checkpoints every few steps, so it
resumes in the middle of the second epoch; MLFD's stage runner checkpoints at every epoch end, so it resumes at
the start of the second epoch and trains it again. A counter checks that the relaunch did resume: one that
ignored its checkpoint would retrain from step 0 and also end with the same weights.

- UNIC, with cached targets and with online teachers, teacher dropping and random crops;
- MLFD through its stage runner, killed inside stage 3 (the joint teacher, dropout) and inside stage 4 (a student
  with fresh random crops and the frozen joint teacher's targets).
"""

import shutil
from pathlib import Path

import pytest
import torch
from test_unic_trainer import _args as unic_args
from test_unic_trainer import _student as unic_student
from test_unic_trainer import images, teachers  # noqa: F401  (module fixtures reused)
from transformers import AutoModel, TrainerCallback

from hf_distill.data import load_domains
from hf_distill.losses import UnicLoss
from hf_distill.models.mlfd import JointTeacherModel, MlfdClassifierModel
from hf_distill.trainers import mlfd_stages
from hf_distill.trainers.base import last_complete_checkpoint
from hf_distill.trainers.mlfd import MlfdTrainer
from hf_distill.trainers.mlfd_stages import MlfdStageArguments, run_mlfd_stages
from hf_distill.trainers.unic import (
    CachedViewDataset,
    OnlineImageDataset,
    UnicTrainer,
    build_unic_feature_cache,
    unic_train_transform,
)


class Killed(RuntimeError):
    """Stands for the process being killed."""


class KillAfter(TrainerCallback):
    """Raises :class:`Killed` at the end of step ``step`` (after the checkpoints of earlier steps were written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed after step {self.step}")


class CountSteps(TrainerCallback):
    """Counts the optimisation steps a run actually trains (a relaunch that ignored its checkpoint trains all)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert expected_state.keys() == actual_state.keys()
    for name, value in expected_state.items():
        assert torch.equal(value, actual_state[name]), name


# ------------------------------------------------------------------------------------------------ UNIC

# 40 images (8 per domain), 8 per batch: 5 steps per epoch. Checkpoints every 3 steps; killed after step 8,
# the relaunch resumes from step 6, inside the second epoch (steps 6-10), and runs to step 9.
UNIC_STEPS, UNIC_SAVE, UNIC_KILL = 9, 3, 8


@pytest.mark.parametrize("targets", ["cached", "online"])
def test_unic_relaunched_after_a_kill_in_epoch_two_ends_bit_identical(targets, teachers, images, tmp_path):  # noqa: F811
    transform = unic_train_transform(32)
    if targets == "cached":
        cache = build_unic_feature_cache(teachers, images, transform, tmp_path / "cache", views=1, seed=1)
        dataset, online = CachedViewDataset(cache, images, transform, seed=1), None
    else:
        dataset, online = OnlineImageDataset(images, transform), teachers

    def trainer(output_dir: Path, callbacks=()) -> UnicTrainer:
        args = unic_args(
            output_dir, max_steps=UNIC_STEPS, save_strategy="steps", save_steps=UNIC_SAVE, logging_steps=1
        )
        return UnicTrainer(
            model=unic_student(teachers),
            args=args,
            train_dataset=dataset,
            teachers=online,
            loss=UnicLoss(list(teachers), drop_prob=0.5),
            callbacks=list(callbacks),
        )

    full = trainer(tmp_path / "full")
    full.train()
    steps_per_epoch = len(full.get_train_dataloader())
    assert steps_per_epoch == 5 and steps_per_epoch < UNIC_SAVE * 2 < UNIC_KILL < UNIC_STEPS
    with pytest.raises(Killed):
        trainer(tmp_path / "cut", [KillAfter(UNIC_KILL)]).train()
    assert last_complete_checkpoint(str(tmp_path / "cut")).endswith(f"checkpoint-{2 * UNIC_SAVE}")
    counter = CountSteps()
    resumed = trainer(tmp_path / "cut", [counter])
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == full.state.global_step == UNIC_STEPS
    assert counter.steps == UNIC_STEPS - 2 * UNIC_SAVE
    assert_same_weights(full.model, resumed.model)
    for key, value in full.standardizer.means.items():
        assert torch.equal(resumed.standardizer.means[key], value), key
        assert torch.equal(resumed.standardizer.stds[key], full.standardizer.stds[key]), key
    # The per-step losses after the resume point are the uninterrupted run's.
    losses = {e["step"]: e["loss"] for e in full.state.log_history if "loss" in e}
    resumed_losses = {e["step"]: e["loss"] for e in resumed.state.log_history if "loss" in e}
    for step in range(2 * UNIC_SAVE + 1, UNIC_STEPS + 1):
        assert resumed_losses[step] == losses[step], step


# ------------------------------------------------------------------------------------------------ MLFD

MLFD_DOMAINS = ["digits", "animals"]


def mlfd_arguments(tiny_benchmark_dir: Path, output_dir: Path) -> MlfdStageArguments:
    # Stage 3: 2 x 24 cached maps, 8 per batch: 6 steps per epoch, 3 epochs; checkpoints at every epoch end.
    # Stage 4: 24 images per student, 8 per batch: 3 steps per epoch, 2 epochs.
    return MlfdStageArguments(
        output_dir=str(output_dir),
        benchmark=str(tiny_benchmark_dir),
        domains=MLFD_DOMAINS,
        teacher_backbones=["resnet10t"],
        max_train_per_domain=24,
        batch_size=8,
        eval_batch_size=64,
        teacher_epochs=1,
        joint_epochs=3,
        joint_batch_size=8,
        joint_adaptor_channels=8,
        joint_out_channels=8,
        joint_dropout=0.5,
        student_epochs=2,
        logging_steps=1,
        evaluate_starting_point=False,
    )


@pytest.fixture(scope="module")
def mlfd_full(tiny_benchmark_dir, tmp_path_factory):
    """An uninterrupted MLFD run: its output folder."""
    output = tmp_path_factory.mktemp("mlfd") / "full"
    run_mlfd_stages(
        mlfd_arguments(tiny_benchmark_dir, output), load_domains(tiny_benchmark_dir, MLFD_DOMAINS)
    )
    return output


def watched_trainer(model_class: type, callback: TrainerCallback) -> type:
    """``MlfdTrainer`` that adds ``callback`` to the trainer of the first model of ``model_class`` it builds."""

    class WatchedTrainer(MlfdTrainer):
        armed = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if isinstance(self.model, model_class) and WatchedTrainer.armed:
                WatchedTrainer.armed = False
                self.add_callback(callback)

    return WatchedTrainer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "model_class", "kill_after", "checkpoint", "total", "reused"),
    [
        # stage 3: 6 steps per epoch, 18 in all; killed after step 9, resumed from the end of epoch 1 (step 6)
        ("joint_teacher", JointTeacherModel, 9, 6, 18, ["teachers", "cache"]),
        # stage 4: 3 steps per epoch, 6 in all; killed after step 5 of the first student, resumed from step 3
        ("students/digits", MlfdClassifierModel, 5, 3, 6, ["teachers", "cache", "joint_teacher"]),
    ],
    ids=["stage3", "stage4"],
)
def test_mlfd_relaunched_after_a_kill_in_epoch_two_ends_bit_identical(
    stage,
    model_class,
    kill_after,
    checkpoint,
    total,
    reused,
    mlfd_full,
    tiny_benchmark_dir,
    tmp_path,
    monkeypatch,
):
    output = tmp_path / "cut"
    # The stages before the killed one are found complete and skipped, as in a relaunch of the full run.
    for folder in reused:
        shutil.copytree(mlfd_full / folder, output / folder)
    args = mlfd_arguments(tiny_benchmark_dir, output)
    benchmark = load_domains(tiny_benchmark_dir, MLFD_DOMAINS)
    with monkeypatch.context() as patch:
        patch.setattr(mlfd_stages, "MlfdTrainer", watched_trainer(model_class, KillAfter(kill_after)))
        with pytest.raises(Killed):
            run_mlfd_stages(args, benchmark)
    last = Path(last_complete_checkpoint(str(output / stage / "checkpoints")))
    assert last.name == f"checkpoint-{checkpoint}"
    counter = CountSteps()
    with monkeypatch.context() as patch:
        patch.setattr(mlfd_stages, "MlfdTrainer", watched_trainer(model_class, counter))
        run_mlfd_stages(args, benchmark)
    # The relaunch trained only the steps after its checkpoint.
    assert counter.steps == total - checkpoint
    for folder in ("joint_teacher", "students/digits", "students/animals"):
        assert_same_weights(
            AutoModel.from_pretrained(mlfd_full / folder), AutoModel.from_pretrained(output / folder)
        )
