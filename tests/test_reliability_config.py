"""Recipe configuration: wrong value types fail at parse time naming the file and key; a Hub token is refused
on the command line and never reaches any file under the output directory."""

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))

import udon as udon_recipe  # noqa: E402
from udon import UdonRecipeArguments  # noqa: E402

from hf_distill.recipe import parse_recipe_args  # noqa: E402
from hf_distill.trainers.arguments import UdonTrainingArguments  # noqa: E402

TOKEN = "hf_reliabilityTestSecret0123456789"


def parse(tmp_path, config, *argv):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return parse_recipe_args((UdonRecipeArguments, UdonTrainingArguments), ["--config", str(path), *argv])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("max_steps", 2.5, "max_steps must be an integer, got 2.5"),
        ("per_device_train_batch_size", True, "per_device_train_batch_size must be an integer"),
        ("learning_rate", [0.1, 0.2], "learning_rate takes a single value"),
        ("embed_dim", 64.5, "embed_dim must be an integer"),
        ("backbone_kwargs", "depth=2", "backbone_kwargs must be a mapping"),
    ],
)
def test_wrong_value_types_fail_at_parse_time_naming_file_and_key(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message) as raised:
        parse(tmp_path, {"output_dir": str(tmp_path), key: value})
    assert "config.yaml" in str(raised.value)


def test_numbers_in_yaml_still_parse(tmp_path):
    # ints where floats are expected, and YAML's string form of 1e-3, are fine
    _, args = parse(tmp_path, {"output_dir": str(tmp_path), "learning_rate": 1, "weight_decay": "1e-3"})
    assert args.learning_rate == 1.0 and args.weight_decay == pytest.approx(1e-3)


def test_hub_token_on_the_command_line_is_refused(tmp_path):
    for argv in (["--hub_token", TOKEN], [f"--hub_token={TOKEN}"]):
        with pytest.raises(ValueError, match="HF_TOKEN") as raised:
            parse(tmp_path, {"output_dir": str(tmp_path)}, *argv)
        assert TOKEN not in str(raised.value)


@pytest.mark.slow
def test_no_file_under_output_dir_contains_the_hub_token(tiny_benchmark_dir, tmp_path):
    config = dict(
        benchmark=str(tiny_benchmark_dir),
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"img_size": 32, "patch_size": 8, "depth": 1},
        domains=["digits", "photos"],
        per_device_train_batch_size=8,
        max_steps=2,
        backbone_frozen_epochs=0,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        hub_token=TOKEN,  # from the YAML file, which stays outside the output directory
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    output_dir = tmp_path / "run"
    udon_recipe.main(["--config", str(path), "--output_dir", str(output_dir)])
    files = [p for p in output_dir.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "README.md" for p in files)
    leaking = [str(p.relative_to(output_dir)) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaking, f"the Hub token was written to {leaking}"
