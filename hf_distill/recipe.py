"""The skeleton every training recipe follows: parse → build → train with resume → evaluate → export (→ push).

A recipe (``recipes/udon.py``, ``recipes/unic.py``, ``recipes/mlfd.py``) subclasses :class:`Recipe`, names its
registered ``method`` and its arguments dataclass (a :class:`RecipeArguments` subclass), and writes only what is
its own: :meth:`Recipe.build` (model, loss, training set, trainer) and, where it needs more, :meth:`Recipe.evaluate`
or :meth:`Recipe.card_data`. Everything else is shared:

- **parse**: one YAML file (``--config``, a flat mapping) plus ``--key value`` overrides of any field of the
  recipe's arguments and of the method's training arguments (read from the registry); values are checked when
  parsed, before any data or model loads;
- **data**: :func:`~hf_distill.data.load_domains` (offline benchmark, UnED, image folders, Hub ids);
- **train with resume**: relaunching the same command resumes from the last complete checkpoint in
  ``output_dir``; the model card is filled as training goes (:class:`~hf_distill.trainers.callbacks.ModelCardCallback`),
  with the starting point — the untrained backbone as full features and as a PCA to the embedding width —
  measured on the test split before the first step;
- **evaluate**: the exported embedder on the test split (merged and separate), compared with its starting point
  (a loud warning when below);
- **export**: the embedder with its processor and model card, ``test_metrics.json``, ``log_history.json`` and
  ``run_summary.json``; **push** with ``--push_to_hub --hub_model_id user/name``.

Length: the parser with its parse-time checks and the skeleton with its shared steps are one contract every
recipe codes against (about 420 lines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import yaml

logger = logging.getLogger(__name__)

PRIMARY_METRIC = "merged/mean/R@1"

# Keys the recipes spelled differently before they shared one spelling: old name -> new name.
RENAMED_KEYS = {"benchmark_path": "benchmark", "max_train_samples": "max_train_per_domain"}


# ------------------------------------------------------------------------------------------------ parsing


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


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``--config`` (YAML defaults) and ``--key value`` overrides into the given dataclasses.

    Args:
        dataclass_types: the argument dataclasses, e.g. ``(UdonRecipeArguments, UdonTrainingArguments)``.
        argv: command-line arguments; defaults to ``sys.argv[1:]``.

    Returns:
        one instance per dataclass, in order.
    """
    from transformers import HfArgumentParser

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
    flags = [arg[2:].split("=", 1)[0] for arg in remaining if arg.startswith("--")]
    _refuse_renamed_keys(flags, "the command line", "--")

    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:
        # argparse would call dict("{...}"); read mapping-valued flags as JSON instead.
        if action.type is dict:
            action.type = _json_mapping
    if known.config is not None:
        config = load_yaml_config(known.config)
        _refuse_renamed_keys(config, f"config file '{known.config}'", "")
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


def _refuse_renamed_keys(keys: Sequence[str], where: str, prefix: str) -> None:
    """Refuse a key of :data:`RENAMED_KEYS` with a message naming its new spelling.

    Args:
        keys: the keys given.
        where: names their source in the message (the config file or the command line).
        prefix: how a key is written there (``"--"`` on the command line).
    """
    old = [key for key in keys if key in RENAMED_KEYS]
    if old:
        renames = ", ".join(f"{prefix}{key} is now {prefix}{RENAMED_KEYS[key]}" for key in old)
        raise ValueError(f"{where} uses renamed keys: {renames} (the same keys as every recipe)")


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


def setup_logging(level: int = logging.INFO) -> None:
    """Configure root logging for a recipe (time, level, logger name).

    Args:
        level: the logging level of the main process.
    """
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


# ---------------------------------------------------------------------------------------------- skeleton


@dataclass
class RecipeArguments:
    """What every recipe reads besides its method's settings.

    Args:
        benchmark: where the domains are (see :func:`~hf_distill.data.load_domains`): an offline benchmark
            directory (default: ``make data``'s), image folders ``<domain>/<split>/<class>/<image>``, a Hub dataset
            id, or UnED's ``info_files`` directory together with ``uned_image_root``.
        uned_info_root: UnED's ``info_files`` directory (same as ``benchmark`` with ``uned_image_root``).
        uned_image_root: the folder UnED's info-file paths are relative to.
        domains: train and evaluate on these domains only.
        on_bad_image: ``"raise"`` (default) on an unreadable image, or ``"skip"`` it (counted in the run summary).
        max_train_per_domain: keep at most this many training images per domain (a seeded subset; quick runs).
        subset_seed: seed of that subset (fixed apart from the training seed, so that seeds share one subset).
        eval_batch_size: images per forward pass in evaluation.
        export_dir: where the embedder is exported (default ``<output_dir>/embedder``).
        base_model: Hub id of the backbone's initial checkpoint, for the model card.
        starting_point: measure the starting point (the untrained backbone, full and PCA) on the test split.
        starting_point_fit_images: training images the starting point's PCA is fitted on.
        trainable_from: fine-tune a pretrained backbone over a cached trunk: its stages (CNN) or blocks (ViT)
            before this index are frozen, their output maps cached once (``hf_distill.data.trunk_cache``), and
            training, validation and the starting point run the upper blocks + heads from those maps; the test
            evaluation too (equal to the pixel path, see ``tests/test_trunk_cache.py``). ``None``: pixels.
        trunk_views: augmented views cached per training image (each epoch reads every view once).
        trunk_cache_dir: where the trunk caches live (default ``outputs/trunk_cache``).
    """

    benchmark: str | None = None
    uned_info_root: str | None = None
    uned_image_root: str | None = None
    domains: list[str] | None = None
    on_bad_image: str = "raise"
    max_train_per_domain: int | None = None
    subset_seed: int = 0
    eval_batch_size: int = 256
    export_dir: str | None = None
    base_model: str | None = None
    starting_point: bool = True
    starting_point_fit_images: int = 5000
    trainable_from: int | None = None
    trunk_views: int = 1
    trunk_cache_dir: str = os.path.join("outputs", "trunk_cache")

    def __post_init__(self) -> None:
        if self.on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {self.on_bad_image!r}")
        if self.uned_info_root is not None and self.uned_image_root is None:
            raise ValueError("uned_info_root needs uned_image_root (the folder the info files' paths are in)")
        for name in ("max_train_per_domain", "eval_batch_size", "starting_point_fit_images", "trunk_views"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


class Recipe:
    """Base class of the training recipes (see the module docstring).

    Subclasses set ``method`` (a registered method name) and ``arguments_class``, and implement :meth:`build`,
    which must set ``self.model`` and ``self.trainer`` (built from ``self.benchmark``).

    Args:
        recipe: the recipe's arguments.
        args: the method's training arguments.
    """

    method: ClassVar[str]
    arguments_class: ClassVar[type] = RecipeArguments
    # Whether build() honours ``trainable_from`` (fine-tuning over a cached trunk).
    supports_cached_trunk: ClassVar[bool] = False

    def __init__(self, recipe: Any, args: Any) -> None:
        self.recipe = recipe
        self.args = args
        # The Trainer would push whole checkpoints; only the exported embedder is published, at the end.
        self.push, args.push_to_hub = bool(args.push_to_hub), False
        if self.push and not args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>")
        if getattr(recipe, "trainable_from", None) is not None and not self.supports_cached_trunk:
            raise ValueError(
                f"trainable_from is not implemented for the {self.method} recipe yet (UDON and UNIC have it); "
                "leave it unset"
            )
        self.benchmark: Any = None
        self.trunk: Any = None
        self.model: Any = None
        self.trainer: Any = None
        self.card: Any = None

    # ------------------------------------------------------------------------------ what a recipe writes

    def build(self) -> None:
        """Build ``self.model``, its loss, the training set and ``self.trainer`` from ``self.benchmark``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def card_data(self) -> Any:
        """The model-card data of this run (method, Hub id, base model, domains; teachers where there are)."""
        from hf_distill.hub import EmbedderCardData

        return EmbedderCardData(
            method=self.method,
            repo_id=self.args.hub_model_id,
            base_model=self.recipe.base_model,
            domains=list(self.benchmark.domains) if self.benchmark is not None else [],
            validation_split="val",
        )

    def evaluate(self, embedder: Any) -> dict[str, float]:
        """Test metrics of the exported embedder (retrieval, merged and separate).

        Args:
            embedder: the exported ``UniversalEmbedderModel``.
        """
        from hf_distill.evaluation import RetrievalEvaluator

        benchmark = self.evaluation_benchmark
        if benchmark is None or "test" not in benchmark.eval_pairs:
            return {}
        evaluator = RetrievalEvaluator(benchmark, split="test", batch_size=self.recipe.eval_batch_size)
        retrieval = evaluator.embed(self.for_evaluation(embedder))
        metrics = evaluator.score(retrieval, output_path=self.args.output_dir)
        if self.card is not None:
            self.card.retrieval_grid = self.draw_retrieval_grid(retrieval)
            self.card.width_metrics = self.evaluate_widths(embedder, retrieval, metrics)
        return metrics

    def evaluate_widths(
        self, embedder: Any, retrieval: dict[str, Any], metrics: dict[str, float]
    ) -> dict[int, dict[str, float]]:
        """Test metrics at every Matryoshka width of the embedder (the full width's are ``metrics``), from the
        full-width test embeddings truncated with ``embedder.truncate``.

        Args:
            embedder: the exported ``UniversalEmbedderModel``.
            retrieval: its full-width test embeddings.
            metrics: their metrics.
        """
        import torch

        from hf_distill.evaluation import RetrievalDomain, evaluate_retrieval

        dims = list(embedder.config.matryoshka_dims)
        results = {dims[0]: dict(metrics)}
        for dim in dims[1:]:
            truncated = {
                name: RetrievalDomain(
                    embedder.truncate(torch.as_tensor(domain.query_embeddings), dim),
                    domain.query_labels,
                    None
                    if domain.index_embeddings is None
                    else embedder.truncate(torch.as_tensor(domain.index_embeddings), dim),
                    domain.index_labels,
                )
                for name, domain in retrieval.items()
            }
            results[dim] = evaluate_retrieval(truncated)
            logger.info(
                "test %s at width %d = %.4f",
                PRIMARY_METRIC,
                dim,
                results[dim].get(PRIMARY_METRIC, float("nan")),
            )
        return results

    def draw_retrieval_grid(self, retrieval: dict[str, Any]) -> str:
        """The test split's retrieval picture (``hf-distill show``) from the test embeddings, for the card (the
        images are the benchmark's own, also over a cached trunk: its evaluation splits keep every row in order).

        Args:
            retrieval: the test embeddings of ``RetrievalEvaluator.embed``.
        """
        from hf_distill.evaluation.retrieval_grid import benchmark_retrieval_grid

        path = os.path.join(self.args.output_dir, "retrieval_test.png")
        return str(benchmark_retrieval_grid(self.benchmark, "test", retrieval, path))

    # ----------------------------------------------------------------------------------- shared steps

    @property
    def evaluation_benchmark(self) -> Any:
        """What every evaluation runs on: the benchmark, or its cached trunk maps (``trainable_from``)."""
        return self.trunk.benchmark if self.trunk is not None else self.benchmark

    def for_evaluation(self, embedder: Any) -> Any:
        """``embedder`` as :attr:`evaluation_benchmark` needs it (reading trunk maps over a cached trunk)."""
        from hf_distill.layers.trunk import exported_for_inputs

        return exported_for_inputs(self.trainer.accelerator.unwrap_model(self.trainer.model), embedder)

    def cache_trunk(
        self,
        backbone: Any,
        backbone_id: str,
        train_transform: Any,
        eval_transform: Any,
        views: int | None = None,
        seed: int | None = None,
        concatenated_view_seeds: bool = False,
    ) -> Any:
        """Cache the trunk maps of the benchmark for ``trainable_from`` and keep them in ``self.trunk``.

        Args:
            backbone: the pretrained backbone module.
            backbone_id: architecture and weights, for the cache spec.
            train_transform / eval_transform: the run's training augmentation and evaluation transform.
            views / seed: training views per image and their seed (default ``trunk_views`` and the run's seed).
            concatenated_view_seeds: the views of a cache over all domains' training images at once
                (``hf_distill.data.trunk_cache.cache_trunk``; UNIC's teacher targets).

        Returns:
            the :class:`~hf_distill.data.trunk_cache.TrunkCache`.
        """
        from hf_distill.data.trunk_cache import cache_trunk

        recipe = self.recipe
        self.trunk = cache_trunk(
            self.benchmark,
            backbone,
            recipe.trainable_from,
            backbone_id,
            train_transform,
            eval_transform,
            recipe.trunk_cache_dir,
            views=recipe.trunk_views if views is None else views,
            max_train_per_domain=recipe.max_train_per_domain,
            subset_seed=recipe.subset_seed,
            fit_images=recipe.starting_point_fit_images,
            seed=self.args.seed if seed is None else seed,
            batch_size=recipe.eval_batch_size,
            concatenated_view_seeds=concatenated_view_seeds,
        )
        return self.trunk

    def load_data(self) -> Any:
        """The domains named by the recipe arguments."""
        from hf_distill.data import load_domains

        recipe = self.recipe
        source = recipe.uned_info_root or recipe.benchmark
        return load_domains(source, recipe.domains, recipe.uned_image_root, recipe.on_bad_image)

    def train_split(self, domain: str) -> Any:
        """A domain's training split, cut to ``max_train_per_domain`` rows (seeded by ``subset_seed``)."""
        from hf_distill.data import subset_split

        split = self.benchmark.domains[domain]["train"]
        return subset_split(split, self.recipe.max_train_per_domain, self.recipe.subset_seed)

    def validation_evaluator(self) -> Any:
        """The evaluator run during training (merged retrieval on val), or None without a val split."""
        from hf_distill.evaluation import RetrievalEvaluator

        benchmark = self.evaluation_benchmark
        if benchmark is None or "val" not in benchmark.eval_pairs:
            return None
        return RetrievalEvaluator(
            benchmark, split="val", protocols=("merged",), batch_size=self.recipe.eval_batch_size
        )

    def train(self) -> None:
        """Train, resuming from the last complete checkpoint in ``output_dir`` when there is one."""
        from hf_distill.trainers.base import last_complete_checkpoint
        from hf_distill.trainers.callbacks import ModelCardCallback

        self.card = self.card_data()
        benchmark = self.evaluation_benchmark
        measure = self.recipe.starting_point and benchmark is not None and "test" in benchmark.eval_pairs
        benchmark = benchmark if measure else None
        self.trainer.add_callback(
            ModelCardCallback(
                self.card,
                benchmark=benchmark,
                max_fit_images=self.recipe.starting_point_fit_images,
                batch_size=self.recipe.eval_batch_size,
            )
        )
        decode_report = getattr(self.benchmark, "decode_report", None)
        if decode_report is not None:
            self.trainer.add_to_run_summary("decode_skips", decode_report.to_dict())
        checkpoint = self.args.resume_from_checkpoint or last_complete_checkpoint(self.args.output_dir)
        if checkpoint is not None:
            logger.info("resuming from %s", checkpoint)
        self.trainer.train(resume_from_checkpoint=checkpoint)

    def export(self, embedder: Any, metrics: dict[str, float]) -> str:
        """Save the embedder with its processor and card, the metrics and the run summary; push when asked.

        Args:
            embedder: the exported ``UniversalEmbedderModel``.
            metrics: its test metrics.

        Returns:
            the export folder.
        """
        from hf_distill.hub import push_embedder, save_embedder

        args, trainer = self.args, self.trainer
        export_dir = self.recipe.export_dir or os.path.join(args.output_dir, "embedder")
        self.card.metrics = dict(metrics)
        self.card.hyperparameters = self.card_hyperparameters()
        card = self.card.to_model_card(embedder, plots_dir=export_dir)
        save_embedder(embedder, export_dir, card=card)
        with open(os.path.join(args.output_dir, "test_metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2, sort_keys=True)
        with open(os.path.join(args.output_dir, "log_history.json"), "w") as handle:
            json.dump(trainer.state.log_history, handle)
        trainer.add_to_run_summary("test_metrics", metrics)
        trainer.add_to_run_summary("test_starting_point", dict(self.card.starting_point))
        if len(self.card.width_metrics) > 1:
            trainer.add_to_run_summary(
                "test_metrics_by_width", {str(k): v for k, v in self.card.width_metrics.items()}
            )
        trainer.add_to_run_summary("recipe", asdict(self.recipe))
        trainer.add_to_run_summary("export_dir", export_dir)
        trainer.write_run_summary()
        if self.push:
            push_embedder(export_dir, args.hub_model_id, token=args.hub_token)
        return export_dir

    def card_hyperparameters(self) -> dict[str, Any]:
        """Method settings shown on the card besides the training arguments (default: none)."""
        return {}

    def compare_with_starting_point(self, metrics: dict[str, float]) -> None:
        """Log the test primary metric next to each starting-point form.

        The PCA to the embedding's width is the fair comparison: ending below it gets the loud warning. The full
        backbone features are usually much wider than the embedding; ending below them is reported, not flagged.
        """
        from hf_distill.evaluation.starting_point import compare_to_starting_point

        forms: dict[str, dict[str, float]] = {}
        for key, value in self.card.starting_point.items():
            form, _, rest = key.removeprefix("starting_point/").partition("/")
            forms.setdefault(form, {})[rest] = value
        for form, values in sorted(forms.items()):
            if form == "full" and len(forms) > 1:
                if PRIMARY_METRIC in values and PRIMARY_METRIC in metrics:
                    logger.info(
                        "the exported embedder vs the untrained full-width features: %s %.4f vs %.4f (%+.4f)",
                        PRIMARY_METRIC,
                        metrics[PRIMARY_METRIC],
                        values[PRIMARY_METRIC],
                        metrics[PRIMARY_METRIC] - values[PRIMARY_METRIC],
                    )
                continue
            compare_to_starting_point(
                metrics,
                values,
                PRIMARY_METRIC,
                what=f"the exported embedder (vs the starting point's {form})",
            )

    def run(self) -> dict[str, float]:
        """Run every step; returns the test metrics (on the main process; ``{}`` on the others)."""
        from transformers import set_seed

        set_seed(self.args.seed)
        self.benchmark = self.load_data()
        self.build()
        self.train()
        embedder = self.trainer.accelerator.unwrap_model(self.trainer.model).export_embedder()
        metrics: dict[str, float] = {}
        if self.trainer.accelerator.is_main_process:
            metrics = self.evaluate(embedder)
            self.export(embedder, metrics)
            self.compare_with_starting_point(metrics)
            logger.info("test %s = %.4f", PRIMARY_METRIC, metrics.get(PRIMARY_METRIC, float("nan")))
        self.trainer.accelerator.wait_for_everyone()
        return metrics

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> dict[str, float]:
        """Parse the command line (``--config`` YAML plus ``--key value``) and run the recipe.

        Args:
            argv: command-line arguments; defaults to ``sys.argv[1:]``.
        """
        from hf_distill.registry import get_method

        training_arguments_class = get_method(cls.method).training_arguments_class
        recipe, args = parse_recipe_args((cls.arguments_class, training_arguments_class), argv)
        setup_logging(logging.INFO if args.should_log else logging.WARNING)
        return cls(recipe, args).run()


__all__ = [
    "PRIMARY_METRIC",
    "Recipe",
    "RecipeArguments",
    "load_yaml_config",
    "parse_recipe_args",
    "setup_logging",
]
