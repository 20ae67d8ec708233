"""What one run of the UDON page (``udon_results.py``) does: regime (i) on cached frozen EfficientNet-Lite0
features (the features, their retrieval metrics, the trainer run with the plateau rule) and regime (ii) through
``recipes/udon.py``."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path

import sweep
import torch

ROOT = Path(__file__).resolve().parents[1]
FEATURE_DIM, PRIMARY = 1280, "merged/mean/R@1"


@functools.lru_cache(maxsize=1)
def features(benchmark_path: str, image_size: int) -> dict:
    """``{domain: {split: (features, labels)}}`` of the cached Lite0 features, and the class counts."""
    from hf_distill.data import load_benchmark
    from hf_distill.data.frozen_features import benchmark_features

    benchmark = load_benchmark(benchmark_path)
    cached = benchmark_features(benchmark, "efficientnet_lite0", image_size, splits=("train", "val", "test"))
    data = {
        domain: {
            split: (cached[domain][split], torch.tensor(splits[split].select_columns(["label"])[:]["label"]))
            for split in ("train", "val", "test")
        }
        for domain, splits in benchmark.domains.items()
    }
    return {"data": data, "num_classes": dict(benchmark.num_classes)}


def retrieval(embed, data: dict, domains: list[str], split: str) -> dict[str, float]:
    """UnED metrics (query = index, self-match removed) of ``embed(features)`` on ``split`` of ``domains``."""
    from hf_distill.evaluation.metrics import RetrievalDomain, evaluate_retrieval

    with torch.no_grad():
        return evaluate_retrieval(
            {d: RetrievalDomain(embed(data[d][split][0]), data[d][split][1]) for d in domains}
        )


def embedder_fn(model, truncate_dim: int | None = None):
    """The exported embedder over cached features, its output cut to a trained width (``truncate_dim``)."""
    embedder = model.export_embedder().eval()
    return lambda x: torch.cat([embedder.embed_pixel_values(c, truncate_dim) for c in x.split(4096)])


class FeatureEvaluator:
    """The trainer's validation evaluator: merged retrieval on the cached val features of ``domains``."""

    primary_metric = PRIMARY

    def __init__(self, data: dict, domains: list[str]) -> None:
        self.data, self.domains = data, domains

    def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
        return retrieval(embedder_fn(model), self.data, self.domains, "val")


def fit(settings: dict, seed: int, domains: list[str], out: Path, specialist: bool = False):
    """Train one model on cached features with the plateau rule; returns (model, trainer)."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    from hf_distill.losses.udon import UdonLoss, UdonSpecialistTeacher
    from hf_distill.models.udon import UdonConfig, UdonModel, variant_settings
    from hf_distill.trainers.arguments import UdonTrainingArguments
    from hf_distill.trainers.udon import UdonTrainer

    loaded = features(settings["benchmark"], settings["image_size"])
    data, variant = loaded["data"], settings["variant"]
    naive = variant == "naive"
    chosen = variant_settings("uscrr" if naive or specialist else variant)
    model_switches, loss_kwargs, strategy = dict(chosen.model), dict(chosen.loss), chosen.strategy
    loss_kwargs["distillation_reaches_backbone"] = settings.get("distillation_reaches_backbone", False)
    if naive and not specialist:  # its specialists, each trained to its own plateau, then distilled
        teachers = {
            d: UdonSpecialistTeacher(fit(settings, seed, [d], out / f"specialist_{d}", True)[0])
            for d in domains
        }
        loss_kwargs = {"external_teachers": teachers}
    widths = {key: settings[key] for key in ("embed_dim", "matryoshka_dims") if key in settings}
    torch.manual_seed(seed)  # model initialisation draws from the global generator
    model = UdonModel(UdonConfig(
        backbone="features", backbone_source="features", domains=domains,
        backbone_kwargs={"dim": FEATURE_DIM, "layers": settings["adapter_layers"], "hidden": settings["adapter_hidden"]},
        num_classes=[loaded["num_classes"][d] for d in domains], image_size=settings["image_size"],
        **model_switches, **({"embed_dim": 256} if specialist else widths),
    ))  # fmt: skip
    rows = np.concatenate([data[d]["train"][0].numpy() for d in domains]).astype(np.float32)
    table = pa.table({
        "pixel_values": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1]),
        "labels": np.concatenate([data[d]["train"][1].numpy() for d in domains]),
        "domain_ids": np.concatenate([np.full(len(data[d]["train"][1]), i) for i, d in enumerate(domains)]),
    })  # fmt: skip
    every = settings["eval_steps"]
    args = UdonTrainingArguments(
        output_dir=str(out), max_steps=settings["max_steps"], per_device_train_batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"], backbone_lr_ratio=settings["backbone_lr_ratio"],
        backbone_frozen_epochs=settings["frozen_epochs"], weight_decay=1e-6, lr_scheduler_type="constant",
        sampling_strategy=strategy, sampling_update_every=settings["update_every"],
        sampling_loss_window=settings.get("sampling_loss_window", "update"), logging_steps=settings["logging_steps"],
        eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model=PRIMARY, stop_on_plateau=True,
        plateau_fraction=settings["plateau_fraction"], plateau_min_gain=settings["plateau_min_gain"], plateau_min_steps=settings["plateau_min_steps"],
        report_to="none", remove_unused_columns=False, disable_tqdm=True, seed=seed,
        use_cpu=not torch.cuda.is_available(), plot_sampling_curves=False,
    )  # fmt: skip
    trainer = UdonTrainer(
        model=model, args=args, train_dataset=Dataset(table).with_format("numpy"),
        loss=UdonLoss(**loss_kwargs), evaluator=FeatureEvaluator(data, domains),
    )  # fmt: skip
    trainer.train()
    return model, trainer


def recipe_run(name: str, settings: dict, seed: int, shared: dict) -> dict:
    """Regime (ii): ``recipes/udon.py`` with the row's recipe settings (those not in ``shared``) and the plateau rule."""
    spec = importlib.util.spec_from_file_location("udon_recipe", ROOT / "recipes" / "udon.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are being defined
    spec.loader.exec_module(module)
    out = Path(settings["output_root"]) / f"{name}_seed{seed}"
    argv = ["--config", str(ROOT / "recipes/configs/udon_offline.yaml"), "--seed", str(seed), "--output_dir", str(out),
            "--benchmark", settings["benchmark"], "--max_steps", str(settings["max_steps"]), "--report_to", "none",
            "--eval_steps", str(settings["eval_steps"]), "--save_steps", str(settings["eval_steps"]),
            "--stop_on_plateau", "true", "--backbone_frozen_epochs", "0"]  # fmt: skip
    argv += [
        f"--{key}={settings[key]}" for key in ("plateau_fraction", "plateau_min_gain", "plateau_min_steps")
    ]
    argv += [f"--{key}={value}" for key, value in settings.items() if key not in shared]
    metrics = module.main(argv)
    return {**metrics, **sweep.recipe_curve(out)}


def feature_run(name: str, settings: dict, seed: int) -> dict:
    """Regime (i): a starting point (the features, or their PCA-64 head) or a trainer run on the cached features;
    test metrics (unseen classes), the validation curve and, for UDON, its sampling curves."""
    from hf_distill.evaluation.starting_point import fit_pca_head

    data = features(settings["benchmark"], settings["image_size"])["data"]
    held = settings.get("holdout")
    domains = [d for d in data if d != held]
    tested = [held] if held else domains
    if "start" in settings:
        normalize = torch.nn.functional.normalize
        if settings["start"] == "full":
            return retrieval(lambda f: normalize(f, dim=-1), data, tested, "test")
        weight, bias = fit_pca_head(normalize(torch.cat([data[d]["train"][0] for d in domains]), dim=-1), 64)
        return retrieval(
            lambda f: normalize(normalize(f, dim=-1) @ weight.T + bias, dim=-1), data, tested, "test"
        )
    out = Path(settings["output_root"]) / f"{name}_seed{seed}"
    model, trainer = fit(settings, seed, domains, out)
    from hf_distill.trainers.callbacks import sampling_curves

    record = retrieval(embedder_fn(model), data, tested, "test")
    for width in settings.get("matryoshka_dims", [])[1:]:  # the same model read at its narrower widths
        narrow = retrieval(embedder_fn(model, width), data, tested, "test")
        record.update({f"{key}@{width}d": value for key, value in narrow.items()})
    record.update(
        curve=sweep.validation_curve(trainer.state.log_history),
        selected_step=sweep.selected_step(trainer.state.best_model_checkpoint),
        steps=trainer.state.global_step,
    )
    if settings["variant"] == "udon":
        record["domain_loss"], record["sampling_p"] = sampling_curves(trainer.state.log_history)
    shutil.rmtree(out, ignore_errors=True)
    return record
