"""Trainer callbacks shared by the distillation trainers."""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

DOMAIN_LOSS_PREFIX = "domain_loss/"
SAMPLING_PREFIX = "sampling_p/"


def sampling_curves(log_history: list[dict]) -> tuple[dict[str, list], dict[str, list]]:
    """Per-domain ``(steps, values)`` of the logged domain losses and sampling probabilities.

    Args:
        log_history: ``TrainerState.log_history``.
    """
    losses: dict[str, list] = defaultdict(lambda: [[], []])
    probabilities: dict[str, list] = defaultdict(lambda: [[], []])
    for entry in log_history:
        for key, value in entry.items():
            for prefix, target in ((DOMAIN_LOSS_PREFIX, losses), (SAMPLING_PREFIX, probabilities)):
                if key.startswith(prefix):
                    target[key[len(prefix) :]][0].append(entry["step"])
                    target[key[len(prefix) :]][1].append(value)
    return dict(losses), dict(probabilities)


def plot_sampling_curves(log_history: list[dict], path: str, title: str = "") -> str | None:
    """Plot per-domain teacher losses and sampling probabilities against the step into a PNG.

    Args:
        log_history: ``TrainerState.log_history``.
        path: output PNG file.
        title: figure title.

    Returns:
        the path, or None when nothing was logged.
    """
    losses, probabilities = sampling_curves(log_history)
    if not losses and not probabilities:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, prob_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, (steps, values) in sorted(losses.items()):
        loss_axis.plot(steps, values, label=name)
    loss_axis.set(xlabel="step", ylabel="mean teacher loss", title="per-domain loss")
    for name, (steps, values) in sorted(probabilities.items()):
        prob_axis.plot(steps, values, label=name)
    prob_axis.set(xlabel="step", ylabel="p(domain)", title="sampling probability")
    prob_axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class SamplingCurvesCallback(TrainerCallback):
    """At the end of training, write ``sampling_curves.png`` in ``output_dir`` (main process only).

    Args:
        filename: name of the PNG inside ``output_dir``.
    """

    def __init__(self, filename: str = "sampling_curves.png") -> None:
        self.filename = filename
        self.path: str | None = None

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path = plot_sampling_curves(state.log_history, os.path.join(args.output_dir, self.filename))
            if self.path:
                logger.info("wrote %s", self.path)


STARTING_POINT_MARKER = "starting_point"


def starting_point_from_history(log_history: list[dict]) -> dict[str, float]:
    """The step-0 evaluation logged by :class:`StartingPointCallback` (without the ``eval_`` prefix), or ``{}``.

    Args:
        log_history: ``TrainerState.log_history``.
    """
    for entry in log_history:
        if entry.get(STARTING_POINT_MARKER):
            return {
                key[len("eval_") :]: value
                for key, value in entry.items()
                if key.startswith("eval_") and key != "eval_runtime"
            }
    return {}


class StartingPointCallback(TrainerCallback):
    """Evaluates the untrained model before the first step and warns at the end if training ended below it.

    The evaluation is the trainer's own evaluator; it is logged at step 0 (``eval_<metric>`` keys plus
    ``starting_point: 1``) and so kept in every checkpoint's ``trainer_state.json``: a resumed run finds it there
    and does not evaluate again. It runs under a forked random state, so the training run is unchanged by it.

    Args:
        trainer: the ``DistillationTrainer`` (its evaluator, logging and run summary are used).
    """

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.metrics: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        self.metrics = starting_point_from_history(state.log_history)
        if state.global_step == 0 and not self.metrics:
            with torch.random.fork_rng(devices=[]):
                self.metrics = self.trainer._run_evaluator()
            entry = {f"eval_{name}": float(value) for name, value in self.metrics.items()}
            entry[STARTING_POINT_MARKER] = 1
            self.trainer.log(entry)
            logger.info("starting point (step 0): %s", self._primary_text(args))
        self.trainer.add_to_run_summary("starting_point", dict(self.metrics))

    def _primary_text(self, args) -> str:
        metric = args.metric_for_best_model or ""
        value = self.metrics.get(metric.removeprefix("eval_"))
        return f"{metric} = {value:.4f}" if value is not None else f"{len(self.metrics)} metrics"

    def on_train_end(self, args, state, control, **kwargs):
        from hf_distill.evaluation.starting_point import compare_to_starting_point

        metric = (args.metric_for_best_model or "").removeprefix("eval_")
        if not metric or not self.metrics:
            return
        final = state.best_metric
        if final is None:
            evaluations = [entry for entry in state.log_history if f"eval_{metric}" in entry]
            final = evaluations[-1][f"eval_{metric}"] if evaluations else None
        if final is None:
            return
        delta = compare_to_starting_point(
            {metric: final}, self.metrics, metric, what="the best evaluated checkpoint"
        )
        self.trainer.add_to_run_summary("best_minus_starting_point", delta)
