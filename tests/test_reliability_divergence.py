"""DivergenceGuard: warns with the step and the domain when the loss stops decreasing while gradient norms
collapse or explode; quiet on a healthy run."""

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hf_distill.trainers.divergence import DivergenceGuard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_udon_trainer import tiny_args, tiny_dataset, tiny_model  # noqa: E402

from hf_distill.trainers.udon import UdonTrainer  # noqa: E402


def feed(guard, entries):
    """entries: (step, loss, grad_norm, {domain: loss})"""
    for step, loss, grad_norm, domains in entries:
        logs = {"loss": loss, "grad_norm": grad_norm, **{f"domain_loss/{d}": v for d, v in domains.items()}}
        guard.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)


def test_collapse_on_a_plateau_warns_once_per_window_with_step_and_domain(caplog):
    guard = DivergenceGuard(window=4)
    healthy = [(s, 3.0 - 0.1 * s, 2.0, {"a": 3.0, "b": 2.0}) for s in range(1, 5)]  # steps 1-4
    plateau = [(s, 2.7, 1e-4, {"a": 2.6, "b": 2.9}) for s in range(5, 13)]  # steps 5-12
    with caplog.at_level(logging.WARNING, logger="hf_distill.trainers.divergence"):
        feed(guard, healthy + plateau)
    # step 8: window 5-8 (mean 2.7) vs 1-4 (mean 2.75) decreased -> quiet; step 9: 6-9 (mean 2.7) vs 2-5
    # (mean 2.7) did not decrease and every norm 1e-4 < 1e-3 x 2.0 -> collapsed; domain b has the highest loss;
    # steps 10-12 are inside the warned window
    assert [w["step"] for w in guard.warnings] == [9]
    warning = guard.warnings[0]
    assert warning["gradient_norms"] == "collapsed" and warning["domain"] == "b"
    assert warning["grad_norm_first"] == 2.0
    assert "step 9, domain 'b'" in caplog.text


def test_explosion_warns_and_healthy_or_noisy_runs_stay_quiet():
    exploding = DivergenceGuard(window=3)
    feed(exploding, [(s, 1.0, 1.0, {}) for s in range(1, 4)] + [(s, 1.5, 5e3, {}) for s in range(4, 10)])
    # from step 6 (window 4-6 vs 1-3) on, once per window of 3 steps
    assert [(w["step"], w["gradient_norms"], w["domain"]) for w in exploding.warnings] == [
        (6, "exploded", None),
        (9, "exploded", None),
    ]

    decreasing = DivergenceGuard(
        window=3
    )  # tiny gradients, but the loss keeps falling: converging, not diverged
    feed(decreasing, [(s, 5.0 / s, 1.0 if s == 1 else 1e-5, {}) for s in range(1, 20)])
    assert decreasing.warnings == []

    plateau_with_healthy_gradients = DivergenceGuard(window=3)
    feed(plateau_with_healthy_gradients, [(s, 1.0, 0.5, {}) for s in range(1, 20)])
    assert plateau_with_healthy_gradients.warnings == []


def test_disabled_guard_and_bad_settings():
    off = DivergenceGuard(window=0)
    feed(off, [(s, 1.0, 1e9, {}) for s in range(1, 10)])
    assert off.warnings == []
    with pytest.raises(ValueError, match="window"):
        DivergenceGuard(window=-1)
    with pytest.raises(ValueError, match="collapse_ratio"):
        DivergenceGuard(collapse_ratio=2.0)


def test_real_udon_run_with_a_huge_learning_rate_is_reported(tmp_path):
    # (the same run with learning_rate=1e-2 logs no warning; the unit tests above cover quiet runs). At a constant
    # learning rate of 1e3 with no clipping the gradient norms explode within a few steps and stay exploded, while
    # the losses stay finite and jump about: whether one window's mean loss exceeds the one before is a matter of
    # floating-point detail that varies between CPUs, so the run is long enough (checks from step 20 to 80) that
    # the loss fails to decrease at some check on any machine.
    args = tiny_args(
        tmp_path,
        learning_rate=1e3,
        lr_scheduler_type="constant",
        backbone_frozen_epochs=0,
        max_steps=80,
        logging_steps=1,
        max_grad_norm=0.0,  # no clipping: the losses stay finite, the gradients blow up
        divergence_window=10,
    )
    trainer = UdonTrainer(model=tiny_model(), args=args, train_dataset=tiny_dataset())
    trainer.train()
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    warnings = summary["divergence_warnings"]
    assert warnings, "no divergence warning in 80 steps at learning rate 1e3"
    assert all(20 <= w["step"] <= 80 and w["domain"] in ("a", "b") for w in warnings)
    assert {w["gradient_norms"] for w in warnings} == {"exploded"}
    # at most one warning per window of 10 steps
    steps = [w["step"] for w in warnings]
    assert all(later - earlier >= 10 for earlier, later in zip(steps, steps[1:]))
