"""A divergence guard: warn when training has silently stopped learning.

A far too large learning rate does not always produce a non-finite loss (which the trainer refuses): a cosine
classifier saturates, the loss settles at a plateau and the gradients either vanish or blow up, and the run ends
"successfully" with a useless model. :class:`DivergenceGuard` watches the logged ``loss`` and ``grad_norm`` and
warns, naming the step and the domain with the highest loss, when over a window of steps the loss has not
decreased *and* the gradient norms have collapsed (or exploded) relative to the first logged one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

DOMAIN_LOSS_PREFIX = "domain_loss/"


@dataclass
class _Entry:
    step: int
    loss: float
    grad_norm: float | None
    domain_losses: dict[str, float]


class DivergenceGuard(TrainerCallback):
    """Warn when the loss stops decreasing while gradient norms collapse or explode for a window of steps.

    The guard compares the mean logged loss of the last ``window`` steps with that of the ``window`` steps
    before; if it did not decrease and every gradient norm logged in the last window is below
    ``collapse_ratio`` times the first logged gradient norm (or above ``explode_ratio`` times it, or not
    finite), it logs a warning naming the step and the domain with the highest loss in the window (from the
    ``domain_loss/<name>`` entries single-domain trainers log) and records it in :attr:`warnings`. It warns at
    most once per window. Decisions need at least ``min_logs`` logged entries in each of the two windows, so set
    ``logging_steps`` well below ``window``.

    Args:
        window: steps per comparison window; 0 disables the guard.
        collapse_ratio: gradient norms below this fraction of the first logged one count as collapsed.
        explode_ratio: gradient norms above this multiple of the first logged one count as exploded.
        min_logs: logged entries needed in each window.
    """

    def __init__(
        self, window: int = 100, collapse_ratio: float = 1e-3, explode_ratio: float = 1e3, min_logs: int = 2
    ) -> None:
        if window < 0:
            raise ValueError(f"divergence window must be >= 0 steps, got {window}")
        if not 0.0 < collapse_ratio < 1.0 < explode_ratio:
            raise ValueError(
                f"need 0 < collapse_ratio < 1 < explode_ratio, got {collapse_ratio} and {explode_ratio}"
            )
        self.window = int(window)
        self.collapse_ratio = collapse_ratio
        self.explode_ratio = explode_ratio
        self.min_logs = max(int(min_logs), 1)
        self.history: list[_Entry] = []
        self.reference_grad_norm: float | None = None
        self.warnings: list[dict[str, Any]] = []
        self._last_warning_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.window == 0 or not logs or "loss" not in logs or any(k.startswith("eval_") for k in logs):
            return
        grad_norm = logs.get("grad_norm")
        grad_norm = None if grad_norm is None else float(grad_norm)
        if (
            self.reference_grad_norm is None
            and grad_norm is not None
            and math.isfinite(grad_norm)
            and grad_norm > 0
        ):
            self.reference_grad_norm = grad_norm
        domain_losses = {
            key[len(DOMAIN_LOSS_PREFIX) :]: float(value)
            for key, value in logs.items()
            if key.startswith(DOMAIN_LOSS_PREFIX)
        }
        self.history.append(_Entry(int(state.global_step), float(logs["loss"]), grad_norm, domain_losses))
        self._check(int(state.global_step))

    def _check(self, step: int) -> None:
        if self.reference_grad_norm is None or step < 2 * self.window:
            return
        if self._last_warning_step is not None and step - self._last_warning_step < self.window:
            return
        current = [e for e in self.history if step - self.window < e.step <= step]
        previous = [e for e in self.history if step - 2 * self.window < e.step <= step - self.window]
        if len(current) < self.min_logs or len(previous) < self.min_logs:
            return
        current_loss = sum(e.loss for e in current) / len(current)
        previous_loss = sum(e.loss for e in previous) / len(previous)
        if not current_loss >= previous_loss:
            return
        norms = [e.grad_norm for e in current if e.grad_norm is not None]
        if not norms:
            return
        reference = self.reference_grad_norm
        if all(math.isfinite(n) and n < self.collapse_ratio * reference for n in norms):
            kind = "collapsed"
        elif all(not math.isfinite(n) or n > self.explode_ratio * reference for n in norms):
            kind = "exploded"
        else:
            return
        domain = self._worst_domain(current)
        self._last_warning_step = step
        record = {
            "step": step,
            "domain": domain,
            "gradient_norms": kind,
            "loss_previous_window": previous_loss,
            "loss_last_window": current_loss,
            "grad_norm_last": norms[-1],
            "grad_norm_first": reference,
        }
        self.warnings.append(record)
        where = f"step {step}" + (f", domain '{domain}' (highest loss in the window)" if domain else "")
        logger.warning(
            "training looks diverged at %s: over the last %d steps the mean loss did not decrease (%.4g -> %.4g) "
            "and the gradient norms %s (last %.3g, first logged %.3g). Lower the learning rate, enable gradient "
            "clipping (max_grad_norm) or check that domain's data; the guard's window is "
            "divergence_window.",
            where,
            self.window,
            previous_loss,
            current_loss,
            kind,
            norms[-1],
            reference,
        )

    @staticmethod
    def _worst_domain(entries: list[_Entry]) -> str | None:
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for entry in entries:
            for name, value in entry.domain_losses.items():
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
        if not sums:
            return None
        return max(sums, key=lambda name: sums[name] / counts[name])


__all__ = ["DivergenceGuard"]
