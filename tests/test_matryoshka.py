"""Matryoshka widths: prefix maths by hand, UdonLoss at several widths against a second implementation written
out here, the exported embedder's widths, and one tiny recipe run with ``matryoshka_dims``."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from hf_distill.losses import UdonLoss
from hf_distill.losses.matryoshka import MatryoshkaWidths, prefix_cosine_logits, prefix_embeddings
from hf_distill.models.udon import UdonConfig, UdonModel

REPO = Path(__file__).resolve().parents[1]


def test_prefix_maths_by_hand():
    embeddings = torch.tensor([[3.0, 4.0, 0.0, 12.0]])
    torch.testing.assert_close(prefix_embeddings(embeddings, 2), torch.tensor([[0.6, 0.8]]))
    weights = torch.tensor([[1.0, 0.0, 5.0, 5.0], [0.0, 2.0, 1.0, 1.0]])
    # Prefixes (0.6, 0.8) against (1, 0) and (0, 1).
    torch.testing.assert_close(prefix_cosine_logits(embeddings, weights, 2), torch.tensor([[0.6, 0.8]]))
    # Full width: |e| = 13, |w0| = sqrt(51), |w1| = sqrt(6).
    expected = torch.tensor([[(3 + 60) / (13 * math.sqrt(51)), (8 + 12) / (13 * math.sqrt(6))]])
    torch.testing.assert_close(prefix_cosine_logits(embeddings, weights, 4), expected)
    with pytest.raises(ValueError, match="larger than the embedding width 4"):
        prefix_embeddings(embeddings, 8)


def test_widths_combine_is_the_weighted_mean_and_logs_each_width():
    widths = MatryoshkaWidths([64, 32, 16], weights=[2.0, 1.0, 1.0])
    combined = widths.combine(lambda dim: {"loss": torch.tensor(float(dim))})
    assert combined["loss"].item() == pytest.approx((2 * 64 + 32 + 16) / 4)
    assert combined["loss@32"].item() == 32.0
    assert MatryoshkaWidths([8, 4]).combine(lambda d: {"x": torch.tensor(float(d))})["x"].item() == 6.0
    with pytest.raises(ValueError, match="2 values for 3 widths"):
        MatryoshkaWidths([64, 32, 16], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="largest width must be the embedding width 64"):
        MatryoshkaWidths([32, 16], embed_dim=64)


def tiny_udon(**overrides) -> UdonModel:
    torch.manual_seed(0)
    values = dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(img_size=16, patch_size=8, depth=1),
        image_size=16,
        domains=["a", "b"],
        num_classes=[3, 4],
        embed_dim=8,
        teacher_dim=6,
    )
    values.update(overrides)
    return UdonModel(UdonConfig(**values))


def _batch():
    generator = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(5, 3, 16, 16, generator=generator),
        "labels": torch.tensor([0, 3, 1, 2, 3]),
        "domain_ids": torch.ones(5, dtype=torch.long),
    }


def _by_hand(model, inputs, dims, weights, joint=False):
    """UDON's student losses at each width, written out with explicit norms and sums (SPEC §1)."""
    with torch.no_grad():
        features = model.backbone(inputs["pixel_values"])
    unit = features / features.norm(dim=1, keepdim=True)
    student = model.student_head(unit)
    student = student / student.norm(dim=1, keepdim=True)
    labels = inputs["labels"]
    offset = model.class_offsets[1]
    weight = model.student_classifiers[0 if joint else 1].weight
    domain_weight = weight[offset : offset + 4] if joint else weight
    total = {"loss_student": 0.0, "loss_logit": 0.0, "loss_relational": 0.0}
    teacher_logits = teacher = None
    if not joint:
        teacher = model.teacher_heads[1](unit)
        teacher = teacher / teacher.norm(dim=1, keepdim=True)
        t_weight = model.teacher_classifiers[1].weight
        teacher_logits = teacher @ (t_weight / t_weight.norm(dim=1, keepdim=True)).T
    for dim, w in zip(dims, weights):
        prefix = student[:, :dim] / student[:, :dim].norm(dim=1, keepdim=True)

        def cosines(classes, prefix=prefix, dim=dim):
            return prefix @ (classes[:, :dim] / classes[:, :dim].norm(dim=1, keepdim=True)).T

        logits = cosines(weight)
        target = labels + (offset if joint else 0)
        ce = -(16 * logits).log_softmax(dim=1)[torch.arange(5), target].mean()
        total["loss_student"] += w * ce / sum(weights)
        if teacher is not None:
            p_t = (teacher_logits / 0.1).softmax(dim=1)
            log_p_s = (cosines(domain_weight) / 0.1).log_softmax(dim=1)
            kl = (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean()
            s_s, s_t = prefix @ prefix.T, teacher @ teacher.T
            relational = ((s_s - s_t) ** 2).sum() / 25 * 32
            total["loss_logit"] += w * kl / sum(weights)
            total["loss_relational"] += w * relational / sum(weights)
    return total


@pytest.mark.parametrize("weights", [None, [3.0, 1.0]])
def test_udon_loss_at_two_widths_matches_the_hand_computation(weights):
    model = tiny_udon(matryoshka_dims=[8, 4]).eval()
    inputs = _batch()
    losses = UdonLoss(matryoshka_weights=weights)(model, inputs)
    expected = _by_hand(model, inputs, [8, 4], weights or [1.0, 1.0])
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-4), name
    assert set(losses) >= {"loss_student@8", "loss_student@4", "loss_logit@4", "loss_relational@4"}
    # The width-4 term alone, from the same hand computation.
    alone = _by_hand(model, inputs, [4], [1.0])
    assert losses["loss_relational@4"].item() == pytest.approx(alone["loss_relational"].item(), rel=1e-4)
    parts = [losses["loss_teacher"], losses["loss_student"], losses["loss_logit"], losses["loss_relational"]]
    assert losses["loss"].item() == pytest.approx(sum(p.item() for p in parts) / 4, rel=1e-5)


def test_joint_classifier_baseline_and_single_width_equal_the_plain_loss():
    model = tiny_udon(matryoshka_dims=[8, 2], use_teacher=False, joint_classifier=True).eval()
    inputs = _batch()
    losses = UdonLoss(use_distillation=False)(model, inputs)
    expected = _by_hand(model, inputs, [8, 2], [1.0, 1.0], joint=True)
    assert losses["loss_student"].item() == pytest.approx(expected["loss_student"].item(), rel=1e-4)
    # matryoshka_dims = [embed_dim] is the plain UDON loss, term for term.
    plain, single = tiny_udon().eval(), tiny_udon(matryoshka_dims=[8]).eval()
    assert plain.config.matryoshka_dims == [8]
    a, b = UdonLoss()(plain, inputs), UdonLoss()(single, inputs)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_exported_embedder_records_its_widths_and_bad_widths_are_named(tmp_path):
    model = tiny_udon(matryoshka_dims=[8, 4, 2])
    embedder = model.export_embedder()
    assert embedder.config.matryoshka_dims == [8, 4, 2]
    embedder.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["matryoshka_dims"] == [8, 4, 2]
    with pytest.raises(ValueError, match="largest width must be the embedding width 8"):
        tiny_udon(matryoshka_dims=[16, 8])
    with pytest.raises(ValueError, match="1 values for 3 widths"):
        UdonLoss(matryoshka_weights=[1.0]).check_model(model)


def test_udon_recipe_trains_with_matryoshka_widths(tiny_benchmark_dir, tmp_path):
    sys.path.insert(0, str(REPO / "recipes"))
    import udon as udon_recipe

    config = dict(
        benchmark=str(tiny_benchmark_dir),
        domains=["digits", "photos"],
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"img_size": 32, "patch_size": 16, "depth": 1},
        image_size=32,
        embed_dim=16,
        matryoshka_dims=[16, 8, 4],
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=1e-3,
        backbone_frozen_epochs=0,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        starting_point=False,
        eval_batch_size=64,
        seed=0,
    )
    path = tmp_path / "udon_matryoshka.yaml"
    path.write_text(yaml.safe_dump(config))
    udon_recipe.main(["--config", str(path), "--output_dir", str(tmp_path / "run")])
    export = tmp_path / "run" / "embedder"
    assert json.loads((export / "config.json").read_text())["matryoshka_dims"] == [16, 8, 4]
    logged = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert any("loss_student@4" in entry for entry in logged)
    card = ModelCard.load(export / "README.md").text
    for width in ("| 16 (full) |", "| 8 |", "| 4 |"):
        assert width in card
    assert (export / "retrieval_examples.png").is_file()
