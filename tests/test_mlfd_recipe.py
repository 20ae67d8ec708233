"""recipes/mlfd.py end to end on the tiny benchmark: a ViT and a CNN teacher, two fusion levels, students exported
as universal embedders; a second run skips every stage; a cache built with other settings is refused."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from hf_distill.models.embedder import UniversalEmbedderModel
from hf_distill.models.mlfd import JointTeacherModel, MlfdClassifierModel

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mlfd.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("mlfd_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    # Dataclasses resolve their string annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _arguments(recipe, tiny_benchmark_dir, output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        benchmark_path=str(tiny_benchmark_dir),
        domains=["digits", "animals"],
        teacher_backbones=["vit_tiny_patch16_224", "resnet10t"],
        backbone_kwargs={"vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8, "depth": 2}},
        max_train_samples=40,
        batch_size=16,
        teacher_epochs=1,
        student_epochs=1,
        joint_epochs=1,
        joint_fusion_levels=1,
        joint_adaptor_channels=8,
        joint_out_channels=16,
        cache_views=2,
        logging_steps=1,
    )
    values.update(overrides)
    return recipe.MlfdArguments(**values)


@pytest.mark.slow
def test_four_stages_run_resume_and_refuse_a_stale_cache(tiny_benchmark_dir, tmp_path):
    recipe = _recipe()
    args = _arguments(recipe, tiny_benchmark_dir, tmp_path / "run")
    results = recipe.run_mlfd(args)
    output = tmp_path / "run"

    for domain in ("digits", "animals"):
        for stage in ("teachers", "students"):
            metrics = results[stage][domain]
            assert 0.0 <= metrics["val/top1"] <= 1.0 and 0.0 <= metrics["test/R@1"] <= 1.0
    assert set(results["joint_teacher"]) >= {"digits/val/top1", "animals/val/top1"}
    # Two augmented views cached per training image.
    cache_meta = json.loads((output / "cache" / "digits_train" / "feature_cache.json").read_text())
    assert cache_meta["num_rows"] == 2 * 40 and cache_meta["spec"]["views"] == 2

    joint = AutoModel.from_pretrained(output / "joint_teacher")
    assert isinstance(joint, JointTeacherModel)
    assert joint.config.teacher_names == ["digits", "animals"]
    assert [c["backbone"] for c in joint.config.teacher_configs] == ["vit_tiny_patch16_224", "resnet10t"]
    student = AutoModel.from_pretrained(output / "students" / "digits")
    assert isinstance(student, MlfdClassifierModel)
    # One student level per fused level; the ViT's 192 channels adapted to the fused maps' 16.
    assert student.config.feature_levels == [-2, -1] and student.config.distill_channels == [16, 16]

    embedder = AutoModel.from_pretrained(output / "students" / "digits" / "embedder")
    assert isinstance(embedder, UniversalEmbedderModel)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embeddings = embedder(pixel_values=pixels).embeddings
        pooled = student.eval()(pixel_values=pixels).pooled_features
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(pooled, dim=-1))
    card = (output / "students" / "digits" / "embedder" / "README.md").read_text()
    assert "mlfd" in card.lower()

    # A second run finds every stage's output and retrains nothing.
    stamps = {path: path.stat().st_mtime_ns for path in output.rglob("model.safetensors")}
    again = recipe.run_mlfd(args)
    assert {path: path.stat().st_mtime_ns for path in output.rglob("model.safetensors")} == stamps
    assert again["students"] == results["students"]

    # Other cache settings with the same output folder: the existing cache is refused, naming the field.
    stale = _arguments(recipe, tiny_benchmark_dir, output, cache_dtype="float32")
    with pytest.raises(ValueError, match=r"fields \['extra'\] differ"):
        recipe.run_mlfd(stale)
