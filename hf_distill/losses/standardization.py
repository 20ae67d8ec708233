"""Teacher feature standardisation with running statistics (UNIC, SPEC §3).

Teachers differ wildly in feature scale, so each teacher's targets (per token type) are standardised
per dimension before the loss. The statistics are a running estimate ``μ ← (1 − m)·μ + m·μ_batch`` (same
for σ) whose momentum ``m`` follows a cosine schedule from 1.0 down to 0.001 over training, as in the
authors' released code: early steps track the current batch, late steps barely move. Targets of a step are
standardised with the statistics from *before* that step's update; the statistics start at mean 0 / std 1,
are computed over every process's batch, and go into checkpoints through ``state_dict``.

A dimension that happens to be constant over one batch (a ReLU feature of a CNN teacher that fired on none
of its images) gets std 0 at the momentum-1 step and would divide the next targets by ``eps``; ``min_std_ratio``
floors each dimension's std at that fraction of the key's mean std (0: the released code's plain ``eps``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def cosine_momentum(step: int, total_steps: int, start: float = 1.0, end: float = 0.001) -> float:
    """Momentum at ``step`` of a cosine schedule from ``start`` (step 0) to ``end`` (``total_steps``).

    Args:
        step: current optimisation step.
        total_steps: length of training; later steps keep ``end``.
        start: momentum at step 0.
        end: momentum at the end.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def batch_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over every leading axis (batch, or batch × tokens), across all processes.

    Args:
        features: ``(..., dim)``.
    """
    flat = features.detach().float().reshape(-1, features.shape[-1])
    moments = torch.stack([flat.sum(0), flat.pow(2).sum(0)])
    count = torch.tensor([float(flat.shape[0])], device=flat.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(moments)
        dist.all_reduce(count)
    mean = moments[0] / count
    # Population variance from the pooled moments; clamp the round-off that can make it slightly negative.
    variance = (moments[1] / count - mean.pow(2)).clamp_min(0.0)
    return mean, variance.sqrt()


class FeatureStandardizer:
    """Running per-dimension mean/std per key (one key per teacher and token type).

    Args:
        total_steps: training length for the momentum schedule.
        momentum_start: momentum at step 0 (released code: 1.0).
        momentum_end: momentum at the last step (released code: 0.001).
        eps: added to the std before dividing.
        min_std_ratio: floor of each dimension's std, as a fraction of the mean std over the key's dimensions
            (0: no floor, as released).
    """

    def __init__(
        self,
        total_steps: int,
        momentum_start: float = 1.0,
        momentum_end: float = 0.001,
        eps: float = 1e-6,
        min_std_ratio: float = 0.0,
    ) -> None:
        if min_std_ratio < 0:
            raise ValueError(f"min_std_ratio must be >= 0, got {min_std_ratio}")
        self.min_std_ratio = min_std_ratio
        self.total_steps = int(total_steps)
        self.momentum_start = momentum_start
        self.momentum_end = momentum_end
        self.eps = eps
        self.means: dict[str, torch.Tensor] = {}
        self.stds: dict[str, torch.Tensor] = {}

    def momentum(self, step: int) -> float:
        """The schedule's momentum at ``step``."""
        return cosine_momentum(step, self.total_steps, self.momentum_start, self.momentum_end)

    def __call__(self, key: str, features: torch.Tensor, step: int, update: bool = True) -> torch.Tensor:
        """Standardise ``features`` with the current statistics of ``key``, then update them.

        Args:
            key: e.g. ``"dino/cls"``.
            features: ``(batch, dim)`` or ``(batch, tokens, dim)`` targets.
            step: the optimisation step (sets the momentum).
            update: fold this batch into the statistics (False at evaluation).
        """
        dim = features.shape[-1]
        if key not in self.means:
            self.means[key] = torch.zeros(dim, device=features.device)
            self.stds[key] = torch.ones(dim, device=features.device)
        mean, std = self.means[key].to(features.device), self.stds[key].to(features.device)
        if mean.shape[0] != dim:
            raise ValueError(
                f"standardisation statistics of {key!r} have {mean.shape[0]} dims, features have {dim}"
            )
        divisor = std.clamp_min(self.min_std_ratio * std.mean()) if self.min_std_ratio else std
        standardized = (features.float() - mean) / (divisor + self.eps)
        if update:
            batch_mean, batch_std = batch_statistics(features)
            m = self.momentum(step)
            self.means[key] = (1.0 - m) * mean + m * batch_mean
            self.stds[key] = (1.0 - m) * std + m * batch_std
        # Float32 whatever the teachers' dtype: the loss compares these to the student's predictions.
        return standardized

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Statistics as CPU tensors (stored in every checkpoint)."""
        return {
            "means": {key: value.detach().cpu() for key, value in self.means.items()},
            "stds": {key: value.detach().cpu() for key, value in self.stds.items()},
        }

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore statistics saved by `state_dict`."""
        self.means = {key: value.clone() for key, value in state["means"].items()}
        self.stds = {key: value.clone() for key, value in state["stds"].items()}


__all__ = ["FeatureStandardizer", "batch_statistics", "cosine_momentum"]
