"""Teacher loading from every source: offline weights, local files, transformers dirs, hf_distill models, Hub ids."""

import os

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hf_distill.teachers import (
    TeacherLoadError,
    TeacherSpec,
    available_offline_weights,
    load_teacher,
    load_teachers,
)

VIT_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def _assert_frozen(teacher):
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training


@pytest.mark.skipif("efficientnet_lite0" not in available_offline_weights(), reason="package not installed")
def test_offline_cnn_teacher_gives_pooled_feature_and_map_positions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DISTILL_CACHE", str(tmp_path))
    teacher = load_teacher({"model": "efficientnet_lite0", "image_size": 64})
    _assert_frozen(teacher)
    assert teacher.name == "efficientnet_lite0" and teacher.preprocessing.mean == (0.5, 0.5, 0.5)
    images = torch.rand(2, 3, 32, 32)
    pixel_values = teacher.prepare(images)
    assert pixel_values.shape == (2, 3, 64, 64)
    # prepare = resize, then (x - 0.5) / 0.5: a constant image stays constant.
    torch.testing.assert_close(
        teacher.prepare(torch.full((1, 3, 32, 32), 0.75)), torch.full((1, 3, 64, 64), 0.5)
    )
    output = teacher(pixel_values)
    assert output.grid == (2, 2) and output.tokens.shape == (2, 4, 1280)
    # The pooled feature of a CNN is the mean of its feature-map positions.
    torch.testing.assert_close(output.global_features, output.tokens.mean(dim=1), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=7, **VIT_KWARGS).eval()
    path = tmp_path_factory.mktemp("weights") / "vit.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model


def test_local_vit_file_gives_cls_and_patch_tokens(vit_file):
    path, reference = vit_file
    teacher = load_teacher(
        {
            "model": str(path),
            "name": "vit",
            "architecture": "vit_tiny_patch16_224",
            "model_kwargs": VIT_KWARGS,
        }
    )
    _assert_frozen(teacher)
    assert teacher.preprocessing.image_size == 32
    pixel_values = torch.randn(2, 3, 32, 32)
    output = teacher(pixel_values)
    features = reference.forward_features(pixel_values)
    torch.testing.assert_close(output.global_features, features[:, 0])
    torch.testing.assert_close(output.tokens, features[:, 1:])
    assert output.grid == (4, 4)


def test_pth_checkpoint_with_wrapper_key_and_architecture_errors(vit_file, tmp_path):
    path, reference = vit_file
    pth = tmp_path / "vit.pth"
    torch.save({"state_dict": reference.state_dict()}, pth)
    teacher = load_teacher(
        {"model": str(pth), "name": "vit", "architecture": "vit_tiny_patch16_224", "model_kwargs": VIT_KWARGS}
    )
    assert teacher.global_dim == 32
    with pytest.raises(TeacherLoadError, match="needs architecture="):
        load_teacher(str(pth))
    with pytest.raises(TeacherLoadError, match=r"vit\.pth does not fit timm 'resnet10t'"):
        load_teacher({"model": str(pth), "architecture": "resnet10t"})


def test_transformers_directory_teacher(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = ViTModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(tmp_path)
    teacher = load_teacher({"model": str(tmp_path), "name": "hfvit"})
    _assert_frozen(teacher)
    assert teacher.kind == "transformers"
    assert teacher.preprocessing.image_size == 32 and teacher.preprocessing.std == (0.25, 0.25, 0.25)
    pixel_values = torch.randn(2, 3, 32, 32)
    output = teacher(pixel_values)
    hidden = model(pixel_values=pixel_values).last_hidden_state
    torch.testing.assert_close(output.global_features, hidden[:, 0])
    torch.testing.assert_close(output.tokens, hidden[:, 1:])
    assert output.grid == (4, 4)


def test_transformers_cnn_teacher_uses_feature_map_positions(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(tmp_path)
    teacher = load_teacher({"model": str(tmp_path), "name": "resnet", "image_size": 64})
    output = teacher(torch.randn(2, 3, 64, 64))
    assert output.grid == (8, 8) and output.tokens.shape == (2, 64, 16)  # stride 8: stem 4, stage 2
    torch.testing.assert_close(output.global_features, output.tokens.mean(dim=1), atol=1e-5, rtol=1e-5)


def test_hf_distill_trained_models_serve_as_teachers(tmp_path):
    from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel

    config = UnicStudentConfig(
        backbone_kwargs={k: v for k, v in VIT_KWARGS.items() if k != "img_size"},
        image_size=32,
        teachers={"t": {"global_dim": 4, "token_dim": 4, "grid": [4, 4]}},
    )
    student = UnicStudentModel(config).eval()
    student.save_pretrained(tmp_path / "student")
    student.export_embedder().save_pretrained(tmp_path / "embedder")
    pixel_values = torch.randn(2, 3, 32, 32)
    for directory in ("student", "embedder"):
        teacher = load_teacher(str(tmp_path / directory))
        _assert_frozen(teacher)
        output = teacher(pixel_values)
        assert output.grid == (4, 4) and output.tokens.shape == (2, 16, 32)
        torch.testing.assert_close(
            F.normalize(output.global_features, dim=-1), student(pixel_values).embeddings
        )


@pytest.mark.parametrize("model_id", ["facebook/dinov2-small", "timm/vit_small_patch16_224.dino"])
def test_online_ids_fail_fast_offline_naming_the_id(model_id, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing can be found locally
    with pytest.raises(TeacherLoadError, match=model_id.replace(".", r"\.")) as error:
        load_teacher(model_id)
    assert "HF_HUB_OFFLINE" in str(error.value)


def test_spec_validation(vit_file):
    with pytest.raises(ValueError, match="source='s3'"):
        TeacherSpec(model="x", source="s3")
    with pytest.raises(ValueError, match="unknown teacher fields"):
        TeacherSpec.from_value({"model": "x", "layer": 3})
    assert TeacherSpec(model="hf-hub:timm/vit_small_patch16_224.dino").name == "vit_small_patch16_224_dino"
    path, _ = vit_file
    spec = {
        "model": str(path),
        "name": "same",
        "architecture": "vit_tiny_patch16_224",
        "model_kwargs": VIT_KWARGS,
    }
    with pytest.raises(ValueError, match="two teachers are named 'same'"):
        load_teachers([spec, spec])
    with pytest.raises(TeacherLoadError, match="no config.json"):
        load_teacher(os.path.dirname(path))


def test_mlfd_individual_teacher_directory_serves_as_a_teacher(tmp_path):
    from hf_distill.models.mlfd import MlfdClassifierConfig, MlfdClassifierModel

    config = MlfdClassifierConfig(backbone="resnet10t", num_classes=3, dataset="digits", image_size=64)
    torch.manual_seed(0)
    classifier = MlfdClassifierModel(config).eval()
    classifier.save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    _assert_frozen(teacher)
    pixel_values = torch.randn(2, 3, 64, 64)
    output = teacher(pixel_values)
    assert output.grid == (2, 2) and output.tokens.shape == (2, 4, 512)
    torch.testing.assert_close(output.global_features, classifier(pixel_values).pooled_features)
