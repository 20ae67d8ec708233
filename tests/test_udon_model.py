"""UdonModel + UdonLoss: the four losses against hand computations, gradient paths, variants, export, reload."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

import hf_distill  # noqa: F401  (registers the Auto classes)
from hf_distill.losses import UdonLoss
from hf_distill.models.embedder import UniversalEmbedderModel
from hf_distill.models.udon import UdonConfig, UdonModel, variant_settings

TINY_VIT = dict(
    backbone="vit_tiny_patch16_224", backbone_kwargs=dict(img_size=32, patch_size=8, depth=1), image_size=32
)


def make_model(**overrides):
    torch.manual_seed(0)
    values = dict(TINY_VIT, domains=["a", "b"], num_classes=[3, 4])
    values.update(overrides)
    return UdonModel(UdonConfig(**values))


def batch(domain=1, size=6):
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(size, 3, 32, 32, generator=gen)
    labels = torch.arange(size) % (3 if domain == 0 else 4)
    return pixels, labels, torch.full((size,), domain)


def inputs(pixels, labels, domain_ids):
    return {"pixel_values": pixels, "labels": labels, "domain_ids": domain_ids}


def test_losses_match_hand_computation():
    model = make_model()
    pixels, labels, domain_ids = batch()
    losses = UdonLoss()(model, inputs(pixels, labels, domain_ids))

    f = F.normalize(model.backbone(pixels), dim=-1)
    t = F.normalize(f @ model.teacher_heads[1].weight.T + model.teacher_heads[1].bias, dim=-1)
    s = F.normalize(f @ model.student_head.weight.T + model.student_head.bias, dim=-1)
    c_t = t @ F.normalize(model.teacher_classifiers[1].weight, dim=-1).T
    c_s = s @ F.normalize(model.student_classifiers[1].weight, dim=-1).T
    l_t = -torch.log_softmax(16 * c_t, dim=1)[torch.arange(6), labels].mean()
    l_s = -torch.log_softmax(16 * c_s, dim=1)[torch.arange(6), labels].mean()
    p_t = torch.softmax(c_t / 0.1, dim=1)
    l_log = (p_t * (torch.log(p_t) - torch.log_softmax(c_s / 0.1, dim=1))).sum(1).mean()
    # fixed scale: mean over the 6x6 entries, expressed as rows of 32 images
    l_rel = ((s @ s.T - t @ t.T) ** 2).mean() * 32

    torch.testing.assert_close(losses["loss_teacher"], l_t)
    torch.testing.assert_close(losses["loss_student"], l_s)
    torch.testing.assert_close(losses["loss_logit"], l_log)
    torch.testing.assert_close(losses["loss_relational"], l_rel)
    torch.testing.assert_close(losses["loss"], (l_t + l_s + l_log + l_rel) / 4)
    out = model(pixel_values=pixels, domain_ids=domain_ids)
    torch.testing.assert_close(out.embeddings, s)
    assert out.teacher_embeddings.shape == (6, 256) and out.embeddings.shape == (6, 64)


def test_loss_weights_give_a_weighted_mean():
    model = make_model()
    pixels, labels, domain_ids = batch(domain=0)
    parts = UdonLoss(teacher_weight=2.0, logit_weight=0.0)(model, inputs(pixels, labels, domain_ids))
    expected = (2 * parts["loss_teacher"] + parts["loss_student"] + parts["loss_relational"]) / 4
    torch.testing.assert_close(parts["loss"], expected)


@pytest.mark.parametrize("reaches_backbone", [False, True])
def test_distillation_gradient_path(reaches_backbone):
    # only the distillation losses: does their gradient reach the backbone?
    model = make_model()
    loss = UdonLoss(teacher_weight=0.0, student_weight=0.0, distillation_reaches_backbone=reaches_backbone)
    pixels, labels, domain_ids = batch()
    loss(model, inputs(pixels, labels, domain_ids))["loss"].backward()
    backbone_grad = sum(p.grad.abs().sum() for p in model.backbone.parameters() if p.grad is not None)
    assert (backbone_grad > 0) == reaches_backbone
    assert model.student_head.weight.grad.abs().sum() > 0
    # the teacher side is detached in both readings
    assert model.teacher_heads[1].weight.grad is None or model.teacher_heads[1].weight.grad.abs().sum() == 0


def test_separate_classifier_baseline_has_no_teacher():
    variant = variant_settings("uscrr")
    model = make_model(**variant.model)
    assert variant.strategy == "round_robin" and model.teacher_heads is None
    pixels, labels, domain_ids = batch()
    losses = UdonLoss(**variant.loss)(model, inputs(pixels, labels, domain_ids))
    assert set(losses) == {"loss", "loss_student", "accuracy_student"}
    torch.testing.assert_close(losses["loss"], losses["loss_student"])


def test_joint_classifier_offsets_labels_by_domain():
    variant = variant_settings("ujcds")
    model = make_model(**variant.model)
    assert variant.strategy == "size" and model.student_classifiers[0].num_classes == 7
    pixels, labels, domain_ids = batch(domain=1)
    losses = UdonLoss(**variant.loss)(model, inputs(pixels, labels, domain_ids))
    joint = model.student_classifiers[0](model(pixel_values=pixels).embeddings)
    # domain b's classes are columns 3..6 of the joint classifier
    expected = F.cross_entropy(16 * joint, labels + 3)
    torch.testing.assert_close(losses["loss_student"], expected)


def test_bad_batches_are_refused():
    model = make_model()
    pixels, labels, _ = batch()
    with pytest.raises(ValueError, match="must hold one domain"):
        model(pixel_values=pixels, domain_ids=torch.tensor([0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"labels of domain 'a' must lie in \[0, 3\)"):
        UdonLoss()(model, inputs(pixels, labels, torch.zeros(6, dtype=torch.long)))
    baseline = make_model(use_teacher=False)
    with pytest.raises(ValueError, match="needs a UdonModel with teacher heads"):
        UdonLoss(use_distillation=True).check_model(baseline)
    with pytest.raises(ValueError, match="unknown UDON variant"):
        variant_settings("udon_plus")


def test_export_embedder_and_reload(tmp_path):
    model = make_model().eval()
    pixels, _, _ = batch()
    embedder = model.export_embedder()
    assert isinstance(embedder, UniversalEmbedderModel)
    assert not any(key.startswith(("teacher", "student_classifiers")) for key in embedder.state_dict())
    expected = model(pixel_values=pixels).embeddings
    torch.testing.assert_close(embedder(pixel_values=pixels).embeddings, expected)
    embedder.save_pretrained(tmp_path / "embedder")
    reloaded = AutoModel.from_pretrained(tmp_path / "embedder").eval()
    torch.testing.assert_close(reloaded(pixel_values=pixels).embeddings, expected)

    teacher = model.export_teacher_embedder("b")
    out = model(pixel_values=pixels, domain_ids=torch.ones(6, dtype=torch.long))
    torch.testing.assert_close(teacher(pixel_values=pixels).embeddings, out.teacher_embeddings)


def test_udon_model_save_and_reload(tmp_path):
    model = make_model().eval()
    model.save_pretrained(tmp_path / "udon")
    reloaded = AutoModel.from_pretrained(tmp_path / "udon").eval()
    assert isinstance(reloaded, UdonModel) and reloaded.config.domains == ["a", "b"]
    pixels, _, _ = batch()
    torch.testing.assert_close(
        reloaded(pixel_values=pixels).embeddings, model(pixel_values=pixels).embeddings
    )
