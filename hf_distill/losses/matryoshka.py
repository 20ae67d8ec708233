"""Matryoshka widths: one embedding trained so that each of its L2-normalised prefixes is an embedding too.

Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022 (the idea; sentence-transformers offers it
for text as ``MatryoshkaLoss``). For widths ``m_1 > m_2 > ...`` (the first = the full width) and weights
``w_i``, a loss ``L`` computed from the embedding becomes ``Σ_i w_i · L(prefix_{m_i}) / Σ_i w_i``: the weighted
mean keeps the loss on the scale of a single width, so ``matryoshka_dims = [full]`` is the plain loss.

A cosine classifier at width ``m`` uses the first ``m`` columns of its class weights, renormalised — the
weight-tied form of the paper (MRL-E): no extra parameters, and the exported embedder is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from hf_distill.models.embedder.configuration_embedder import check_matryoshka_dims

__all__ = ["MatryoshkaWidths", "prefix_cosine_logits", "prefix_embeddings"]


def prefix_embeddings(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` values of each row, L2-normalised.

    Args:
        embeddings: ``(batch, width)``.
        dim: prefix width, at most ``width``.
    """
    if dim > embeddings.shape[-1]:
        raise ValueError(f"prefix width {dim} is larger than the embedding width {embeddings.shape[-1]}")
    return F.normalize(embeddings[..., :dim], dim=-1)


def prefix_cosine_logits(embeddings: torch.Tensor, class_weights: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine logits of the width-``dim`` prefixes against the width-``dim`` prefixes of the class weights.

    Args:
        embeddings: ``(batch, width)``.
        class_weights: ``(num_classes, width)`` weights of a cosine classifier.
        dim: prefix width.
    """
    # Float32 even under autocast, as in CosineClassifier: these cosines are scaled into a softmax.
    with torch.autocast(embeddings.device.type, enabled=False):
        return F.linear(
            prefix_embeddings(embeddings.float(), dim), prefix_embeddings(class_weights.float(), dim)
        )


class MatryoshkaWidths:
    """Nested widths and their weights; combines per-width losses into their weighted mean.

    Args:
        dims: widths, largest (the full embedding width) first, e.g. ``[64, 32, 16]``.
        weights: one weight per width (default: equal).
        embed_dim: the full width, checked against ``dims[0]`` when given.
    """

    def __init__(
        self, dims: Sequence[int], weights: Sequence[float] | None = None, embed_dim: int | None = None
    ) -> None:
        self.dims = check_matryoshka_dims(dims, embed_dim)
        weights = [1.0] * len(self.dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.dims):
            raise ValueError(
                f"matryoshka_weights has {len(weights)} values for {len(self.dims)} widths {self.dims}"
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"matryoshka_weights must be >= 0 with a positive sum, got {weights}")
        self.weights = weights

    @property
    def nested(self) -> bool:
        """Whether there is more than the full width."""
        return len(self.dims) > 1

    def combine(self, loss_at: Callable[[int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Weighted mean over the widths of every component ``loss_at(dim)`` returns.

        Args:
            loss_at: width -> named loss components at that width (each a scalar tensor).

        Returns:
            each component's weighted mean under its own name, and each width's value as ``"<name>@<dim>"``.
        """
        total = sum(self.weights)
        combined: dict[str, torch.Tensor] = {}
        for dim, weight in zip(self.dims, self.weights):
            for name, value in loss_at(dim).items():
                combined[name] = combined.get(name, 0.0) + (weight / total) * value
                combined[f"{name}@{dim}"] = value.detach()
        return combined
