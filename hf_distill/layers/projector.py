"""Projectors of UNIC's ladder (SPEC §3): a 2-layer MLP per selected student block, outputs summed."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Sequential):
    """Linear → GELU → Linear, one rung of a ladder.

    Args:
        in_dim: student width.
        hidden_dim: hidden width.
        out_dim: teacher feature width.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class ProjectorLadder(nn.Module):
    """One projector per selected block; the prediction is the sum of their outputs.

    Args:
        blocks: selected block indices (non-negative, increasing).
        depth: number of student blocks (the last one gets the wide projector).
        in_dim: student width ``d``, or one width per selected block (a CNN's stages differ in width).
        out_dim: teacher feature width.
        hidden_ratio: hidden width of intermediate projectors, in multiples of their input width.
        last_hidden_ratio: hidden width of the last block's projector, in multiples of its input width.
    """

    def __init__(
        self,
        blocks: list[int],
        depth: int,
        in_dim: int | list[int],
        out_dim: int,
        hidden_ratio: float,
        last_hidden_ratio: float,
    ) -> None:
        super().__init__()
        self.blocks = list(blocks)
        widths = [in_dim] * len(self.blocks) if isinstance(in_dim, int) else [int(width) for width in in_dim]
        if len(widths) != len(self.blocks):
            raise ValueError(f"ProjectorLadder got {len(widths)} input widths for {len(self.blocks)} blocks")
        self.projectors = nn.ModuleList(
            Projector(
                width, int(width * (last_hidden_ratio if block == depth - 1 else hidden_ratio)), out_dim
            )
            for block, width in zip(self.blocks, widths)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Sum the projections of ``features`` (one tensor per selected block, same order as ``blocks``)."""
        output = self.projectors[0](features[0])
        for projector, feature in zip(self.projectors[1:], features[1:]):
            output = output + projector(feature)
        return output


__all__ = ["Projector", "ProjectorLadder"]
