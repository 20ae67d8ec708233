"""Shared recipe helpers: arguments from a YAML file plus ``--key value`` overrides.

Every recipe runs as ``accelerate launch recipes/<method>.py [--config file.yaml] [--key value ...]``. The YAML
file holds the fields of the recipe's argument dataclasses (``TrainingArguments`` included) as a flat mapping;
command-line flags override it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser

logger = logging.getLogger(__name__)


def load_yaml_config(path: str) -> dict[str, Any]:
    """Read a flat YAML mapping of argument names to values.

    Args:
        path: the YAML file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file '{path}' does not exist")
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of argument names to values")
    return config


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``--config`` (YAML defaults) and ``--key value`` overrides into the given dataclasses.

    Args:
        dataclass_types: the argument dataclasses, e.g. ``(ModelArguments, UdonTrainingArguments)``.
        argv: command-line arguments; defaults to ``sys.argv[1:]``.

    Returns:
        one instance per dataclass, in order.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--hub_token" or arg.startswith("--hub_token=") for arg in argv):
        raise ValueError(
            "--hub_token on the command line is visible to every user of the machine (ps), in the shell history and "
            "in the command `accelerate launch` prints when a run fails; set the HF_TOKEN environment variable or "
            "run `hf auth login` instead (the token is never written to checkpoints or logs)"
        )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, remaining = pre.parse_known_args(argv)

    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:
        # argparse would call dict("{...}"); read mapping-valued flags as JSON instead.
        if action.type is dict:
            action.type = _json_mapping
    if known.config is not None:
        config = load_yaml_config(known.config)
        destinations = {action.dest: action for action in parser._actions}
        unknown = sorted(set(config) - set(destinations))
        if unknown:
            raise ValueError(
                f"config file '{known.config}' has unknown keys {unknown}; valid keys are the fields of "
                f"{[cls.__name__ for cls in dataclass_types]}"
            )
        for key, value in config.items():
            _check_config_value(known.config, key, value, destinations[key])
            # A value given in the file satisfies a required argument.
            destinations[key].required = False
        parser.set_defaults(**config)
    return tuple(parser.parse_args_into_dataclasses(args=remaining))


def _check_config_value(path: str, key: str, value: Any, action: argparse.Action) -> None:
    """Refuse a YAML value of the wrong type now, before data and models load.

    argparse converts command-line strings with the field's type but takes YAML values (set as defaults) as they
    are, so ``max_steps: 2.5`` would otherwise reach the Trainer and fail there.
    """
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and action.nargs not in ("+", "*"):
        raise ValueError(f"config file '{path}': {key} takes a single value, got the list {value!r}")
    for item in items:
        if action.type is _json_mapping and not isinstance(item, (dict, type(None))):
            raise ValueError(f"config file '{path}': {key} must be a mapping, got {item!r}")
        if item is None or isinstance(item, str):
            continue  # strings go through the field's own conversion, as on the command line
        if action.type is int and (isinstance(item, bool) or not isinstance(item, int)):
            raise ValueError(f"config file '{path}': {key} must be an integer, got {item!r}")
        if action.type is float and (isinstance(item, bool) or not isinstance(item, (int, float))):
            raise ValueError(f"config file '{path}': {key} must be a number, got {item!r}")
        if action.choices is not None and item not in action.choices:
            raise ValueError(
                f"config file '{path}': {key} must be one of {list(action.choices)}, got {item!r}"
            )


def _json_mapping(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"depth\": 4}}', got {text!r}"
        ) from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def setup_logging(level: int = logging.INFO) -> None:
    """Configure root logging for a recipe (time, level, logger name).

    Args:
        level: the logging level of the main process.
    """
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def finish_run(
    trainer: Any,
    embedder: Any,
    export_dir: str,
    card: dict[str, Any],
    metrics: dict[str, float],
    recipe: Any,
    push: bool,
) -> None:
    """Save the embedder with its processor and card, write the test metrics, the log history and the run
    summary into the trainer's output dir, and push the embedder when asked.

    Args:
        trainer: the method's `DistillationTrainer` after training.
        embedder: the exported `UniversalEmbedderModel`.
        export_dir: where the embedder folder is written.
        card: keyword arguments of the model card (see `hf_distill.hub.save_embedder`).
        metrics: final test metrics.
        recipe: the recipe's own dataclass, recorded in the run summary.
        push: push `export_dir` to `trainer.args.hub_model_id`.
    """
    from dataclasses import asdict

    from hf_distill.hub import push_embedder, save_embedder

    args = trainer.args
    save_embedder(embedder, export_dir, card=card)
    with open(os.path.join(args.output_dir, "test_metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
    with open(os.path.join(args.output_dir, "log_history.json"), "w") as handle:
        json.dump(trainer.state.log_history, handle)
    trainer.add_to_run_summary("test_metrics", metrics)
    trainer.add_to_run_summary("recipe", asdict(recipe))
    trainer.add_to_run_summary("export_dir", export_dir)
    trainer.write_run_summary()
    if push:
        push_embedder(export_dir, args.hub_model_id, token=args.hub_token)
