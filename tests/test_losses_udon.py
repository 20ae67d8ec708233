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
    # Non-zero student logits: a temperature applied to one side only, or the KL's arguments swapped, changes
    # the value (with an all-zero student neither would show).
    student = torch.tensor([[0.2, -0.1, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.1, 0.0, -0.1]], requires_grad=True)
    out = LogitDistillationLoss(temperature=0.1)(student, teacher)

    def softmax(values):
        exps = [math.exp(v) for v in values]
        return [e / sum(exps) for e in exps]

    p = softmax([1.0, 0.0, -1.0])  # teacher / τ
    q = softmax([2.0, -1.0, 0.0])  # student / τ
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))  # KL(p ‖ q) ≈ 0.2517 (KL(q ‖ p) ≈ 0.1537)
    reverse = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert abs(expected - reverse) > 0.05
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


# ------------------------------------------------------------------ UdonLoss with frozen external teachers


def _feature_student(use_teacher=False, domains=("a", "b"), num_classes=(3, 4)):
    from hf_distill.models.udon import UdonConfig, UdonModel

    return UdonModel(
        UdonConfig(
            backbone="features",
            backbone_source="features",
            backbone_kwargs={"dim": 8, "layers": 1, "hidden": 8},
            domains=list(domains),
            num_classes=list(num_classes),
            embed_dim=4,
            use_teacher=use_teacher,
            image_size=1,
        )
    )


class _FixedTeacher(torch.nn.Module):
    """A teacher giving the same embeddings and logits whatever the input (values chosen by the test)."""

    def __init__(self, embeddings, logits):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.embeddings, self.logits = embeddings, logits

    def forward(self, pixel_values):
        return self.embeddings * self.weight, self.logits * self.weight


def test_external_teachers_give_the_distillation_targets():
    from hf_distill.losses.udon import UdonLoss

    torch.manual_seed(0)
    student = _feature_student()
    teacher_embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    teacher_logits = torch.tensor([[0.9, -0.2, 0.1, 0.0], [0.0, 0.5, -0.5, 0.3], [0.2, 0.2, 0.7, -0.9]])
    teachers = {
        "a": _FixedTeacher(torch.zeros(3, 2), torch.zeros(3, 3)),
        "b": _FixedTeacher(teacher_embeddings, teacher_logits),
    }
    loss = UdonLoss(external_teachers=teachers, temperature=0.5)
    loss.check_model(student)
    inputs = {
        "pixel_values": torch.randn(3, 8),
        "labels": torch.tensor([0, 3, 1]),
        "domain_ids": torch.ones(3, dtype=torch.long),
    }
    out = loss(student, inputs)
    assert set(out) == {"loss", "loss_student", "accuracy_student", "loss_logit", "loss_relational"}
    # By hand from the student's own logits and embeddings (the student has no teacher heads).
    with torch.no_grad():
        own = student(pixel_values=inputs["pixel_values"], domain_ids=inputs["domain_ids"], output_heads=True)
    p_teacher = torch.softmax(teacher_logits / 0.5, dim=1)
    log_p_student = torch.log_softmax(own.student_logits / 0.5, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(dim=1).mean()
    s_student = own.embeddings @ own.embeddings.T
    s_teacher = teacher_embeddings @ teacher_embeddings.T  # rows already unit length
    relational = (s_student - s_teacher).pow(2).mean() * 32
    torch.testing.assert_close(out["loss_logit"], kl)
    torch.testing.assert_close(out["loss_relational"], relational)
    torch.testing.assert_close(out["loss"], (out["loss_student"] + kl + relational) / 3)
    # Frozen: the teacher gets no gradient, the student's head does.
    out["loss"].backward()
    assert teachers["b"].weight.grad is None
    assert student.student_head.weight.grad.abs().sum() > 0


def test_distilling_a_frozen_specialist_moves_the_student_towards_it():
    from hf_distill.losses.udon import UdonLoss, UdonSpecialistTeacher

    torch.manual_seed(0)
    specialist = _feature_student(domains=("b",), num_classes=(4,))
    with torch.no_grad():
        specialist.student_classifiers[0].weight.mul_(5.0)
    student = _feature_student()
    teacher = UdonSpecialistTeacher(specialist)
    before = [p.clone() for p in specialist.parameters()]
    loss = UdonLoss(external_teachers={"a": teacher, "b": teacher}, student_weight=0.0, relational_weight=0.0)
    inputs = {
        "pixel_values": torch.randn(16, 8),
        "labels": torch.zeros(16, dtype=torch.long),
        "domain_ids": torch.ones(16, dtype=torch.long),
    }
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    first = float(loss(student, inputs)["loss_logit"].detach())
    for _ in range(60):
        optimizer.zero_grad()
        loss(student, inputs)["loss"].backward()
        optimizer.step()
    last = float(loss(student, inputs)["loss_logit"].detach())
    assert last < 0.5 * first
    assert all(torch.equal(a, b) for a, b in zip(before, specialist.parameters()))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_external_teachers_are_checked():
    from hf_distill.losses.udon import UdonLoss, UdonSpecialistTeacher

    teacher = _FixedTeacher(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="use_teacher=False"):
        UdonLoss(external_teachers={"a": teacher, "b": teacher}).check_model(
            _feature_student(use_teacher=True)
        )
    with pytest.raises(ValueError, match=r"no teacher for domains \['b'\]"):
        UdonLoss(external_teachers={"a": teacher}).check_model(_feature_student())
    with pytest.raises(ValueError, match="use_distillation=True"):
        UdonLoss(external_teachers={"a": teacher}, use_distillation=False)
    with pytest.raises(ValueError, match="single-domain"):
        UdonSpecialistTeacher(_feature_student())
    # Domain b's student has 4 classes; a teacher with 3 is refused with both counts named.
    inputs = {"pixel_values": torch.randn(2, 8), "labels": torch.zeros(2, dtype=torch.long)}
    inputs["domain_ids"] = torch.ones(2, dtype=torch.long)
    loss = UdonLoss(external_teachers={"a": teacher, "b": teacher})
    with pytest.raises(ValueError, match=r"domain 'b' gave logits of shape \(2, 3\).*\(2, 4\)"):
        loss(_feature_student(), inputs)
