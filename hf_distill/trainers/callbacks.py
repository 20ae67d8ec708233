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


def validation_curve(log_history: list[dict], metric: str = "merged/mean/R@1") -> list[list[float]]:
    """``[[step, value], ...]`` of a logged validation metric, the step-0 starting point included.

    Args:
        log_history: ``TrainerState.log_history``.
        metric: the metric, with or without its ``eval_`` prefix.
    """
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    return [[entry["step"], entry[key]] for entry in log_history if key in entry]


def selected_step(best_checkpoint: str | None) -> int | None:
    """The step of the checkpoint kept by ``load_best_model_at_end`` (``.../checkpoint-800`` → 800), or None."""
    if not best_checkpoint:
        return None
    return int(str(best_checkpoint).rstrip("/").rsplit("-", 1)[-1])


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


class ModelCardCallback(TrainerCallback):
    """Fills a :class:`~hf_distill.hub.EmbedderCardData` as training goes (sentence-transformers' way).

    - train begin: the training arguments that differ from their defaults; the starting point — the untrained
      backbone as full features and as a PCA of them fitted on the training split, evaluated on
      ``card_data.eval_split`` of ``benchmark`` (when given) and appended to the log history at step 0, so a
      resumed run reads it back instead of measuring a trained model;
    - log: the log history, and the step-0 evaluation of the untrained model logged by
      :class:`StartingPointCallback`;
    - evaluate: the evaluator's last metrics and their step;
    - train end: the number of steps and the final log history.

    The recipe then sets ``card_data.metrics`` (the test metrics) and renders the card with
    ``card_data.to_model_card(embedder, plots_dir=...)``.

    Args:
        card_data: the card data to fill.
        benchmark: measure the starting point on it at train begin; None to leave ``card_data.starting_point``
            as the recipe set it.
        **starting_point_kwargs: passed to :func:`~hf_distill.evaluation.starting_point.evaluate_starting_point`
            (``domains``, ``protocols``, ``max_fit_images``, ``batch_size``, ``pca_dim``; ``pca_dim`` defaults
            to the embedding width).
    """

    def __init__(self, card_data, benchmark=None, **starting_point_kwargs) -> None:
        self.card_data = card_data
        self.benchmark = benchmark
        self.starting_point_kwargs = starting_point_kwargs

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from hf_distill.hub.card_data import STARTING_POINT_PREFIX
        from hf_distill.hub.model_card import command_line

        self.card_data.record_training_arguments(args)
        if self.card_data.command is None:
            self.card_data.command = command_line()
        untrained = starting_point_from_history(state.log_history)
        if untrained:
            self.card_data.record_evaluation(untrained, 0, untrained=True)
        logged = {
            key: value
            for entry in state.log_history
            for key, value in entry.items()
            if key.startswith(STARTING_POINT_PREFIX)
        }
        if logged:
            self.card_data.record_starting_point(logged)
        elif self.benchmark is not None and not self.card_data.starting_point:
            if state.global_step > 0:
                logger.warning(
                    "resumed at step %d without a logged starting point: the card shows none (the model is "
                    "no longer untrained)",
                    state.global_step,
                )
            elif state.is_world_process_zero:
                results = self._measure_starting_point(model)
                self.card_data.record_starting_point(results)
                state.log_history.append({**results, "step": state.global_step})
        self.card_data.log_history = state.log_history

    def _measure_starting_point(self, model) -> dict[str, float]:
        from hf_distill.evaluation.starting_point import evaluate_starting_point

        export = getattr(model, "export_embedder", None)
        if export is None:
            raise TypeError(
                f"ModelCardCallback(benchmark=...) measures the starting point on model.export_embedder(), which "
                f"{type(model).__name__} lacks; measure it with evaluate_starting_point and set "
                "card_data.starting_point instead"
            )
        from hf_distill.layers.trunk import exported_for_inputs

        # Over a cached trunk the benchmark holds maps: the starting point reads them as training did.
        embedder = exported_for_inputs(model, export())
        kwargs = dict(self.starting_point_kwargs)
        kwargs.setdefault("pca_dim", embedder.config.embed_dim or 64)
        results = evaluate_starting_point(embedder, self.benchmark, split=self.card_data.eval_split, **kwargs)
        logger.info("starting point on %s: %s", self.card_data.eval_split, results)
        return results

    def on_log(self, args, state, control, logs=None, **kwargs):
        untrained = starting_point_from_history([logs or {}])
        if untrained:
            self.card_data.record_evaluation(untrained, 0, untrained=True)
        self.card_data.log_history = state.log_history

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            self.card_data.record_evaluation(metrics, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.card_data.trained_steps = state.global_step
        self.card_data.log_history = [dict(entry) for entry in state.log_history]


def plateau_reached(
    evaluations: list[tuple[int, float]], fraction: float, min_gain: float, greater_is_better: bool = True
) -> bool:
    """The run-to-convergence rule: whether the last ``fraction`` of the steps gained at most ``min_gain``.

    With the last evaluation at step ``t``, the evaluations split at ``(1 - fraction) · t``; the rule holds when the
    best value after the split beats the best value up to it by no more than ``min_gain``. It needs at least one
    evaluation on each side (so never holds on the first evaluation).

    Args:
        evaluations: ``(step, value)`` of every evaluation so far, in step order.
        fraction: share of the steps done so far that must bring a gain (e.g. 0.2).
        min_gain: the smallest gain that counts, in the metric's units (0.003 = 0.3 points of a 0–1 R@1).
        greater_is_better: whether larger values are better.
    """
    if not evaluations:
        return False
    boundary = evaluations[-1][0] * (1.0 - fraction)
    sign = 1.0 if greater_is_better else -1.0
    before = [sign * value for step, value in evaluations if step <= boundary]
    after = [sign * value for step, value in evaluations if step > boundary]
    if not before or not after:
        return False
    return max(after) - max(before) <= min_gain


class PlateauStoppingCallback(TrainerCallback):
    """Stops training once the validation metric has stopped improving (the run-to-convergence budget rule).

    Rule: after every evaluation at step ``t`` (not before ``min_steps``), training stops when the best value of
    ``metric_for_best_model`` over the last ``fraction`` of the steps, ``((1 - fraction)·t, t]``, is not above the
    best value up to ``(1 - fraction)·t`` by more than ``min_gain`` (:func:`plateau_reached`); ``max_steps`` (or
    ``num_train_epochs``) stays the cap. Use it with ``load_best_model_at_end`` so that the model kept is the best
    evaluated checkpoint, as UDON selects on validation merged R@1. The step-0 starting-point evaluation is not
    counted (it measures the untrained model). The evaluations are read back from ``log_history`` when training
    starts, so a resumed run applies the rule to the whole run.

    Args:
        fraction: share of the steps done so far that must bring a gain (default 0.2: the last 20 %).
        min_gain: gain that counts as progress, in the metric's units (default 0.003: 0.3 points of R@1).
        min_steps: never stop before this step.
        trainer: optional ``DistillationTrainer``: the stopping step goes into its run summary.
    """

    def __init__(
        self, fraction: float = 0.2, min_gain: float = 0.003, min_steps: int = 0, trainer=None
    ) -> None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"plateau fraction must lie in (0, 1), got {fraction}")
        if min_gain < 0:
            raise ValueError(f"plateau min_gain must be >= 0, got {min_gain}")
        self.fraction = fraction
        self.min_gain = min_gain
        self.min_steps = min_steps
        self.trainer = trainer
        self.evaluations: list[tuple[int, float]] = []
        self.stopped_at: int | None = None

    @staticmethod
    def _key(args) -> str:
        metric = args.metric_for_best_model
        if not metric:
            raise ValueError("PlateauStoppingCallback needs metric_for_best_model (e.g. 'merged/mean/R@1')")
        return metric if metric.startswith("eval_") else f"eval_{metric}"

    def _record(self, step: int, value: float) -> None:
        # The same step evaluated twice (an eval dataset and an evaluator) keeps one value.
        if self.evaluations and self.evaluations[-1][0] == step:
            self.evaluations[-1] = (step, value)
        else:
            self.evaluations.append((step, value))

    def on_train_begin(self, args, state, control, **kwargs):
        key = self._key(args)
        self.evaluations, self.stopped_at = [], None
        for entry in state.log_history:
            if key in entry and not entry.get(STARTING_POINT_MARKER):
                self._record(int(entry["step"]), float(entry[key]))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        key = self._key(args)
        if not metrics or key not in metrics:
            return
        self._record(state.global_step, float(metrics[key]))
        if state.global_step < self.min_steps:
            return
        if plateau_reached(
            self.evaluations, self.fraction, self.min_gain, args.greater_is_better is not False
        ):
            self.stopped_at = state.global_step
            control.should_training_stop = True
            logger.info(
                "%s gained at most %g over the last %.0f%% of %d steps: stopping (plateau)",
                key,
                self.min_gain,
                100 * self.fraction,
                state.global_step,
            )

    def on_train_end(self, args, state, control, **kwargs):
        if not self.evaluations:
            logger.warning(
                "stop_on_plateau: no evaluation logged %s; training ran to its cap", self._key(args)
            )
        if self.trainer is not None:
            self.trainer.add_to_run_summary(
                "plateau",
                {
                    "stopped_at_step": self.stopped_at,
                    "fraction": self.fraction,
                    "min_gain": self.min_gain,
                    "evaluations": [list(item) for item in self.evaluations],
                },
            )
