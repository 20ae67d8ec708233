"""The recipes' shared keys have one spelling: MLFD reads ``benchmark`` / ``max_train_per_domain`` like UDON and
UNIC, and the old MLFD names are refused (config file and command line) with a message naming the new ones."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from hf_distill.recipe import RecipeArguments, parse_recipe_args
from hf_distill.trainers.mlfd_stages import MlfdStageArguments

REPO = Path(__file__).resolve().parents[1]


def test_mlfd_and_the_other_recipes_spell_the_shared_keys_alike():
    shared = {"benchmark", "max_train_per_domain"}
    assert shared <= {field.name for field in dataclasses.fields(MlfdStageArguments)}
    assert shared <= {field.name for field in dataclasses.fields(RecipeArguments)}
    (args,) = parse_recipe_args(
        [MlfdStageArguments],
        ["--config", str(REPO / "recipes/configs/mlfd_offline.yaml"), "--benchmark", "data/x"],
    )
    assert args.benchmark == "data/x"
    assert (
        args.max_train_per_domain
        == yaml.safe_load((REPO / "recipes/configs/mlfd_offline.yaml").read_text())["max_train_per_domain"]
    )


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("benchmark_path", "benchmark", "data/manydomain"), ("max_train_samples", "max_train_per_domain", 10)],
)
def test_old_mlfd_keys_are_refused_naming_the_new_ones(tmp_path, old, new, value):
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({"domains": ["digits"], old: value}))
    with pytest.raises(ValueError, match=rf"old\.yaml' uses renamed keys: {old} is now {new}\b"):
        parse_recipe_args([MlfdStageArguments], ["--config", str(config)])
    for flag in ([f"--{old}", str(value)], [f"--{old}={value}"]):
        with pytest.raises(ValueError, match=rf"command line uses renamed keys: --{old} is now --{new}\b"):
            parse_recipe_args([MlfdStageArguments], flag)
