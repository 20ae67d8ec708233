"""Mixed precision: under bf16/fp16 autocast (the Trainer's ``bf16=True`` / ``fp16=True``) the numerically
sensitive parts — cosine classifiers, logit and feature distillation, standardisation and teacher dropping —
compute in float32. Checked on the CPU: each result is float32 and matches the float32 computation on the same
(half-precision) inputs to float32 round-off, far closer than a half-precision computation could get."""

from __future__ import annotations

import pytest
import torch

from hf_distill.layers import CosineClassifier
from hf_distill.losses import (
    CosineClassificationLoss,
    FeatureStandardizer,
    feature_distillation_loss,
    kl_logit_distillation,
    relational_distillation_loss,
    soft_cross_entropy_distillation,
    teacher_dropping_loss,
)
from hf_distill.losses.teacher_dropping import teacher_dropping_coefficients

HALF_TYPES = [torch.bfloat16, torch.float16]


def autocast(dtype: torch.dtype):
    return torch.autocast(device_type="cpu", dtype=dtype)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_cosine_classifier_logits_are_float32_under_autocast(dtype):
    torch.manual_seed(0)
    classifier = CosineClassifier(64, 1000)
    features = torch.randn(32, 64)
    reference = torch.nn.functional.normalize(features) @ torch.nn.functional.normalize(classifier.weight).T
    with autocast(dtype):
        # A half-precision backbone hands over half-precision features.
        cosine = classifier(features.to(dtype))
        loss = CosineClassificationLoss(scale=16.0)(cosine, torch.arange(32))["loss"]
    assert cosine.dtype == torch.float32 and loss.dtype == torch.float32
    exact = (
        torch.nn.functional.normalize(features.to(dtype).float())
        @ torch.nn.functional.normalize(classifier.weight).T
    )
    torch.testing.assert_close(cosine, exact, rtol=0, atol=1e-6)
    # The only error left is the features' own rounding, not a half-precision product.
    assert (cosine - reference).abs().max() < 2e-2
    cosine.sum().backward()
    assert classifier.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("function", [kl_logit_distillation, soft_cross_entropy_distillation])
def test_logit_distillation_is_float32_under_autocast(dtype, function):
    torch.manual_seed(0)
    student = torch.randn(16, 500).to(dtype)
    teacher = torch.randn(16, 500).to(dtype)
    with autocast(dtype):
        loss = function(student, teacher, 0.1)
    expected = function(student.float(), teacher.float(), 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_feature_distillation_is_float32_under_autocast(dtype):
    torch.manual_seed(0)
    prediction = torch.randn(8, 49, 256).to(dtype)
    target = torch.randn(8, 49, 256)
    with autocast(dtype):
        loss = feature_distillation_loss(prediction, target, 1.0)
    assert loss.dtype == torch.float32
    # The float32 targets are not rounded to the prediction's precision.
    torch.testing.assert_close(loss, feature_distillation_loss(prediction.float(), target, 1.0))


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_relational_distillation_is_float32_under_autocast(dtype):
    torch.manual_seed(0)
    student = torch.randn(64, 128)
    teacher = student + 0.01 * torch.randn(64, 128)
    with autocast(dtype):
        loss = relational_distillation_loss(student, teacher)
    assert loss.dtype == torch.float32
    # The two similarity matrices differ by ~1e-4: a half-precision product would drown that in round-off.
    torch.testing.assert_close(loss, relational_distillation_loss(student, teacher), rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_standardisation_is_float32_for_half_targets(dtype):
    torch.manual_seed(0)
    standardizer = FeatureStandardizer(total_steps=10)
    reference = FeatureStandardizer(total_steps=10)
    first = (5.0 + 3.0 * torch.randn(16, 49, 384)).to(dtype)
    second = (5.0 + 3.0 * torch.randn(16, 49, 384)).to(dtype)
    with autocast(dtype):
        standardizer("t/patch", first, 0)
        output = standardizer("t/patch", second, 1)
    reference("t/patch", first.float(), 0)
    expected = reference("t/patch", second.float(), 1)
    assert output.dtype == torch.float32
    assert standardizer.means["t/patch"].dtype == torch.float32
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)
    # Standardised by the statistics of the first batch: mean about 0, std about 1.
    assert abs(float(output.mean())) < 0.05 and abs(float(output.std()) - 1.0) < 0.05


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_teacher_dropping_is_float32_for_half_losses(dtype):
    torch.manual_seed(0)
    losses = torch.rand(96, 3).to(dtype).requires_grad_()
    generator = torch.Generator().manual_seed(0)
    coefficients = teacher_dropping_coefficients(losses, 0.5, generator)
    assert coefficients.dtype == torch.float32
    # 1 / (number kept) is not a bf16 number for most counts; in float32 the weights sum to 1 to round-off.
    assert abs(float(coefficients.sum()) - 1.0) < 1e-6
    with autocast(dtype):
        output = teacher_dropping_loss(losses, 0.5, generator=torch.Generator().manual_seed(0))
    assert output["loss"].dtype == torch.float32
    expected = (coefficients * losses.detach().float()).sum()
    torch.testing.assert_close(output["loss"].detach(), expected, rtol=1e-6, atol=0)
