"""Input normalisation of images scaled to ``[0, 1]``: ``(pixels - mean) / std`` per channel, written once.

Trainers (the UNIC student's input), frozen teachers (each its own statistics), MLFD's cache builder and the
cached-view datasets all normalise tensors that are already in ``[0, 1]``; they share :class:`PixelNormalize`.
PIL images go through :class:`~hf_distill.data.ImageTransform`, whose torchvision pipeline normalises itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PixelNormalize(nn.Module):
    """``(pixels - mean) / std`` per RGB channel, for one image ``(3, H, W)`` or a batch ``(N, 3, H, W)``.

    The statistics are non-persistent buffers (they follow ``.to(device)`` and stay out of state dicts) and are
    cast to the pixels' dtype and device at each call, so one instance serves data-loading workers on the CPU
    and a model on an accelerator.

    Args:
        mean: per-channel mean of the model's pretraining (e.g. ``config.image_mean``).
        std: per-channel standard deviation (positive).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if any(value <= 0 for value in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean)).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise ``pixels`` (channels third from last).

        Args:
            pixels: ``(3, H, W)`` or ``(N, 3, H, W)`` values in ``[0, 1]``.
        """
        if pixels.dim() < 3 or pixels.shape[-3] != 3:
            raise ValueError(f"expected pixels shaped (3, H, W) or (N, 3, H, W), got {tuple(pixels.shape)}")
        return (pixels - self.mean.to(pixels)) / self.std.to(pixels)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


__all__ = ["PixelNormalize"]
