"""MLFD models: classifier feature maps, joint-teacher adaptor/fusion shapes for a CNN and a ViT teacher mixed,
per-dataset heads, save/load round-trips and the export to a universal embedder."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel

from hf_distill.layers import align_spatial
from hf_distill.losses import MlfdLoss
from hf_distill.models.embedder import UniversalEmbedderModel
from hf_distill.models.mlfd import (
    JointTeacherConfig,
    JointTeacherModel,
    MlfdClassifierConfig,
    MlfdClassifierModel,
)

VIT = dict(
    backbone="vit_tiny_patch16_224", backbone_kwargs=dict(img_size=32, patch_size=8, depth=2), image_size=32
)
CNN = dict(backbone="resnet10t", image_size=32)


@pytest.fixture(scope="module")
def vit_teacher() -> MlfdClassifierModel:
    torch.manual_seed(0)
    return MlfdClassifierModel(MlfdClassifierConfig(num_classes=5, dataset="digits", **VIT)).eval()


@pytest.fixture(scope="module")
def cnn_teacher() -> MlfdClassifierModel:
    torch.manual_seed(0)
    # Level -2 of resnet10t (layer3, stride 16) gives a 2x2 map at 32x32 input.
    return MlfdClassifierModel(
        MlfdClassifierConfig(num_classes=3, dataset="fashion", feature_levels=[-2], **CNN)
    ).eval()


def _joint_config(vit_teacher, cnn_teacher, **overrides) -> JointTeacherConfig:
    values = dict(
        teacher_names=["vit", "cnn"],
        teacher_configs=[vit_teacher.config.to_dict(), cnn_teacher.config.to_dict()],
        teacher_channels=[vit_teacher.level_channels[0], cnn_teacher.level_channels[0]],
        teacher_grids=[[4, 4], [2, 2]],
        datasets=["digits", "fashion"],
        num_classes=[5, 3],
        adaptor_channels=8,
        out_channels=12,
        fusion_levels=2,
    )
    values.update(overrides)
    return JointTeacherConfig(**values)


def test_align_spatial_pools_down_and_interpolates_up():
    grid = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = align_spatial(grid, (2, 2))
    torch.testing.assert_close(pooled[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    torch.testing.assert_close(
        align_spatial(torch.full((1, 2, 1, 1), 3.0), (2, 2)), torch.full((1, 2, 2, 2), 3.0)
    )
    assert align_spatial(grid, (4, 4)) is grid


def test_classifier_feature_maps_of_a_cnn_and_a_vit(vit_teacher, cnn_teacher):
    pixels = torch.randn(2, 3, 32, 32)
    vit_out = vit_teacher(pixels, output_feature_maps=True)
    # ViT tokens come back as a (C, H/patch, W/patch) map.
    assert vit_out.feature_maps[0].shape == (2, 192, 4, 4)
    cnn_out = cnn_teacher(pixels, output_feature_maps=True)
    assert cnn_out.feature_maps[0].shape == (2, 256, 2, 2)
    # The single-pass path used for distillation gives the same logits as the plain forward.
    torch.testing.assert_close(vit_out.logits, vit_teacher(pixels).logits)
    torch.testing.assert_close(cnn_out.logits, cnn_teacher(pixels).logits)
    torch.testing.assert_close(cnn_teacher.feature_maps(pixels)[0], cnn_out.feature_maps[0])


def test_student_adaptor_only_when_channels_differ():
    same = MlfdClassifierModel(MlfdClassifierConfig(num_classes=3, distill_channels=[512], **CNN))
    assert isinstance(same.adaptors[0], nn.Identity)
    other = MlfdClassifierModel(MlfdClassifierConfig(num_classes=3, distill_channels=[12], **CNN)).eval()
    assert isinstance(other.adaptors[0], nn.Conv2d) and other.adaptors[0].kernel_size == (1, 1)
    output = other(torch.randn(2, 3, 32, 32), output_feature_maps=True)
    assert output.feature_maps[0].shape == (2, 512, 1, 1)
    assert output.distill_maps[0].shape == (2, 12, 1, 1)
    with pytest.raises(ValueError, match="one entry per feature level"):
        MlfdClassifierConfig(num_classes=3, distill_channels=[1, 2], **CNN)
    with pytest.raises(ValueError, match="out of range"):
        MlfdClassifierModel(MlfdClassifierConfig(num_classes=3, feature_levels=[7], **CNN))


def test_joint_teacher_fuses_heterogeneous_teachers(vit_teacher, cnn_teacher):
    config = _joint_config(vit_teacher, cnn_teacher)
    assert config.fusion_grid == [2, 2]  # the smallest teacher grid
    torch.manual_seed(0)
    joint = JointTeacherModel(config).eval()
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        maps = {"vit": vit_teacher.feature_maps(pixels)[0], "cnn": cnn_teacher.feature_maps(pixels)[0]}
        domain_ids = torch.tensor([0, 1, 1, 0])
        output = joint(maps, domain_ids=domain_ids)
    # Level 0 at the common 2x2 grid, then two stride-2 levels (2x2 -> 1x1 -> 1x1).
    assert [tuple(m.shape) for m in output.fused_maps] == [(4, 12, 2, 2), (4, 12, 1, 1), (4, 12, 1, 1)]
    assert joint.adaptors[0][1].in_channels == 192 and joint.adaptors[1][1].in_channels == 256
    assert output.pooled.shape == (4, 12)
    # Rows of the 3-class dataset have their two extra columns masked out.
    assert output.logits.shape == (4, 5)
    assert (output.logits[1:3, 3:] == torch.finfo(torch.float32).min).all()
    torch.testing.assert_close(output.logits[0], joint.heads[0](output.pooled[0]))
    torch.testing.assert_close(output.logits[1, :3], joint.heads[1](output.pooled[1]))
    # The joint teacher's loss (MlfdLoss) on the padded logits equals each row's cross-entropy over its own
    # dataset's classes.
    labels = torch.tensor([4, 2, 0, 1])
    batch = {"maps_vit": maps["vit"], "maps_cnn": maps["cnn"], "domain_ids": domain_ids, "labels": labels}
    with torch.no_grad():
        loss = MlfdLoss()(joint, batch)["loss"]
    per_row = [
        F.cross_entropy(output.logits[i : i + 1, : [5, 3][int(d)]], labels[i : i + 1])
        for i, d in enumerate(domain_ids)
    ]
    torch.testing.assert_close(loss, torch.stack(per_row).mean())
    # The fused maps are post-activation (ReLU) outputs.
    assert all((m >= 0).all() for m in output.fused_maps)


def test_joint_teacher_fusion_levels_and_spatial_size(vit_teacher, cnn_teacher):
    maps = [torch.randn(2, 192, 4, 4), torch.randn(2, 256, 2, 2)]
    ids = torch.tensor([0, 1])
    flat = JointTeacherModel(_joint_config(vit_teacher, cnn_teacher, fusion_levels=0, spatial_size=[4, 4]))
    assert [tuple(m.shape) for m in flat(maps, domain_ids=ids).fused_maps] == [(2, 12, 4, 4)]
    one = JointTeacherModel(_joint_config(vit_teacher, cnn_teacher, fusion_levels=1, spatial_size=[4, 4]))
    assert [tuple(m.shape) for m in one(maps, domain_ids=ids).fused_maps] == [(2, 12, 4, 4), (2, 12, 2, 2)]
    with pytest.raises(ValueError, match="expected a \\(B, 192, H, W\\) map"):
        flat([torch.randn(2, 10, 4, 4), maps[1]], domain_ids=ids)
    with pytest.raises(ValueError, match="missing for \\['cnn'\\]"):
        flat({"vit": maps[0]}, domain_ids=ids)
    with pytest.raises(ValueError, match="fusion_levels"):
        _joint_config(vit_teacher, cnn_teacher, fusion_levels=3)


def test_joint_teacher_save_load_round_trip(tmp_path, vit_teacher, cnn_teacher):
    joint = JointTeacherModel(_joint_config(vit_teacher, cnn_teacher, dropout=0.5))
    maps = [torch.randn(3, 192, 4, 4), torch.randn(3, 256, 2, 2)]
    ids = torch.tensor([0, 1, 0])
    # A training step moves the BatchNorm running statistics away from their initial values.
    joint.train()(maps, domain_ids=ids)
    joint.eval()
    joint.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, JointTeacherModel)
    assert reloaded.config.dropout == 0.5 and reloaded.config.teacher_names == ["vit", "cnn"]
    assert reloaded.config.teacher_config(0).backbone_kwargs == VIT["backbone_kwargs"]
    assert reloaded.config.teacher_config(1).feature_levels == [-2]
    assert AutoConfig.from_pretrained(tmp_path).num_classes == [5, 3]
    with torch.no_grad():
        before, after = joint(maps, domain_ids=ids), reloaded(maps, domain_ids=ids)
    torch.testing.assert_close(before.logits, after.logits)
    for first, second in zip(before.fused_maps, after.fused_maps):
        torch.testing.assert_close(first, second)


def test_classifier_save_load_and_embedder_export(tmp_path, cnn_teacher):
    pixels = torch.randn(2, 3, 32, 32)
    cnn_teacher.save_pretrained(tmp_path / "classifier")
    reloaded = AutoModel.from_pretrained(tmp_path / "classifier").eval()
    assert isinstance(reloaded, MlfdClassifierModel) and reloaded.config.dataset == "fashion"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, cnn_teacher(pixels).logits)
        embedder = cnn_teacher.export_embedder()
        assert isinstance(embedder, UniversalEmbedderModel)
        embeddings = embedder(pixel_values=pixels).embeddings
        torch.testing.assert_close(embeddings, F.normalize(cnn_teacher(pixels).pooled_features, dim=-1))
    assert not any(name.startswith(("classifier", "adaptors")) for name in embedder.state_dict())
