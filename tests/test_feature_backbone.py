"""backbone_source="features": methods trained on cached frozen-backbone features start at those features."""

import pytest
import torch

from hf_distill.losses import UdonLoss
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel
from hf_distill.models.udon import UdonConfig, UdonModel


def test_untrained_adapter_is_the_identity_and_learns():
    torch.manual_seed(0)
    config = UniversalEmbedderConfig(
        backbone="features",
        backbone_source="features",
        backbone_kwargs={"dim": 8, "layers": 2, "hidden": 4},
        embed_dim=None,
        image_size=1,
    )
    model = UniversalEmbedderModel(config)
    features = torch.randn(5, 8)
    assert model.feature_dim == 8
    torch.testing.assert_close(
        model(pixel_values=features).embeddings, torch.nn.functional.normalize(features)
    )
    # Trainable: one gradient step moves the output away from the identity.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(pixel_values=features).embeddings[:, 0].sum().backward()
    optimizer.step()
    assert not torch.allclose(
        model(pixel_values=features).embeddings, torch.nn.functional.normalize(features)
    )


def test_udon_on_cached_features_and_the_gradient_path():
    torch.manual_seed(0)
    model = UdonModel(
        UdonConfig(
            backbone="features",
            backbone_source="features",
            backbone_kwargs={"dim": 16, "layers": 1},
            domains=["a", "b"],
            num_classes=[3, 4],
            image_size=1,
        )
    )
    inputs = {
        "pixel_values": torch.randn(6, 16),
        "labels": torch.arange(6) % 4,
        "domain_ids": torch.ones(6, dtype=torch.long),
    }
    for reaches, expected in ((False, False), (True, True)):
        model.zero_grad()
        loss = UdonLoss(teacher_weight=0.0, student_weight=0.0, distillation_reaches_backbone=reaches)
        loss(model, inputs)["loss"].backward()
        # The adapter's first linear layer only gets a gradient once the last one is non-zero; its last layer
        # (zero-initialised) gets one whenever a loss reaches the backbone.
        grad = model.backbone.blocks[0][-1].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == expected


def test_features_source_needs_the_width():
    with pytest.raises(ValueError, match="needs backbone_kwargs"):
        UniversalEmbedderModel(
            UniversalEmbedderConfig(backbone="features", backbone_source="features", image_size=1)
        )
