"""Resizing of spatial feature maps and of ViT token grids to another grid (one implementation for both).

UNIC resizes the student's token grid to each teacher's (bilinear, SPEC §3); MLFD aligns student maps to the
joint teacher's fused maps (area averaging when shrinking, bilinear when growing, SPEC §4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SHRINK_MODES = ("area", "bilinear")


def resize_grid(feature_map: torch.Tensor, size: Sequence[int], shrink: str = "area") -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, *size)``; unchanged when already that size.

    Args:
        feature_map: the map to resize.
        size: target ``(height, width)``.
        shrink: ``"area"``: adaptive average pooling when the map shrinks in both directions (each target cell
            averages the cells it covers), bilinear otherwise; ``"bilinear"``: bilinear always.
    """
    if shrink not in SHRINK_MODES:
        raise ValueError(f"shrink must be one of {SHRINK_MODES}, got {shrink!r}")
    height, width = int(size[0]), int(size[1])
    if tuple(feature_map.shape[-2:]) == (height, width):
        return feature_map
    if shrink == "area" and feature_map.shape[-2] >= height and feature_map.shape[-1] >= width:
        return F.adaptive_avg_pool2d(feature_map, (height, width))
    return F.interpolate(feature_map, size=(height, width), mode="bilinear", align_corners=False)


def align_spatial(feature_map: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """MLFD's alignment of a ``(B, C, H, W)`` map to ``size``: area averaging when shrinking, else bilinear.

    Args:
        feature_map: the map to resize.
        size: target ``(height, width)``.
    """
    return resize_grid(feature_map, size, shrink="area")


def resize_token_grid(tokens: torch.Tensor, grid: Sequence[int], target: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize row-major tokens ``(batch, h * w, dim)`` from ``grid`` to ``target`` (UNIC).

    Args:
        tokens: the tokens.
        grid: their ``(h, w)``.
        target: the wanted ``(h, w)``.
    """
    if tuple(grid) == tuple(target):
        return tokens
    batch, _, dim = tokens.shape
    spatial = tokens.transpose(1, 2).reshape(batch, dim, int(grid[0]), int(grid[1]))
    return resize_grid(spatial, target, shrink="bilinear").flatten(2).transpose(1, 2)


__all__ = ["SHRINK_MODES", "align_spatial", "resize_grid", "resize_token_grid"]
