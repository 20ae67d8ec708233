"""recipes/unic.py with recipes/configs/unic_cnn_offline.yaml, cut small: an EfficientNet-Lite0 student from its
offline ImageNet weights fine-tunes its top stages over a cached trunk, against teacher targets cached over the same
augmented views. One run; the tests check the row alignment of maps and targets, that training moved the top and
not the trunk, and that the exported embedder (pixels in) equals the cached-maps path it was evaluated with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchvision.transforms import v2
from transformers import AutoModel

import hf_distill  # noqa: F401  (registers the Auto classes)
from hf_distill.evaluation.evaluator import default_transform, embed_dataset
from hf_distill.layers.trunk import trunk_forward
from hf_distill.recipe import parse_recipe_args
from hf_distill.teachers.cache import transform_view, view_seed
from hf_distill.teachers.offline import resolve_offline_weights
from hf_distill.trainers.arguments import UnicTrainingArguments
from hf_distill.trainers.unic import target_column, unic_train_transform

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIG = RECIPES / "configs" / "unic_cnn_offline.yaml"
sys.path.insert(0, str(RECIPES))

import unic as unic_recipe  # noqa: E402
from recipe_runs import run_recipe  # noqa: E402

CUT = 5  # the config's trainable_from


class KeepsTheUntrainedStudent(unic_recipe.UnicRecipe):
    """The UNIC recipe, keeping a copy of the student's weights as built (before the first step)."""

    def build(self) -> None:
        super().build()
        self.untrained = {key: value.clone() for key, value in self.model.state_dict().items()}


@pytest.fixture(scope="module")
def run(tiny_benchmark_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("unic_cnn")
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_DISTILL_CACHE", str(root / "cache"))
    recipe, metrics = run_recipe(
        KeepsTheUntrainedStudent,
        [
            "--config", str(CONFIG),
            # The config's Lite2 teacher needs the efficientnet-lite2 package (offline-assets extra); what is
            # checked here does not depend on which offline teachers are distilled.
            "--teachers", "efficientnet_lite0", "mobilenet_v2",
            "--benchmark", str(tiny_benchmark_dir),
            "--output_dir", str(root / "run"),
            "--trunk_cache_dir", str(root / "trunk"),
            "--max_train_per_domain", "8",  # 5 domains x 8 images x 3 views = 120 rows
            "--max_steps", "8",
            "--per_device_train_batch_size", "16",
            "--warmup_steps", "0",
            "--learning_rate", "0.001",
            "--starting_point_fit_images", "100",
            "--eval_batch_size", "64",
            "--save_strategy", "no",
            "--logging_steps", "1",
        ],
    )  # fmt: skip
    yield recipe, metrics, root / "run"
    patch.undo()


def test_config_is_the_issue_regime():
    recipe, args = parse_recipe_args(
        (unic_recipe.UnicRecipeArguments, UnicTrainingArguments), ["--config", str(CONFIG)]
    )
    assert recipe.student_offline_weights == "efficientnet_lite0" and recipe.image_size == 64
    assert [spec.model for spec in recipe.teacher_specs()] == ["efficientnet_lite2", "mobilenet_v2"]
    assert recipe.use_feature_cache and recipe.cache_views > 1 and recipe.trainable_from == CUT
    assert recipe.max_train_per_domain is not None


def test_each_row_holds_the_trunk_maps_and_the_targets_of_one_view_of_one_image(run):
    """Recomputed from scratch: the view of (image, view) under its view seed, the student's trunk on it and each
    teacher on it; a row's maps and targets must both be that view's, and not the image's other view."""
    recipe, _, _ = run
    dataset = recipe.trainer.train_dataset
    images = recipe.training_images()
    config = recipe.model.config
    transform = unic_train_transform(recipe.recipe.image_size, recipe.recipe.train_scale_min)
    normalize = v2.Normalize(list(config.image_mean), list(config.image_std))
    views = recipe.recipe.cache_views
    rows = [0, 1, 2, 8 * views + 1, len(dataset) - 1]  # first image's views, a second domain, the last row
    backbone = recipe.model.backbone.eval()
    for row in rows:
        source, view = dataset.source_index[row], dataset.view[row]
        assert (source, view) == (row // views, row % views)
        item = dataset[row]
        image = images[source]["image"]
        pixels = transform_view(transform, image, view_seed(recipe.recipe.cache_seed, source, view))
        other = transform_view(
            transform, image, view_seed(recipe.recipe.cache_seed, source, (view + 1) % views)
        )
        with torch.no_grad():
            maps = trunk_forward(backbone, normalize(pixels)[None], CUT)[0]
            other_maps = trunk_forward(backbone, normalize(other)[None], CUT)[0]
            # batched and channels-last in the cache: float32 round-off only
            torch.testing.assert_close(item["pixel_values"], maps, rtol=1e-4, atol=1e-4)
            assert (item["pixel_values"] - other_maps).abs().max() > 1e-2
            for name, teacher in recipe.teachers.items():
                output = teacher(teacher.prepare(pixels[None]))
                # targets are stored in float16
                cached_cls = item[target_column(name, "cls")].float()
                torch.testing.assert_close(cached_cls, output.global_features[0], rtol=2e-3, atol=2e-3)
                cached_patch = item[target_column(name, "patch")].float()
                torch.testing.assert_close(cached_patch, output.tokens[0], rtol=2e-3, atol=2e-3)


def test_training_moved_the_top_and_ladders_but_not_the_trunk(run):
    recipe, _, _ = run
    trained = recipe.model.state_dict()
    stored = load_file(str(resolve_offline_weights("efficientnet_lite0").path))
    for key in ("conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.4.2.conv_pwl.weight"):
        torch.testing.assert_close(trained["backbone." + key], stored[key], rtol=0, atol=0)
    for key in ("backbone.blocks.5.0.conv_pw.weight", "backbone.conv_head.weight"):
        assert not torch.equal(trained[key], recipe.untrained[key]), key
    ladder = [key for key in trained if key.startswith("ladders.")]
    assert ladder and all(".projectors." in key for key in ladder)
    assert any(not torch.equal(trained[key], recipe.untrained[key]) for key in ladder)


def test_training_lowered_the_distillation_loss(run):
    """On one batch of cached rows, under the final target statistics, the trained student's loss is below the
    untrained one's (eval mode, before teacher dropping)."""
    recipe, _, _ = run
    trainer = recipe.trainer
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))

    def loss() -> float:
        model = trainer.model.eval()
        with torch.no_grad():
            losses = trainer.compute_losses(model, inputs)
        return sum(float(losses[f"{name}/loss"]) for name in trainer.loss.teacher_names)

    trained = loss()
    current = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(recipe.untrained)
    untrained = loss()
    trainer.model.load_state_dict(current)
    assert trained < 0.95 * untrained, (trained, untrained)


def test_exported_embedder_on_pixels_equals_the_cached_maps_path(run):
    recipe, metrics, output_dir = run
    embedder = AutoModel.from_pretrained(output_dir / "embedder").eval()
    assert all(key.startswith("backbone.") for key in embedder.state_dict())
    over_maps = recipe.for_evaluation(embedder)
    for name in recipe.benchmark.domains:
        from_pixels = embed_dataset(
            embedder, recipe.benchmark.domains[name]["test"], default_transform(embedder)
        )
        maps = recipe.evaluation_benchmark.domains[name]["test"]
        from_maps = embed_dataset(over_maps, maps, default_transform(over_maps))
        torch.testing.assert_close(from_maps, from_pixels, rtol=0, atol=1e-5)
    # the run was evaluated, its starting point measured on the maps (every domain's fit sample concatenated)
    summary = json.loads((output_dir / "run_summary.json").read_text())
    assert summary["test_starting_point"] and 0.0 <= metrics["merged/mean/R@1"] <= 1.0
    assert "knn/mean/top1" in metrics


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--use_feature_cache", "false"], "trainable_from needs use_feature_cache"),
        (["--trunk_views", "2"], "set cache_views"),
        (["--train_dataset", "some/dataset"], "unset train_dataset"),
        (
            ["--student_pretrained_file", "weights.safetensors"],
            "student_offline_weights or student_pretrained_file",
        ),
    ],
)
def test_cached_trunk_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_recipe_args(
            (unic_recipe.UnicRecipeArguments, UnicTrainingArguments), ["--config", str(CONFIG), *overrides]
        )
