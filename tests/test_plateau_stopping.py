"""Run-to-convergence rule: PlateauStoppingCallback stops on a validation plateau, never on a rising curve,
and keeps the best validation checkpoint inside a real UdonTrainer run."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.callbacks import PlateauStoppingCallback, plateau_reached

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_udon_trainer import tiny_args, tiny_dataset, tiny_model  # noqa: E402

from hf_distill.trainers.base import RUN_SUMMARY_NAME  # noqa: E402
from hf_distill.trainers.udon import UdonTrainer  # noqa: E402

KEY = "eval_merged/mean/R@1"


def test_plateau_stops_where_the_last_fifth_gained_under_the_threshold():
    # At step 500 the split is at 400: best up to it 0.621, best after it 0.622 -> gain 0.001 <= 0.003.
    curve = [(100, 0.50), (200, 0.60), (300, 0.62), (400, 0.621), (500, 0.622)]
    assert plateau_reached(curve, 0.2, 0.003)
    # At step 400 the split is at 320: best up to it 0.62 (step 300), after it 0.621 -> 0.001: also a plateau.
    assert plateau_reached(curve[:4], 0.2, 0.003)
    # At step 300 the split is at 240: 0.62 - 0.60 = 0.02 > 0.003 -> still improving.
    assert not plateau_reached(curve[:3], 0.2, 0.003)


def test_rising_curve_and_late_recovery_do_not_stop():
    rising = [(100, 0.50), (200, 0.52), (300, 0.54), (400, 0.56), (500, 0.58)]
    assert not any(plateau_reached(rising[: n + 1], 0.2, 0.003) for n in range(len(rising)))
    # A dip and a recovery: at 500 the best after 400 is 0.61, the best before it 0.60 -> gain 0.01.
    recovering = [(100, 0.60), (200, 0.50), (300, 0.55), (400, 0.58), (500, 0.61)]
    assert not plateau_reached(recovering, 0.2, 0.003)
    # The same with a threshold above that gain stops.
    assert plateau_reached(recovering, 0.2, 0.02)
    # One evaluation has nothing to compare with; an empty history neither.
    assert not plateau_reached([(100, 0.5)], 0.2, 0.003)
    assert not plateau_reached([], 0.2, 0.003)


def test_lower_is_better_metric():
    # A loss: 2.0, 1.5, 1.499 at 100, 200, 300 -> at 300 the split is 240: the gain is 1.5 - 1.499 = 0.001.
    assert plateau_reached([(100, 2.0), (200, 1.5), (300, 1.499)], 0.2, 0.003, greater_is_better=False)
    assert not plateau_reached([(100, 2.0), (200, 1.5), (300, 1.2)], 0.2, 0.003, greater_is_better=False)


def feed(callback, values, args):
    state, control = TrainerState(), TrainerControl()
    stops = []
    for step, value in values:
        state.global_step = step
        callback.on_evaluate(args, state, control, metrics={KEY: value})
        stops.append(control.should_training_stop)
    return stops


def test_callback_respects_min_steps_and_reads_a_resumed_history():
    args = SimpleNamespace(metric_for_best_model="merged/mean/R@1", greater_is_better=True)
    flat = [(100, 0.5), (200, 0.5), (300, 0.5)]
    assert feed(PlateauStoppingCallback(), flat, args) == [False, True, True]
    assert feed(PlateauStoppingCallback(min_steps=300), flat, args) == [False, False, True]
    # Resumed at step 200: the history (not the step-0 starting point) is read back from log_history.
    callback = PlateauStoppingCallback()
    state = TrainerState()
    state.log_history = [
        {KEY: 0.9, "step": 0, "starting_point": 1},
        {KEY: 0.4, "step": 100},
        {"loss": 1.0, "step": 150},
        {KEY: 0.5, "step": 200},
    ]
    callback.on_train_begin(args, state, TrainerControl())
    assert callback.evaluations == [(100, 0.4), (200, 0.5)]
    # Step 300 at 0.501: split 240, best before 0.5 -> gain 0.001 -> stop (the 0.9 of step 0 is ignored).
    assert feed(callback, [(300, 0.501)], args) == [True]


def test_arguments_default_the_metric_and_refuse_no_evaluation(tmp_path):
    args = UdonTrainingArguments(
        output_dir=str(tmp_path), stop_on_plateau=True, eval_strategy="steps", eval_steps=5, use_cpu=True
    )
    assert args.metric_for_best_model == "merged/mean/R@1" and args.greater_is_better
    with pytest.raises(ValueError, match="eval_strategy"):
        UdonTrainingArguments(output_dir=str(tmp_path), stop_on_plateau=True, use_cpu=True)
    with pytest.raises(ValueError, match="plateau_fraction"):
        UdonTrainingArguments(
            output_dir=str(tmp_path),
            stop_on_plateau=True,
            eval_strategy="steps",
            plateau_fraction=1.0,
            use_cpu=True,
        )


# Validation merged R@1 by step: rises to 0.55 at step 8, then 0.549 at step 10.
SCRIPTED = {2: 0.30, 4: 0.40, 6: 0.50, 8: 0.55, 10: 0.549, 12: 0.60, 14: 0.70}


class ScriptedEvaluator:
    primary_metric = "merged/mean/R@1"

    def __init__(self):
        self.calls = []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.calls.append(steps)
        return {"merged/mean/R@1": SCRIPTED.get(steps, 0.0)}


def test_real_trainer_stops_on_the_plateau_and_keeps_the_best_validation_checkpoint(tmp_path):
    # By hand: step 10 splits at 8; best up to 8 is 0.55, after it 0.549 -> no gain -> stop at 10;
    # the best evaluated checkpoint is step 8. Steps 4-8 each gained > 0.003 over their first 80 %.
    evaluator = ScriptedEvaluator()
    args = tiny_args(
        tmp_path,
        num_train_epochs=1,
        max_steps=40,
        backbone_frozen_epochs=0,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        stop_on_plateau=True,
        evaluate_starting_point=False,
        plot_sampling_curves=False,
    )
    trainer = UdonTrainer(model=tiny_model(), args=args, train_dataset=tiny_dataset(), evaluator=evaluator)
    trainer.train()
    assert evaluator.calls == [2, 4, 6, 8, 10]
    assert trainer.state.global_step == 10
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-8")
    summary = json.loads((tmp_path / RUN_SUMMARY_NAME).read_text())
    assert summary["plateau"]["stopped_at_step"] == 10


def test_mlfd_stages_evaluated_stages_run_to_their_plateau(tmp_path):
    from hf_distill.trainers.mlfd_stages import MlfdStageArguments, _training_arguments

    args = MlfdStageArguments(stop_on_plateau=True, plateau_min_gain=0.01)
    evaluated = _training_arguments(args, tmp_path, 30, 1e-3, 8, evaluated=True)
    assert (
        evaluated.stop_on_plateau and evaluated.eval_strategy == "epoch" and evaluated.load_best_model_at_end
    )
    assert evaluated.metric_for_best_model == "val/top1" and evaluated.plateau_min_gain == 0.01
    # The joint teacher's stage has no evaluator: it keeps its epochs.
    assert not _training_arguments(args, tmp_path, 30, 1e-3, 8).stop_on_plateau
    assert not _training_arguments(MlfdStageArguments(), tmp_path, 3, 1e-3, 8, evaluated=True).stop_on_plateau
