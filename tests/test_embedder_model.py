"""UniversalEmbedderConfig / UniversalEmbedderModel: forward maths, initialisation, weights, save/load."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel, create_backbone

TINY_VIT = dict(img_size=32, patch_size=8, depth=2)


def tiny_config(**overrides) -> UniversalEmbedderConfig:
    values = dict(backbone="vit_tiny_patch16_224", backbone_kwargs=TINY_VIT, image_size=32, embed_dim=16)
    values.update(overrides)
    return UniversalEmbedderConfig(**values)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="backbone_source"):
        tiny_config(backbone_source="keras")
    with pytest.raises(ValueError, match="embed_dim"):
        tiny_config(embed_dim=0)
    with pytest.raises(ValueError, match="image_mean"):
        tiny_config(image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="resize_size"):
        tiny_config(resize_size=16)


def test_config_defaults_and_json_round_trip():
    config = tiny_config(resize_size=None)
    assert config.resize_size == 32 and config.image_mean == [0.485, 0.456, 0.406]
    again = UniversalEmbedderConfig.from_dict(json.loads(config.to_json_string()))
    assert again.backbone_kwargs == TINY_VIT and again.embed_dim == 16 and again.feature_norm is False


def test_unknown_timm_backbone_is_named():
    with pytest.raises(ValueError, match="not_a_model_xyz"):
        create_backbone(tiny_config(backbone="not_a_model_xyz", backbone_kwargs={}))


def test_forward_matches_hand_computation(pixels):
    model = UniversalEmbedderModel(tiny_config(feature_norm=True)).eval()
    with torch.no_grad():
        output = model(pixel_values=pixels)
        features = model.backbone(pixels)
        expected = F.normalize(model.head(F.normalize(features, dim=-1)), dim=-1)
    assert output.embeddings.shape == (3, 16) and output.backbone_features.shape == (3, model.feature_dim)
    torch.testing.assert_close(output.backbone_features, features)
    torch.testing.assert_close(output.embeddings, expected)
    torch.testing.assert_close(output.embeddings.norm(dim=-1), torch.ones(3))
    embeddings, features_tuple = model(pixels, return_dict=False)
    torch.testing.assert_close(embeddings, output.embeddings)


def test_identity_head_without_normalisation_returns_backbone_features(pixels):
    model = UniversalEmbedderModel(tiny_config(embed_dim=None, normalize=False)).eval()
    assert isinstance(model.head, torch.nn.Identity)
    with torch.no_grad():
        output = model(pixels)
    torch.testing.assert_close(output.embeddings, output.backbone_features)
    assert output.embeddings.shape[1] == model.feature_dim == 192


def test_backbone_keeps_timm_initialisation():
    torch.manual_seed(123)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT)
    torch.manual_seed(123)
    model = UniversalEmbedderModel(tiny_config())
    expected = reference.state_dict()
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_pretrained_file_is_loaded_but_not_saved(tmp_path, pixels):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, **TINY_VIT)
    weights = tmp_path / "backbone.safetensors"
    save_file(source.state_dict(), str(weights))
    model = UniversalEmbedderModel(tiny_config(pretrained_file=str(weights))).eval()
    # timm drops the classifier when num_classes differs; every other tensor comes from the file.
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0, msg=key)

    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "pretrained_file" not in saved and saved["auto_map"]["AutoModel"].startswith("modeling_embedder.")
    weights.unlink()  # the saved checkpoint must not need the original file
    reloaded = AutoModel.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).embeddings, model(pixels).embeddings, rtol=0, atol=0)


def test_unreadable_pretrained_file_is_named(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="broken.safetensors"):
        UniversalEmbedderModel(tiny_config(pretrained_file=str(bad)))


def test_round_trip_restores_non_persistent_buffers(tmp_path, pixels):
    # vit_relpos computes relative-position index buffers in its constructor; they are not in the checkpoint.
    config = tiny_config(
        backbone="vit_relpos_base_patch16_clsgap_224",
        backbone_kwargs=dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2),
    )
    model = UniversalEmbedderModel(config).eval()
    assert any(True for _ in model.named_non_persistent_buffers())
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, UniversalEmbedderModel)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).embeddings, model(pixels).embeddings, rtol=0, atol=0)


def test_transformers_backbone_token_pooling_and_round_trip(tmp_path, pixels):
    config = UniversalEmbedderConfig(
        backbone="vit",
        backbone_source="transformers",
        backbone_kwargs=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        image_size=32,
        embed_dim=8,
    )
    model = UniversalEmbedderModel(config).eval()
    assert model.feature_dim == 32
    with torch.no_grad():
        output = model(pixels)
        cls_token = model.backbone.model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(output.backbone_features, cls_token)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).backbone_source == "transformers"
    with torch.no_grad():
        torch.testing.assert_close(
            AutoModel.from_pretrained(tmp_path).eval()(pixels).embeddings, output.embeddings
        )


def test_missing_pretrained_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        UniversalEmbedderModel(tiny_config(pretrained_file=str(tmp_path / "absent.safetensors")))
