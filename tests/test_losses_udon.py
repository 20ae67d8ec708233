"""Hand-computed values for the cosine classifier, logit and relational distillation losses."""

import math

import pytest
import torch

from hf_distill.losses.classification import CosineClassificationLoss, CosineClassifier, apply_margin
from hf_distill.losses.logit import (
    LogitDistillationLoss,
    SoftCrossEntropyDistillationLoss,
    kl_logit_distillation,
)
from hf_distill.losses.relational import RelationalDistillationLoss


def _classifier_with_weights(weights):
    classifier = CosineClassifier(in_features=2, num_classes=2)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor(weights))
    return classifier


def test_cosine_classifier_outputs_cosines():
    classifier = _classifier_with_weights([[1.0, 0.0], [0.0, 2.0]])
    cosine = classifier(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(cosine, torch.tensor([[0.6, 0.8]]))


@pytest.mark.parametrize(
    "margin_type, margin, target_cosine",
    [
        ("none", 0.0, 0.6),
        ("cosface", 0.35, 0.6 - 0.35),
        # cos(acos(0.6) + 0.5) = 0.6·cos 0.5 − 0.8·sin 0.5
        ("arcface", 0.5, 0.6 * math.cos(0.5) - 0.8 * math.sin(0.5)),
    ],
)
def test_cosine_classification_loss_matches_hand_computed(margin_type, margin, target_cosine):
    cosine = torch.tensor([[0.6, 0.8]])
    labels = torch.tensor([0])
    out = CosineClassificationLoss(scale=16.0, margin=margin, margin_type=margin_type)(cosine, labels)
    # CE with logits (16·target, 16·0.8) and label 0 = log(1 + exp(16·(0.8 − target)))
    expected = math.log1p(math.exp(16.0 * (0.8 - target_cosine)))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["accuracy"].item() == 0.0


def test_arcface_margin_stays_monotonic_past_pi():
    cosine = torch.tensor([[-0.99, 0.0]])
    adjusted = apply_margin(cosine, torch.tensor([0]), 0.5, "arcface")
    # θ + m > π: linear continuation c − m·sin(m), below the unmodified cosine.
    assert adjusted[0, 0].item() == pytest.approx(-0.99 - 0.5 * math.sin(0.5))
    assert adjusted[0, 1].item() == 0.0


def test_classification_loss_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        CosineClassificationLoss()(torch.zeros(1, 2), torch.tensor([2]))


def test_kl_distillation_hand_computed_and_teacher_detached():
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[0.1, 0.0]], requires_grad=True)
    out = LogitDistillationLoss(temperature=0.1)(student, teacher)
    p = math.e / (1 + math.e)  # softmax([1, 0]) after dividing by τ = 0.1
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    out["loss"].backward()
    assert teacher.grad is None and student.grad is not None


def test_kl_is_zero_for_identical_logits_and_averaged_over_batch():
    logits = torch.randn(4, 5)
    assert kl_logit_distillation(logits, logits, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    one = kl_logit_distillation(torch.zeros(1, 2), torch.tensor([[0.1, 0.0]]), 0.1)
    two = kl_logit_distillation(torch.zeros(2, 2), torch.tensor([[0.1, 0.0], [0.1, 0.0]]), 0.1)
    torch.testing.assert_close(one, two)


def test_soft_cross_entropy_has_temperature_squared_factor():
    out = SoftCrossEntropyDistillationLoss(temperature=2.0)(torch.zeros(3, 2), torch.tensor([[2.0, 0.0]] * 3))
    # student uniform: −Σ p log ½ = ln 2, times T² = 4
    assert out["loss"].item() == pytest.approx(4 * math.log(2), rel=1e-6)


def test_relational_loss_hand_computed_with_different_dimensions():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)  # S_s = identity
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], requires_grad=True)  # off-diagonal 0.6
    # squared differences: two entries of 0.36 among 4 -> mean 0.18; rows sum to 0.36 each
    fixed = RelationalDistillationLoss()(student, teacher)
    assert fixed["loss"].item() == pytest.approx(0.18 * 32, rel=1e-5)
    assert RelationalDistillationLoss(reference_rows=2)(student, teacher)["loss"].item() == pytest.approx(
        0.36
    )
    # released code: row sums (0.36) averaged over rows, times n_processes / 4 (one process here)
    authors = RelationalDistillationLoss(scale="authors")(student, teacher)
    assert authors["loss"].item() == pytest.approx(0.36 / 4, rel=1e-5)
    fixed["loss"].backward()
    assert teacher.grad is None and student.grad is not None


def test_relational_fixed_scale_does_not_depend_on_the_batch_size():
    # The same pairwise structure repeated: a batch of 2 copies of a pair vs a batch of 8 copies.
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, generator=generator), torch.randn(2, 6, generator=generator)
    small = RelationalDistillationLoss()(student, teacher)["loss"]
    large = RelationalDistillationLoss()(student.repeat(4, 1), teacher.repeat(4, 1))["loss"]
    torch.testing.assert_close(small, large)
    # The authors' row sums grow with the batch: 4x the rows -> 4x the loss.
    small = RelationalDistillationLoss(scale="authors")(student, teacher)["loss"]
    large = RelationalDistillationLoss(scale="authors")(student.repeat(4, 1), teacher.repeat(4, 1))["loss"]
    torch.testing.assert_close(large, 4 * small)


def test_relational_loss_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="batches differ"):
        RelationalDistillationLoss()(torch.randn(3, 4), torch.randn(2, 4))
