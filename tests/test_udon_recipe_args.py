"""hf_distill.recipe.parse_recipe_args with the UDON recipe's arguments: YAML defaults, overrides, clear errors."""

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))

from udon import UdonRecipeArguments  # noqa: E402

from hf_distill.recipe import parse_recipe_args  # noqa: E402
from hf_distill.trainers.arguments import UdonTrainingArguments  # noqa: E402


def parse(tmp_path, config, *argv):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return parse_recipe_args((UdonRecipeArguments, UdonTrainingArguments), ["--config", str(path), *argv])


def test_yaml_values_and_command_line_overrides(tmp_path):
    recipe, args = parse(
        tmp_path,
        {
            "variant": "uscrr",
            "backbone_kwargs": {"depth": 2},
            "learning_rate": 0.01,
            "output_dir": str(tmp_path),
        },
        "--learning_rate",
        "0.5",
        "--backbone_kwargs",
        '{"depth": 3, "img_size": 32}',
    )
    assert recipe.variant == "uscrr"
    assert recipe.backbone_kwargs == {"depth": 3, "img_size": 32}
    assert args.learning_rate == 0.5
    # derived default: backbone lr = 1e-2 x head lr (SPEC §1)
    assert args.backbone_learning_rate == pytest.approx(0.005)


def test_shipped_configs_parse():
    for name in ("udon_offline.yaml", "udon_uned_vitb16_clip.yaml"):
        recipe, args = parse_recipe_args(
            (UdonRecipeArguments, UdonTrainingArguments),
            ["--config", str(REPO / "recipes" / "configs" / name)],
        )
        assert recipe.variant == "udon" and args.per_device_train_batch_size > 0


def test_unknown_key_and_bad_json_are_reported(tmp_path):
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rat'\]"):
        parse(tmp_path, {"learning_rat": 0.1})
    with pytest.raises(SystemExit):
        parse(tmp_path, {}, "--backbone_kwargs", "depth=3")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        parse_recipe_args((UdonRecipeArguments,), ["--config", str(tmp_path / "missing.yaml")])
