"""Details of the logit-distillation and teacher-dropping losses that the mutation run (docs/testing.md) found
unchecked: the T² factor at a temperature where T² ≠ 2T, the shape error's message, the generator of the draw,
default teacher names and per-teacher keep rates over the batch (not over teachers)."""

import math

import pytest
import torch

from hf_distill.losses.logit import (
    LogitDistillationLoss,
    SoftCrossEntropyDistillationLoss,
    kl_logit_distillation,
    soft_cross_entropy_distillation,
)
from hf_distill.losses.teacher_dropping import teacher_dropping_coefficients, teacher_dropping_loss


def test_soft_cross_entropy_scales_by_the_squared_temperature():
    # Student uniform over 2 classes: −Σ p log ½ = ln 2 whatever the teacher; times T² = 9 at T = 3 (2T would be 6).
    loss = soft_cross_entropy_distillation(torch.zeros(2, 2), torch.tensor([[3.0, 0.0], [0.0, 1.0]]), 3.0)
    assert loss.item() == pytest.approx(9 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("distill", [kl_logit_distillation, soft_cross_entropy_distillation])
def test_logit_losses_name_both_shapes_when_they_differ(distill):
    with pytest.raises(ValueError, match=r"differ in shape: \(2, 3\) vs \(2, 4\)"):
        distill(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_teacher_dropping_draws_from_the_given_generator_only():
    losses = torch.tensor([[3.0, 1.0, 2.0], [0.5, 0.25, 4.0], [1.0, 2.0, 0.0], [0.0, 0.0, 9.0]])
    torch.manual_seed(1)
    first = teacher_dropping_coefficients(losses, 0.5, torch.Generator().manual_seed(7))
    torch.manual_seed(2)  # another global state: the same draw
    second = teacher_dropping_coefficients(losses, 0.5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # By hand: keep where the generator's uniform draw is >= p, and always the max-loss teacher of each row.
    keep = torch.rand(losses.shape, generator=torch.Generator().manual_seed(7)) >= 0.5
    keep[torch.arange(4), losses.argmax(dim=1)] = True
    torch.testing.assert_close(first, keep.float() / keep.sum(), rtol=0, atol=0)


def test_teacher_dropping_loss_names_and_keep_rates_per_teacher():
    # drop_prob 0: every teacher kept; 2 images × 3 teachers, so a keep rate over teachers would have 2 entries.
    losses = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    output = teacher_dropping_loss(losses, 0.0)
    assert set(output) == {
        "loss",
        *(f"teacher_{i}/{part}" for i in range(3) for part in ("loss", "keep_rate")),
    }
    assert [output[f"teacher_{i}/loss"].item() for i in range(3)] == [2.0, 3.0, 4.0]
    assert all(output[f"teacher_{i}/keep_rate"].item() == 1.0 for i in range(3))
    assert output["loss"].item() == pytest.approx(18.0 / 6)
    # The max-loss teacher (column 2 in every row) is always kept: its keep rate is 1 whatever p.
    dropped = teacher_dropping_loss(losses, 0.9, generator=torch.Generator().manual_seed(0))
    assert dropped["teacher_2/keep_rate"].item() == 1.0
    with pytest.raises(ValueError, match="2 teacher names for 3 loss columns"):
        teacher_dropping_loss(losses, 0.5, teacher_names=["a", "b"])


def test_teacher_dropping_loss_uses_the_given_generator():
    losses = torch.rand(16, 4, generator=torch.Generator().manual_seed(0))
    expected = teacher_dropping_coefficients(losses, 0.5, torch.Generator().manual_seed(5))
    for global_seed in (3, 4):
        torch.manual_seed(global_seed)
        output = teacher_dropping_loss(losses, 0.5, generator=torch.Generator().manual_seed(5))
        assert output["loss"].item() == pytest.approx((expected * losses).sum().item(), rel=1e-6)
        for i in range(4):
            assert output[f"teacher_{i}/keep_rate"].item() == pytest.approx(
                (expected[:, i] > 0).float().mean()
            )


def test_temperature_defaults_and_must_be_positive():
    assert LogitDistillationLoss().temperature == 0.1
    assert SoftCrossEntropyDistillationLoss().temperature == 2.0
    assert LogitDistillationLoss(temperature=0.5).temperature == 0.5
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"temperature must be positive, got {temperature}"):
            LogitDistillationLoss(temperature=temperature)
