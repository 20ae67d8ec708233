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
