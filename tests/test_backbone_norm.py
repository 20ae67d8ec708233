"""BatchNorm statistics of a trained backbone under single-domain batches, and the step-0 starting point.

Regression tests for the bug where fine-tuning a pretrained CNN with UDON ended below the untrained backbone:
the backbone's BatchNorm layers stayed in train mode (even while "frozen") and drifted to the last domains'
statistics. The end-to-end check that a pretrained Lite0 fine-tuned with UDON ends well above its step-0
evaluation runs through the recipe (``tests/test_udon_recipe.py``, ``pretrained_run``).
"""

import pytest
import torch
from datasets import Dataset

from hf_distill.evaluation import RetrievalEvaluator
from hf_distill.evaluation.starting_point import (
    evaluate_starting_point,
    fit_pca_head,
    full_feature_embedder,
    pca_embedder,
)
from hf_distill.layers import resolve_backbone_norm, running_stat_modules
from hf_distill.losses import UdonLoss
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.udon import UdonTrainer

CNN = "tf_efficientnet_lite0"


def cnn_udon(pretrained_file=None, **overrides):
    torch.manual_seed(0)
    values = dict(
        backbone=CNN,
        pretrained_file=pretrained_file,
        image_size=32,
        domains=["a", "b"],
        num_classes=[3, 4],
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    values.update(overrides)
    return UdonModel(UdonConfig(**values))


def statistics(model):
    return {
        f"{index}.{name}": buffer.clone()
        for index, layer in enumerate(running_stat_modules(model.backbone))
        for name, buffer in layer.named_buffers()
    }


def single_domain_step(model, domain):
    """One forward/backward of a batch of one domain whose pixel statistics differ from ImageNet's."""
    generator = torch.Generator().manual_seed(domain)
    pixels = torch.randn(8, 3, 32, 32, generator=generator) * (1 + 2 * domain) + 3 * domain
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    inputs = {"pixel_values": pixels, "labels": labels, "domain_ids": torch.full((8,), domain)}
    UdonLoss()(model, inputs)["loss"].backward()


def test_auto_resolves_to_frozen_for_pretrained_and_train_from_scratch():
    assert resolve_backbone_norm("auto", pretrained=True) == "frozen"
    assert resolve_backbone_norm("auto", pretrained=False) == "train"
    assert resolve_backbone_norm("train", pretrained=True) == "train"
    with pytest.raises(ValueError, match="backbone_norm must be one of"):
        resolve_backbone_norm("fixed", pretrained=True)


@pytest.mark.parametrize("setting", ["frozen-norm", "frozen-backbone"])
def test_single_domain_batches_leave_running_statistics_unchanged(setting):
    model = cnn_udon()
    assert len(list(running_stat_modules(model.backbone))) > 10
    if setting == "frozen-norm":
        model.backbone_norm = "frozen"
    else:
        # A backbone whose weights are frozen runs wholly in eval mode, whatever backbone_norm says.
        model.backbone_norm = "train"
        model.backbone_frozen = True
    model.train()
    before = statistics(model)
    for domain in (0, 1, 0):
        single_domain_step(model, domain)
    after = statistics(model)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    if setting == "frozen-norm":
        # The BatchNorm affine parameters still train.
        bn = next(iter(running_stat_modules(model.backbone)))
        assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0


def test_train_mode_statistics_do_drift_with_single_domain_batches():
    # The contrast that makes the test above meaningful: with backbone_norm="train" the statistics move.
    model = cnn_udon()
    model.backbone_norm = "train"
    model.train()
    before = statistics(model)
    single_domain_step(model, 1)
    after = statistics(model)
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert len(changed) > len(before) // 2


def test_frozen_switch_during_training_applies_immediately():
    model = cnn_udon()
    model.backbone_norm = "train"
    model.train()
    model.backbone_frozen = True
    assert not any(module.training for module in model.backbone.modules())
    assert model.student_head.training
    model.backbone_frozen = False
    assert all(layer.training for layer in running_stat_modules(model.backbone))
    model.eval()
    assert not model.backbone.training


def test_trainer_sets_backbone_norm_and_the_frozen_phase_keeps_statistics(tmp_path, offline_lite0):
    model = cnn_udon(pretrained_file=str(offline_lite0.path))
    assert model.backbone_pretrained and model.resolved_backbone_norm() == "frozen"
    generator = torch.Generator().manual_seed(0)
    rows = Dataset.from_dict(
        {
            "pixel_values": (torch.randn(32, 3, 32, 32, generator=generator) * 3).tolist(),
            "labels": [i % 3 for i in range(16)] + [i % 4 for i in range(16)],
            "domain_ids": [0] * 16 + [1] * 16,
        }
    ).with_format("torch")
    args = UdonTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=6,
        backbone_frozen_epochs=0.5,
        backbone_norm="train",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        plot_sampling_curves=False,
    )
    trainer = UdonTrainer(model=model, args=args, train_dataset=rows)
    assert model.backbone_norm == "train"
    before = statistics(model)
    # Two frozen steps (half of the 4-batch epoch): statistics untouched although backbone_norm="train".
    trainer.args.max_steps = 2
    trainer.train()
    assert all(torch.equal(before[key], value) for key, value in statistics(model).items())


def test_pca_head_matches_a_hand_computed_projection():
    # Points on a line along (1, 1, 0) plus small noise along (0, 0, 1): the first component is ±(1, 1, 0)/√2.
    t = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    noise = torch.tensor([0.1, -0.2, 0.2, -0.2, 0.1])  # zero mean, orthogonal to t
    features = torch.stack([t + 1, t + 1, noise + 5], dim=1)
    weight, bias = fit_pca_head(features, 2)
    assert torch.allclose(weight[0], torch.tensor([1.0, 1.0, 0.0]) / 2**0.5, atol=1e-6)
    assert torch.allclose(weight[1].abs(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    projected = features @ weight.T + bias
    assert torch.allclose(projected.mean(dim=0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(projected[:, 0], t * 2**0.5, atol=1e-5)


def test_starting_point_rows_use_the_untrained_backbone(tiny_benchmark, offline_lite0):
    domains = ["clothing", "digits"]
    model = cnn_udon(pretrained_file=str(offline_lite0.path), domains=domains, num_classes=[6, 6])
    embedder = model.export_embedder()
    full = full_feature_embedder(embedder)
    assert full.config.embed_dim is None and full.feature_dim == 1280
    results = evaluate_starting_point(
        embedder, tiny_benchmark, split="test", pca_dim=16, max_fit_images=200, domains=domains
    )
    direct = RetrievalEvaluator(tiny_benchmark, split="test", domains=domains)(full)
    assert results["starting_point/full/merged/mean/R@1"] == pytest.approx(direct["merged/mean/R@1"])
    assert 0.0 < results["starting_point/pca16/merged/mean/R@1"] <= 1.0


def test_starting_point_pca_shrinks_to_the_fitting_images_with_a_warning(tiny_benchmark, caplog):
    torch.manual_seed(0)
    embedder = cnn_udon(domains=["photos"], num_classes=[120]).export_embedder()
    fit = tiny_benchmark.domains["photos"]["train"].select(range(10)).select_columns(["image"])
    with caplog.at_level("WARNING"):
        model = pca_embedder(embedder, fit, dim=64)
    assert model.config.embed_dim == 10
    assert "needs at least 64 fitting images" in caplog.text
