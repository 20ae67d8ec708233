"""UNIC student: projector ladder shapes and widths, token-grid resizing, save/load, export without projectors."""

import pytest
import torch
from torch import nn
from transformers import AutoModel

from hf_distill.layers import ProjectorLadder, resize_token_grid
from hf_distill.models.embedder import UniversalEmbedderModel
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel

TEACHERS = {
    "cnn": {"global_dim": 10, "token_dim": 12, "grid": [2, 2]},
    "vit": {"global_dim": 6, "token_dim": 7, "grid": [4, 4]},
}


def _config(**overrides) -> UnicStudentConfig:
    values = dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2},
        image_size=32,
        teachers=TEACHERS,
    )
    values.update(overrides)
    return UnicStudentConfig(**values)


@pytest.fixture(scope="module")
def student() -> UnicStudentModel:
    torch.manual_seed(0)
    return UnicStudentModel(_config())


def test_ladder_per_teacher_and_token_type_with_spec_widths(student):
    assert set(student.ladders) == {"cnn", "vit"}
    for name, shape in TEACHERS.items():
        for token_type, out_dim in (("cls", shape["global_dim"]), ("patch", shape["token_dim"])):
            ladder = student.ladders[name][token_type]
            assert ladder.blocks == [0, 1, 2]
            hidden = [projector[0].out_features for projector in ladder.projectors]
            assert hidden == [32, 32, 4 * 32]  # d for intermediate blocks, 4d for the last
            assert all(isinstance(projector[1], nn.GELU) for projector in ladder.projectors)
            assert {projector[2].out_features for projector in ladder.projectors} == {out_dim}


def test_predictions_have_each_teachers_shape_and_grid(student):
    output = student(torch.randn(2, 3, 32, 32), output_predictions=True)
    assert output.predictions["cnn"]["cls"].shape == (2, 10)
    assert output.predictions["cnn"]["patch"].shape == (2, 4, 12)  # student 4x4 grid resized to 2x2
    assert output.predictions["vit"]["patch"].shape == (2, 16, 7)  # same grid: no resize
    torch.testing.assert_close(output.embeddings.norm(dim=-1), torch.ones(2))


def test_ladder_output_is_the_sum_of_its_projectors():
    ladder = ProjectorLadder([0, 2], depth=3, in_dim=4, out_dim=3, hidden_ratio=1, last_hidden_ratio=4)
    features = [torch.randn(5, 4), torch.randn(5, 4)]
    expected = ladder.projectors[0](features[0]) + ladder.projectors[1](features[1])
    torch.testing.assert_close(ladder(features), expected)
    assert [p[0].out_features for p in ladder.projectors] == [4, 16]


def test_ladder_blocks_subset_always_includes_the_last_block():
    student = UnicStudentModel(_config(ladder_blocks=[0]))
    assert student.ladders["cnn"]["cls"].blocks == [0, 2]
    with pytest.raises(ValueError, match="out of range"):
        UnicStudentModel(_config(ladder_blocks=[5]))


def test_resize_token_grid_values():
    # A 2x2 grid upsampled bilinearly (align_corners=False) to 4x4, row-major tokens with 1 channel.
    tokens = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])
    resized = resize_token_grid(tokens, (2, 2), (4, 4)).view(4, 4)
    torch.testing.assert_close(resized[0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(resized[:, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))
    # Downsampling a constant grid keeps the constant; equal grids are returned untouched.
    constant = torch.full((1, 16, 3), 2.5)
    torch.testing.assert_close(resize_token_grid(constant, (4, 4), (2, 2)), torch.full((1, 4, 3), 2.5))
    assert resize_token_grid(tokens, (2, 2), (2, 2)) is tokens


def test_save_and_reload_round_trip(student, tmp_path):
    student.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(reloaded, UnicStudentModel)
    inputs = torch.randn(2, 3, 32, 32)
    original, restored = (
        student.eval()(inputs, output_predictions=True),
        reloaded.eval()(inputs, output_predictions=True),
    )
    torch.testing.assert_close(restored.predictions["vit"]["patch"], original.predictions["vit"]["patch"])
    torch.testing.assert_close(restored.embeddings, original.embeddings)


def test_export_embedder_drops_every_projector(student, tmp_path):
    embedder = student.export_embedder()
    assert isinstance(embedder, UniversalEmbedderModel)
    keys = list(embedder.state_dict())
    assert keys and all(key.startswith("backbone.") for key in keys)
    assert not any("ladder" in key or "projector" in key for key in keys)
    assert len(keys) == len(student.backbone.state_dict())
    assert "drop_path_rate" not in embedder.config.backbone_kwargs
    # the saved processor must resize like the evaluator's ImageTransform (bilinear)
    assert embedder.config.resample == "bilinear"
    inputs = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(embedder(inputs).embeddings, student.eval()(inputs).embeddings)
    embedder.save_pretrained(tmp_path / "embedder")
    reloaded = AutoModel.from_pretrained(tmp_path / "embedder")
    torch.testing.assert_close(reloaded(inputs).embeddings, embedder(inputs).embeddings)


def test_config_validation():
    with pytest.raises(ValueError, match="lacks"):
        UnicStudentConfig(teachers={"a": {"global_dim": 3}})
    with pytest.raises(ValueError, match="at least one teacher"):
        UnicStudentModel(UnicStudentConfig(image_size=32, backbone_kwargs={"patch_size": 8, "depth": 1}))
