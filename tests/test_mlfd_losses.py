"""MLFD student loss: every term against values computed by hand."""

import math

import pytest
import torch

from hf_distill.losses.mlfd import (
    MlfdLoss,
    feature_map_mse,
    multi_level_distillation_loss,
)


def _log_softmax_pair(a: float, b: float) -> tuple[float, float]:
    # log-softmax of the two logits (a, b), written out.
    norm = math.log(math.exp(a) + math.exp(b))
    return a - norm, b - norm


STUDENT_LOGITS = torch.tensor([[2.0, 0.0]])
TEACHER_LOGITS = torch.tensor([[0.0, 2.0]])
LABELS = torch.tensor([0])
# CE(y=0, [2, 0]) = log(1 + e^-2).
CE = math.log(1 + math.exp(-2.0))
# T = 2: teacher probabilities softmax([0, 1]), student log-probabilities log_softmax([1, 0]); times T² = 4.
_P_T = [1 / (1 + math.e), math.e / (1 + math.e)]
_LOG_P_S = _log_softmax_pair(1.0, 0.0)
SOFT_CE = 4 * -(_P_T[0] * _LOG_P_S[0] + _P_T[1] * _LOG_P_S[1])


def test_cross_entropy_term():
    losses = multi_level_distillation_loss(STUDENT_LOGITS, LABELS, betas=(), gamma=1.0)
    assert losses["ce"].item() == pytest.approx(CE, rel=1e-6)
    assert losses["loss"].item() == pytest.approx(CE, rel=1e-6)
    assert set(losses) == {"loss", "ce"}


def test_soft_cross_entropy_term_carries_t_squared():
    losses = multi_level_distillation_loss(
        STUDENT_LOGITS, LABELS, TEACHER_LOGITS, betas=(), gamma=0.0, alpha=1.0
    )
    assert losses["soft_ce"].item() == pytest.approx(SOFT_CE, rel=1e-6)
    assert SOFT_CE == pytest.approx(4.177264, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(SOFT_CE, rel=1e-6)


def test_feature_mse_aligns_the_student_grid_to_the_teacher():
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    teacher = torch.full((1, 1, 1, 1), 2.0)
    # The 2x2 student map is average-pooled to 1x1 (2.5): (2.5 - 2)^2.
    assert feature_map_mse(student, teacher).item() == pytest.approx(0.25)
    # Same grid: plain element-wise mean of squared differences.
    assert feature_map_mse(student, torch.zeros(1, 1, 2, 2)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    with pytest.raises(ValueError, match="distill_channels"):
        feature_map_mse(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


def test_default_weights_combine_all_terms():
    student_maps = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2), torch.zeros(1, 2, 1, 1)]
    teacher_maps = [torch.full((1, 1, 1, 1), 2.0), torch.ones(1, 2, 1, 1)]
    loss = MlfdLoss()
    assert (loss.alpha, loss.beta, loss.gamma, loss.temperature) == (0.6, 0.2, 0.2, 2.0)
    losses = multi_level_distillation_loss(
        STUDENT_LOGITS, LABELS, TEACHER_LOGITS, student_maps, teacher_maps, betas=loss.betas(2)
    )
    assert losses["mse_0"].item() == pytest.approx(0.25)
    assert losses["mse_1"].item() == pytest.approx(1.0)
    expected = 0.2 * CE + 0.6 * SOFT_CE + 0.2 * 0.25 + 0.2 * 1.0
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-6)
    weighted = multi_level_distillation_loss(
        STUDENT_LOGITS,
        LABELS,
        TEACHER_LOGITS,
        student_maps,
        teacher_maps,
        betas=MlfdLoss(beta=[1.0, 0.0]).betas(2),
    )
    assert weighted["loss"].item() == pytest.approx(0.2 * CE + 0.6 * SOFT_CE + 0.25, rel=1e-6)


def test_teacher_side_receives_no_gradient():
    student_logits = STUDENT_LOGITS.clone().requires_grad_()
    teacher_logits = TEACHER_LOGITS.clone().requires_grad_()
    student_map = torch.zeros(1, 1, 2, 2, requires_grad=True)
    teacher_map = torch.ones(1, 1, 2, 2, requires_grad=True)
    losses = multi_level_distillation_loss(
        student_logits, LABELS, teacher_logits, [student_map], [teacher_map]
    )
    losses["loss"].backward()
    assert teacher_logits.grad is None and teacher_map.grad is None
    # d/ds of 0.2 * mean((s - 1)^2) over 4 cells = 0.2 * 2 * (s - 1) / 4 = -0.1 at s = 0.
    torch.testing.assert_close(student_map.grad, torch.full((1, 1, 2, 2), -0.1))


def test_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="one per level"):
        multi_level_distillation_loss(STUDENT_LOGITS, LABELS, None, [torch.zeros(1, 1, 1, 1)], [])
    with pytest.raises(ValueError, match="beta weights"):
        multi_level_distillation_loss(
            STUDENT_LOGITS, LABELS, None, [torch.zeros(1, 1, 1, 1)], [torch.zeros(1, 1, 1, 1)], betas=()
        )
