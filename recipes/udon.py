"""Train a universal embedder with UDON (or one of its baselines), evaluate, export and optionally push.

    accelerate launch recipes/udon.py --config recipes/configs/udon_offline.yaml [--key value ...]

Any field of ``UdonRecipeArguments`` or ``UdonTrainingArguments`` can be set in the YAML file or overridden
on the command line. Relaunching the same command after an interruption resumes from the last checkpoint in
``output_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from datasets import concatenate_datasets
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import finish_run, parse_recipe_args, setup_logging  # noqa: E402

from hf_distill.data import ImageTransform, load_benchmark, with_pixel_values  # noqa: E402
from hf_distill.evaluation import RetrievalEvaluator  # noqa: E402
from hf_distill.hub import hyperparameters_from_training_args  # noqa: E402
from hf_distill.models.udon import UdonConfig, UdonModel, variant_settings  # noqa: E402
from hf_distill.trainers.arguments import UdonTrainingArguments  # noqa: E402
from hf_distill.trainers.base import last_complete_checkpoint  # noqa: E402
from hf_distill.trainers.udon import UdonTrainer  # noqa: E402

logger = logging.getLogger("recipes.udon")


@dataclass
class UdonRecipeArguments:
    """What to train on and which model to build.

    Args:
        benchmark: benchmark directory (default: ``$HF_DISTILL_BENCHMARK`` or ``data/offline_benchmark``).
        uned_info_root / uned_image_root: train on UnED instead (``info_files/<domain>/<split>.json`` and the
            image folder they point into); unreadable images are skipped and counted in ``run_summary.json``.
        domains: train and evaluate on these domains only.
        variant: ``udon`` (default), ``udon_no_dynamic``, ``udon_no_distillation`` or a UnED baseline
            (``uscrr``, ``ujcrr``, ``uscds``, ``ujcds``).
        backbone / backbone_source / backbone_kwargs / pooling: the backbone (see ``UdonConfig``).
        offline_weights: offline pretrained weights (``efficientnet_lite0`` …, ``hf_distill.teachers.offline``);
            sets the backbone architecture, its weights and its normalisation.
        hub_pretrained: start a timm backbone from its pretrained weights on the Hub (needs a network); they are
            saved once as ``<output_dir>/pretrained_backbone.safetensors``.
        pretrained_file: local safetensors file with backbone weights.
        image_size / resize_size / image_mean / image_std: preprocessing. Training resizes to ``resize_size``
            (default ``image_size × 256 / 224``) and takes a random ``image_size`` crop.
        eval_resize_size: evaluation (and the exported processor) resizes the shorter side to this, then centre
            crops ``image_size``. ``None`` (default, the authors' code): ``image_size`` itself; set it to
            ``resize_size`` for the ImageNet habit (e.g. 256 then 224), which is not the authors'.
        embed_dim / teacher_dim / temperature / classifier_margin / margin_type /
            distillation_reaches_backbone: see ``UdonConfig``.
        eval_batch_size: images per forward pass in retrieval evaluation.
        evaluate_teachers: also evaluate each domain's teacher head on its own domain (separate/oracle).
        export_dir: where the embedder is exported (default ``<output_dir>/embedder``).
        base_model: Hub id of the backbone's initial checkpoint, for the model card.
        max_train_per_domain: keep at most this many training images per domain (quick runs).
        write_domain_trace: write ``domain_trace_rank<r>.json``, the domain of every batch each process
            trained on in this launch (to check that processes agree).
    """

    benchmark: str | None = None
    uned_info_root: str | None = None
    uned_image_root: str | None = None
    domains: list[str] | None = None
    variant: str = "udon"
    backbone: str = "vit_tiny_patch16_224"
    backbone_source: str = "timm"
    backbone_kwargs: dict | None = field(default=None)
    pooling: str = "default"
    offline_weights: str | None = None
    hub_pretrained: bool = False
    pretrained_file: str | None = None
    image_size: int = 32
    resize_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    eval_resize_size: int | None = None
    embed_dim: int = 64
    teacher_dim: int = 256
    temperature: float = 0.1
    classifier_margin: float = 0.0
    margin_type: str = "none"
    distillation_reaches_backbone: bool = False
    eval_batch_size: int = 256
    evaluate_teachers: bool = False
    export_dir: str | None = None
    base_model: str | None = None
    max_train_per_domain: int | None = None
    write_domain_trace: bool = False


def fetch_hub_backbone(name: str, kwargs: dict | None, output_dir: str) -> str:
    """Download a timm backbone's pretrained weights once (main process first) and save them as safetensors.

    Args:
        name: timm model name with its pretrained tag (e.g. ``vit_base_patch16_clip_224.openai``).
        kwargs: extra ``timm.create_model`` arguments.
        output_dir: where ``pretrained_backbone.safetensors`` goes.
    """
    import timm
    from accelerate import PartialState
    from safetensors.torch import save_file

    path = os.path.join(output_dir, "pretrained_backbone.safetensors")
    with PartialState().main_process_first():
        if not os.path.isfile(path):
            model = timm.create_model(name, pretrained=True, num_classes=0, **(kwargs or {}))
            os.makedirs(output_dir, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def build_model(recipe: UdonRecipeArguments, benchmark, output_dir: str = ".") -> UdonModel:
    """The ``UdonModel`` described by the recipe arguments, with the benchmark's domains and classes.

    Args:
        recipe: recipe arguments.
        benchmark: the loaded ``Benchmark``.
        output_dir: where Hub-pretrained backbone weights are cached.
    """
    switches, _ = variant_settings(recipe.variant)
    backbone, pretrained_file = recipe.backbone, recipe.pretrained_file
    mean, std = recipe.image_mean, recipe.image_std
    if recipe.offline_weights is not None:
        from hf_distill.teachers.offline import resolve_offline_weights

        weights = resolve_offline_weights(recipe.offline_weights)
        backbone, pretrained_file = weights.architecture, str(weights.path)
        mean, std = mean or list(weights.mean), std or list(weights.std)
    if recipe.hub_pretrained:
        pretrained_file = fetch_hub_backbone(backbone, recipe.backbone_kwargs, output_dir)
    domains = list(benchmark.domains)
    config = UdonConfig(
        backbone=backbone,
        backbone_source=recipe.backbone_source,
        backbone_kwargs=recipe.backbone_kwargs,
        pretrained_file=pretrained_file,
        pooling=recipe.pooling,
        domains=domains,
        num_classes=[benchmark.num_classes[name] for name in domains],
        embed_dim=recipe.embed_dim,
        teacher_dim=recipe.teacher_dim,
        temperature=recipe.temperature,
        classifier_margin=recipe.classifier_margin,
        margin_type=recipe.margin_type,
        distillation_reaches_backbone=recipe.distillation_reaches_backbone,
        image_size=recipe.image_size,
        resize_size=recipe.eval_resize_size,
        image_mean=mean,
        image_std=std,
        **switches,
    )
    return UdonModel(config)


def build_train_dataset(
    benchmark, model: UdonModel, max_per_domain: int | None, seed: int, resize_size: int | None = None
):
    """All domains' ``train`` splits concatenated, with the training augmentation applied on the fly.

    Args:
        benchmark: the loaded ``Benchmark``.
        model: supplies the domain order and preprocessing.
        max_per_domain: optional cap on training images per domain (a seeded random subset).
        seed: seed of that subset.
        resize_size: the training resize before the random crop (default ``image_size × 256 / 224``).
    """
    parts = []
    for name in model.config.domains:
        split = benchmark.domains[name]["train"]
        if max_per_domain is not None and len(split) > max_per_domain:
            split = split.shuffle(seed=seed).select(range(max_per_domain))
        parts.append(split)
    config = model.config
    transform = ImageTransform(
        config.image_size, config.image_mean, config.image_std, train=True, resize_size=resize_size
    )
    domain_to_id = {name: i for i, name in enumerate(config.domains)}
    return with_pixel_values(concatenate_datasets(parts), transform, domain_to_id)


def load_domains(recipe: UdonRecipeArguments):
    """The offline benchmark, or UnED when ``uned_info_root`` is given."""
    if recipe.uned_info_root is None:
        return load_benchmark(recipe.benchmark, recipe.domains)
    if recipe.uned_image_root is None:
        raise ValueError("--uned_info_root needs --uned_image_root (the folder the info files' paths are in)")
    from hf_distill.data.domains import load_uned_domains

    return load_uned_domains(
        recipe.uned_info_root, recipe.uned_image_root, recipe.domains, on_bad_image="skip"
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the recipe; returns the final test metrics of the exported embedder."""
    recipe, args = parse_recipe_args((UdonRecipeArguments, UdonTrainingArguments), argv)
    setup_logging(logging.INFO if args.should_log else logging.WARNING)
    _, default_strategy = variant_settings(recipe.variant)
    if args.sampling_strategy is None:
        args.sampling_strategy = default_strategy
    # The Trainer would push whole training checkpoints; only the exported embedder is published, at the end.
    push, args.push_to_hub = args.push_to_hub, False
    if push and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>")
    set_seed(args.seed)

    benchmark = load_domains(recipe)
    model = build_model(recipe, benchmark, args.output_dir)
    train_dataset = build_train_dataset(
        benchmark, model, recipe.max_train_per_domain, args.seed, recipe.resize_size
    )
    validation = RetrievalEvaluator(
        benchmark, split="val", protocols=("merged",), batch_size=recipe.eval_batch_size
    )
    trainer = UdonTrainer(model=model, args=args, train_dataset=train_dataset, evaluator=validation)
    decode_report = getattr(benchmark, "decode_report", None)
    if decode_report is not None:
        trainer.add_to_run_summary("decode_skips", decode_report.to_dict())

    checkpoint = args.resume_from_checkpoint or last_complete_checkpoint(args.output_dir)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    if recipe.write_domain_trace:
        trace_path = os.path.join(args.output_dir, f"domain_trace_rank{args.process_index}.json")
        with open(trace_path, "w") as handle:
            json.dump(trainer.domain_trace, handle)

    # With load_best_model_at_end the model now holds the best validation checkpoint.
    embedder = trainer.accelerator.unwrap_model(trainer.model).export_embedder()
    test = RetrievalEvaluator(benchmark, split="test", batch_size=recipe.eval_batch_size)
    metrics: dict[str, float] = {}
    if trainer.accelerator.is_main_process:
        metrics = test(embedder, output_path=args.output_dir)
        if recipe.evaluate_teachers and model.config.use_teacher:
            metrics.update(
                evaluate_teachers(trainer.accelerator.unwrap_model(trainer.model), benchmark, recipe)
            )
        export(trainer, embedder, recipe, args, metrics, push)
        logger.info("test %s = %.4f", test.primary_metric, metrics[test.primary_metric])
    trainer.accelerator.wait_for_everyone()
    return metrics


def evaluate_teachers(model: UdonModel, benchmark, recipe: UdonRecipeArguments) -> dict[str, float]:
    """Each domain's teacher head on its own domain (the separate/oracle protocol), keyed ``oracle/...``."""
    results: dict[str, float] = {}
    for name in model.config.domains:
        evaluator = RetrievalEvaluator(
            benchmark,
            split="test",
            protocols=("separate",),
            domains=[name],
            batch_size=recipe.eval_batch_size,
        )
        for key, value in evaluator(model.export_teacher_embedder(name)).items():
            if not key.startswith("separate/mean/"):
                results["oracle/" + key[len("separate/") :]] = value
    return results


def export(
    trainer: UdonTrainer, embedder, recipe: UdonRecipeArguments, args, metrics: dict[str, float], push: bool
) -> None:
    """Save the embedder with processor and card, write the metrics and the run summary, push if asked."""
    export_dir = recipe.export_dir or os.path.join(args.output_dir, "embedder")
    is_udon = recipe.variant.startswith("udon")
    domains = list(trainer.domain_names)
    card = dict(
        method="udon" if is_udon else "baseline",
        repo_id=args.hub_model_id,
        model_name=f"hf-distill-{recipe.variant.replace('_', '-')}",
        metrics=metrics,
        base_model=recipe.base_model,
        teachers=[f"online teacher head ({name})" for name in domains] if is_udon else [],
        domains=domains,
        hyperparameters={"variant": recipe.variant, **hyperparameters_from_training_args(args)},
        log_history=trainer.state.log_history,
    )
    finish_run(trainer, embedder, export_dir, card, metrics, recipe, push)


if __name__ == "__main__":
    main()
