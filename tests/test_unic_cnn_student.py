"""UNIC with a pretrained CNN student: it starts from the offline ImageNet weights, its ladder reads the stage
outputs (checked against hooks on a plain forward), it exports an AutoModel embedder equal to timm's own pooled
feature, and over a cached trunk it computes what the pixel path computes while refusing taps in the trunk."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel

import hf_distill  # noqa: F401  (registers the Auto classes)
from hf_distill.layers.trunk import trunk_forward
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel

TEACHERS = {
    "big": {"global_dim": 10, "token_dim": 12, "grid": [2, 2]},
    "fine": {"global_dim": 6, "token_dim": 5, "grid": [3, 3]},
}


def _cnn_config(weights, **overrides) -> UnicStudentConfig:
    values = dict(
        backbone=weights.architecture,
        pretrained_file=str(weights.path),
        teachers=TEACHERS,
        image_size=64,
        image_mean=list(weights.mean),
        image_std=list(weights.std),
        last_projector_hidden_ratio=1.0,
    )
    values.update(overrides)
    return UnicStudentConfig(**values)


@pytest.fixture(scope="module")
def cnn_student(offline_lite0) -> UnicStudentModel:
    torch.manual_seed(0)
    return UnicStudentModel(_cnn_config(offline_lite0, last_rung_input="normed")).eval()


def test_cnn_student_starts_from_the_offline_imagenet_weights(cnn_student, offline_lite0):
    assert cnn_student.kind == "cnn" and cnn_student.backbone_pretrained
    stored = load_file(str(offline_lite0.path))
    state = {
        k: v for k, v in cnn_student.backbone.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    # every backbone tensor comes from the file (the classifier is dropped: the student has no head)
    assert set(state) == set(stored) - {"classifier.weight", "classifier.bias"}
    for key in ("conv_stem.weight", "blocks.3.1.conv_dw.weight", "bn2.running_var"):
        torch.testing.assert_close(state[key], stored[key], rtol=0, atol=0)


def test_cnn_ladder_reads_every_stage_pooled_and_resized(cnn_student):
    """Second implementation: forward hooks on a plain backbone forward capture the stage outputs and the head map;
    the ladders must be the sum of projectors of their position averages (cls) and of their area-resized maps."""
    backbone = cnn_student.backbone
    assert cnn_student.ladder_blocks == list(range(len(backbone.blocks)))
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        stage.register_forward_hook(lambda module, args, out, i=i: captured.__setitem__(i, out))
        for i, stage in enumerate(backbone.blocks)
    ]
    hooks.append(
        backbone.bn2.register_forward_hook(lambda module, args, out: captured.__setitem__("head", out))
    )
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = backbone(pixels)
        output = cnn_student(pixels, output_predictions=True)
    for hook in hooks:
        hook.remove()
    # last_rung_input="normed": the last rung reads the head's map, the one the embedding averages
    maps = [captured[i] for i in range(len(backbone.blocks) - 1)] + [captured["head"]]
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 4, 2, 2]
    for name, shape in TEACHERS.items():
        ladder = cnn_student.ladders[name]
        grid = shape["grid"]
        expected_cls = sum(p(m.mean(dim=(2, 3))) for p, m in zip(ladder["cls"].projectors, maps))
        expected_patch = 0
        for projector, stage in zip(ladder["patch"].projectors, maps):
            if stage.shape[-1] >= grid[0]:
                resized = F.adaptive_avg_pool2d(stage, grid)
            else:
                resized = F.interpolate(stage, size=grid, mode="bilinear", align_corners=False)
            expected_patch = expected_patch + projector(resized.flatten(2).transpose(1, 2))
        with torch.no_grad():
            torch.testing.assert_close(output.predictions[name]["cls"], expected_cls, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                output.predictions[name]["patch"], expected_patch, rtol=1e-4, atol=1e-5
            )
        assert output.predictions[name]["patch"].shape == (2, grid[0] * grid[1], shape["token_dim"])
    torch.testing.assert_close(output.embeddings, F.normalize(pooled, dim=-1), rtol=0, atol=1e-6)
    # each rung is as wide as its stage (the head: 1280)
    widths = [p[0].in_features for p in cnn_student.ladders["big"]["cls"].projectors]
    assert widths == [16, 24, 40, 80, 112, 192, 1280]


def test_cnn_export_loads_with_automodel_and_is_timms_pooled_feature(cnn_student, offline_lite0, tmp_path):
    embedder = cnn_student.export_embedder()
    assert all(key.startswith("backbone.") for key in embedder.state_dict())
    embedder.save_pretrained(tmp_path / "embedder")
    reloaded = AutoModel.from_pretrained(tmp_path / "embedder").eval()
    reference = timm.create_model(
        offline_lite0.architecture,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(offline_lite0.path)},
        num_classes=0,
    ).eval()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = F.normalize(reference(pixels), dim=-1)
        torch.testing.assert_close(reloaded(pixel_values=pixels).embeddings, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(cnn_student(pixels).embeddings, expected, rtol=0, atol=1e-5)


def test_trainable_from_reads_trunk_maps_and_freezes_the_trunk(cnn_student, offline_lite0):
    torch.manual_seed(0)
    over_trunk = UnicStudentModel(
        _cnn_config(offline_lite0, last_rung_input="normed", trainable_from=5)
    ).eval()
    # default ladder: the stages that train only
    assert over_trunk.ladder_blocks == [5, 6]
    frozen = {name for name, p in over_trunk.backbone.named_parameters() if not p.requires_grad}
    assert "conv_stem.weight" in frozen and any(name.startswith("blocks.4.") for name in frozen)
    assert not any(name.startswith(("blocks.5.", "blocks.6.", "conv_head")) for name in frozen)
    # same weights, ladders restricted to stages 5 and 6: maps in == pixels in through a student tapping [5, 6]
    torch.manual_seed(0)
    on_pixels = UnicStudentModel(
        _cnn_config(offline_lite0, last_rung_input="normed", ladder_blocks=[5, 6])
    ).eval()
    on_pixels.load_state_dict(over_trunk.state_dict())
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        from_maps = over_trunk(trunk_forward(over_trunk.backbone, pixels, 5), output_predictions=True)
        from_pixels = on_pixels(pixels, output_predictions=True)
    for name in TEACHERS:
        for token_type in ("cls", "patch"):
            torch.testing.assert_close(
                from_maps.predictions[name][token_type],
                from_pixels.predictions[name][token_type],
                rtol=0,
                atol=1e-5,
            )
    torch.testing.assert_close(from_maps.embeddings, from_pixels.embeddings, rtol=0, atol=1e-6)


def test_taps_inside_the_frozen_trunk_are_refused(offline_lite0):
    with pytest.raises(ValueError, match=r"ladder_blocks=\[2, 6\] taps blocks \[2\] inside the frozen trunk"):
        UnicStudentModel(_cnn_config(offline_lite0, trainable_from=5, ladder_blocks=[2, 6]))
    with pytest.raises(ValueError, match="trainable_from=7 leaves none"):
        UnicStudentModel(_cnn_config(offline_lite0, trainable_from=7))
    with pytest.raises(ValueError, match="trainable_from must be a non-negative"):
        _cnn_config(offline_lite0, trainable_from=-1)


def test_vit_student_over_a_cached_trunk_matches_its_pixel_path():
    kwargs = dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2},
        image_size=32,
        teachers=TEACHERS,
    )
    torch.manual_seed(0)
    on_pixels = UnicStudentModel(UnicStudentConfig(ladder_blocks=[1, 2], **kwargs)).eval()
    over_trunk = UnicStudentModel(UnicStudentConfig(trainable_from=1, **kwargs)).eval()
    over_trunk.load_state_dict(on_pixels.state_dict())
    assert over_trunk.ladder_blocks == [1, 2]
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = on_pixels(pixels, output_predictions=True)  # timm's forward_intermediates path
        got = over_trunk(trunk_forward(over_trunk.backbone, pixels, 1), output_predictions=True)
    for name in TEACHERS:
        for token_type in ("cls", "patch"):
            torch.testing.assert_close(
                got.predictions[name][token_type], expected.predictions[name][token_type], rtol=0, atol=1e-5
            )
    torch.testing.assert_close(got.embeddings, expected.embeddings, rtol=0, atol=1e-6)


def test_cnn_student_over_a_trunk_round_trips_through_save_and_from_pretrained(offline_lite0, tmp_path):
    """A checkpoint of a cached-trunk student reloads as one: same weights, maps in, the trunk still frozen."""
    torch.manual_seed(0)
    student = UnicStudentModel(_cnn_config(offline_lite0, trainable_from=5)).eval()
    student.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, UnicStudentModel) and reloaded.trunk_split == 5
    assert not reloaded.backbone.conv_stem.weight.requires_grad
    maps = trunk_forward(student.backbone, torch.randn(2, 3, 64, 64), 5)
    with torch.no_grad():
        expected, got = student(maps, output_predictions=True), reloaded(maps, output_predictions=True)
    torch.testing.assert_close(got.predictions["fine"]["patch"], expected.predictions["fine"]["patch"])
    torch.testing.assert_close(got.embeddings, expected.embeddings)
