"""Model cards for exported embedders: Hub metadata, retrieval results, training details, plots, citation.

The card text comes from the Jinja template ``model_cards/embedder_card.md.j2``; the YAML header is a
``huggingface_hub.ModelCardData`` with a model-index built from the evaluator's metrics
(``"{protocol}/{domain}/{metric}"`` keys, optionally prefixed, e.g. ``eval_merged/cars/R@1``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_cards" / "embedder_card.md.j2"
TRAINING_CURVES_PNG = "training_curves.png"
PER_DOMAIN_PNG = "per_domain_results.png"
METRIC_KEY = re.compile(
    r"(?:^|[_/])(?P<protocol>merged|separate)/(?P<domain>[^/]+)/(?P<metric>R@1|mP@5|mAP@5)$"
)
METRIC_TYPES = {"R@1": "recall_at_1", "mP@5": "mean_precision_at_5", "mAP@5": "mean_average_precision_at_5"}
# Keys of training arguments that are bookkeeping or secrets, never shown on a card.
SECRET_KEY = re.compile(r"token|secret|password|api_key", re.IGNORECASE)
TRAINING_ARGUMENT_KEYS = (
    "learning_rate",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "seed",
    "bf16",
    "fp16",
)


@dataclass(frozen=True)
class MethodInfo:
    """How a card names, describes and cites a training method."""

    title: str
    summary: str
    citation: str | None


METHODS: dict[str, MethodInfo] = {
    "udon": MethodInfo(
        title="UDON — Universal Dynamic Online distillatioN (Ypsilantis et al., NeurIPS 2024)",
        summary=(
            "Trained with UDON: one shared backbone, per-domain teacher heads trained online, and a universal "
            "student head distilled from them (logit and relational distillation), with dynamic domain sampling."
        ),
        citation="""@inproceedings{ypsilantis2024udon,
  title     = {{UDON}: Universal Dynamic Online distillatioN for generic image representations},
  author    = {Ypsilantis, Nikolaos-Antonios and Chen, Kaifeng and Araujo, Andr{\\'e} and Chum, Ond{\\v{r}}ej},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024}
}""",
    ),
    "unic": MethodInfo(
        title="UNIC — Universal Classification models via multi-teacher distillation (Sariyildiz et al., ECCV 2024)",
        summary=(
            "Trained with UNIC: a student distilled from several frozen teachers through a ladder of projectors, "
            "with feature standardisation and teacher dropping."
        ),
        citation="""@inproceedings{sariyildiz2024unic,
  title     = {{UNIC}: Universal Classification Models via Multi-teacher Distillation},
  author    = {Sariyildiz, Mert Bulent and Weinzaepfel, Philippe and Lucas, Thomas and Larlus, Diane and Kalantidis, Yannis},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}""",
    ),
    "mlfd": MethodInfo(
        title=(
            "MLFD — Multi-Level Feature Distillation of joint teachers trained on distinct image datasets "
            "(Iordache et al., WACV 2025)"
        ),
        summary=(
            "Trained with MLFD: dataset-specific teachers are fused into a joint teacher on cached features, "
            "whose multi-level fused maps and logits are distilled into the student."
        ),
        citation="""@inproceedings{iordache2025mlfd,
  title     = {Multi-Level Feature Distillation of Joint Teachers Trained on Distinct Image Datasets},
  author    = {Iordache, Adrian and Alexe, Bogdan and Ionescu, Radu Tudor},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2025}
}""",
    ),
    "baseline": MethodInfo(
        title="Off-the-shelf baseline (no training)",
        summary="An off-the-shelf pretrained backbone used as is, as a reference point for the distilled models.",
        citation=None,
    ),
}


def parse_retrieval_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Group evaluator metrics by protocol, domain and metric name.

    Args:
        metrics: keys ``"{protocol}/{domain}/{metric}"`` with an optional prefix (``eval_``, ``test_``);
            other keys are ignored.

    Returns:
        ``{protocol: {domain: {metric: value}}}`` with ``"mean"`` last among the domains.
    """
    grouped: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        match = METRIC_KEY.search(key)
        if match is None or not isinstance(value, int | float):
            continue
        protocol, domain, metric = match.group("protocol", "domain", "metric")
        grouped.setdefault(protocol, {}).setdefault(domain, {})[metric] = float(value)
    for domains in grouped.values():
        if "mean" in domains:
            domains["mean"] = domains.pop("mean")
    return grouped


def hyperparameters_from_training_args(args: Any) -> dict[str, Any]:
    """The card-worthy fields of ``transformers.TrainingArguments`` (never its tokens)."""
    values = {key: getattr(args, key) for key in TRAINING_ARGUMENT_KEYS if hasattr(args, key)}
    if values.get("max_steps", -1) is not None and values.get("max_steps", -1) <= 0:
        values.pop("max_steps", None)
    return {key: (value.value if hasattr(value, "value") else value) for key, value in values.items()}


def _clean_hyperparameters(hyperparameters: Mapping[str, Any] | Any | None) -> dict[str, Any]:
    if hyperparameters is None:
        return {}
    if not isinstance(hyperparameters, Mapping):
        hyperparameters = hyperparameters_from_training_args(hyperparameters)
    return {str(k): v for k, v in hyperparameters.items() if not SECRET_KEY.search(str(k))}


def _eval_results(
    grouped: Mapping[str, Mapping[str, Mapping[str, float]]],
    benchmark_name: str,
    benchmark_type: str,
    split: str,
) -> list[EvalResult]:
    """Model-index entries: R@1 and mP@5 per domain (and mean) of the merged protocol, else the separate one."""
    protocol = "merged" if grouped.get("merged") else "separate"
    index_name = "merged index" if protocol == "merged" else "per-domain index"
    results = []
    for domain, values in grouped.get(protocol, {}).items():
        for metric, value in values.items():
            if metric == "mAP@5":
                continue
            results.append(
                EvalResult(
                    task_type="image-feature-extraction",
                    task_name=f"Image retrieval ({index_name})",
                    dataset_type=benchmark_type,
                    dataset_name=f"{benchmark_name} ({domain})",
                    dataset_config=domain,
                    dataset_split=split,
                    metric_type=METRIC_TYPES[metric],
                    metric_name=f"{metric} ({protocol})",
                    metric_value=round(value, 4),
                )
            )
    return results


def _plot_training_curves(log_history: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Plot every logged loss against the step, and evaluation R@1 / mP@5 when logged; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses: dict[str, list[tuple[float, float]]] = {}
    evals: dict[str, list[tuple[float, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                continue
            if "loss" in key and not key.startswith("train_"):
                losses.setdefault(key, []).append((step, value))
            elif METRIC_KEY.search(key) and ("/mean/" in key):
                evals.setdefault(key, []).append((step, value))
    if not losses and not evals:
        return False
    panels = [panel for panel in (losses, evals) if panel]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, panel, ylabel in zip(axes[0], panels, ["loss" if losses else "metric", "metric"]):
        for key, points in sorted(panel.items()):
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 20 else None, label=key)
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _plot_per_domain(grouped: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> bool:
    """Bar chart of R@1 and mP@5 per domain for each protocol; False if there are no metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in ("merged", "separate") if grouped.get(p)]
    if not protocols:
        return False
    figure, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4), squeeze=False)
    for axis, protocol in zip(axes[0], protocols):
        domains = list(grouped[protocol])
        metrics = [m for m in ("R@1", "mP@5") if any(m in grouped[protocol][d] for d in domains)]
        width = 0.8 / max(len(metrics), 1)
        for index, metric in enumerate(metrics):
            values = [grouped[protocol][d].get(metric, 0.0) for d in domains]
            positions = [i + (index - (len(metrics) - 1) / 2) * width for i in range(len(domains))]
            axis.bar(positions, values, width=width, label=metric)
        axis.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
        axis.set_ylim(0, 1)
        axis.set_title(f"{protocol} protocol")
        axis.legend()
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def usage_snippet(repo_id: str) -> str:
    """Python code that loads the embedder from ``repo_id`` (Hub id or folder) and embeds one image."""
    return f"""import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
image = Image.new("RGB", (64, 48), color=(200, 120, 40))  # or Image.open("photo.jpg")
with torch.no_grad():
    embeddings = model(**processor(image, return_tensors="pt")).embeddings
print(embeddings.shape)  # cosine similarity = embeddings @ other_embeddings.T"""


def _assert_no_secret(text: str, where: str) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        token = os.environ.get(name)
        if token and len(token) >= 8 and token in text:
            raise ValueError(f"refusing to write {where}: it contains the value of ${name}")


def build_model_card(
    model: Any,
    *,
    method: str,
    repo_id: str | None = None,
    model_name: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    teachers: Sequence[str] = (),
    domains: Sequence[str] = (),
    datasets: Sequence[str] = (),
    hyperparameters: Mapping[str, Any] | Any | None = None,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    benchmark_name: str = "hf_distill offline benchmark",
    benchmark_type: str = "hf_distill/offline_benchmark",
    eval_split: str = "test",
    plots_dir: str | os.PathLike | None = None,
    no_training_note: str = "the backbone's pretrained weights are used as they are.",
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Build the model card of an exported embedder.

    Args:
        model: the ``UniversalEmbedderModel`` (or its config) the card describes.
        method: ``"udon"``, ``"unic"``, ``"mlfd"`` or ``"baseline"`` (title, summary and citation).
        repo_id: the Hub id (or folder) the usage snippet loads; defaults to ``model_name``.
        model_name: card title; defaults to the last part of ``repo_id``.
        metrics: ``RetrievalEvaluator`` output; per-domain R@1 / mP@5 of the merged protocol (of the
            separate one when only that was measured) go into the model-index.
        base_model: Hub id of the checkpoint the backbone started from (metadata ``base_model``).
        teachers: names of the teachers distilled from.
        domains: training domains.
        datasets: Hub dataset ids (metadata ``datasets``).
        hyperparameters: a mapping, or ``TrainingArguments`` (card-worthy fields only; never tokens).
        log_history: ``trainer.state.log_history`` for the training-curve plot.
        license: SPDX-style licence id of the weights.
        tags: extra Hub tags.
        benchmark_name / benchmark_type: how the evaluation data is named in the model-index.
        eval_split: the split the metrics were measured on.
        plots_dir: where to save the PNG plots (the card links them by file name); no plots when None.
        no_training_note: shown instead of the hyperparameter table when there are none.
        template_path: Jinja template; defaults to ``model_cards/embedder_card.md.j2``.

    Returns:
        a ``huggingface_hub.ModelCard``; ``card.save(path)`` writes it.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {sorted(METHODS)}")
    info = METHODS[method]
    config = getattr(model, "config", model)
    feature_dim = getattr(model, "feature_dim", None)
    model_name = model_name or (
        repo_id.rstrip("/").split("/")[-1] if repo_id else f"{method}-universal-embedder"
    )
    repo_id = repo_id or model_name
    grouped = parse_retrieval_metrics(metrics or {})
    hyperparameters = _clean_hyperparameters(hyperparameters)

    plots: dict[str, str] = {}
    if plots_dir is not None:
        plots_dir = Path(plots_dir)
        plots_dir.mkdir(parents=True, exist_ok=True)
        if log_history and _plot_training_curves(log_history, plots_dir / TRAINING_CURVES_PNG):
            plots["training_curves"] = TRAINING_CURVES_PNG
        if _plot_per_domain(grouped, plots_dir / PER_DOMAIN_PNG):
            plots["per_domain"] = PER_DOMAIN_PNG

    columns = [(p, m) for p in ("merged", "separate") for m in ("R@1", "mP@5") if p in grouped]
    domain_names = list(dict.fromkeys(d for p in grouped.values() for d in p if d != "mean"))
    if any("mean" in grouped[p] for p in grouped):
        domain_names.append("mean")
    rows = [
        {
            "domain": f"**{domain}**" if domain == "mean" else domain,
            "values": [
                f"{100 * grouped[p][domain][m]:.2f}" if m in grouped[p].get(domain, {}) else "–"
                for p, m in columns
            ],
        }
        for domain in domain_names
    ]

    card_data = ModelCardData(
        license=license,
        library_name="hf_distill",
        pipeline_tag="image-feature-extraction",
        base_model=base_model,
        datasets=list(datasets) or None,
        tags=["image-feature-extraction", "image-retrieval", "universal-embedding", method, *tags],
        model_name=model_name,
        eval_results=_eval_results(grouped, benchmark_name, benchmark_type, eval_split) or None,
    )
    output_dim = config.embed_dim or feature_dim
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id,
        method_title=info.title,
        method_summary=info.summary,
        citation=info.citation,
        embed_dim_text=f"{output_dim}-d" if output_dim else "fixed-size",
        output_dim=output_dim if output_dim else "feature_dim",
        feature_dim=feature_dim if feature_dim else "the backbone's",
        normalize=config.normalize,
        backbone=config.backbone,
        backbone_source=config.backbone_source,
        image_size=config.image_size,
        resize_size=config.resize_size,
        image_mean=[round(v, 4) for v in config.image_mean],
        image_std=[round(v, 4) for v in config.image_std],
        teachers=list(teachers),
        domains=list(domains),
        usage_snippet=usage_snippet(repo_id),
        results_columns=[f"{m} ({p})" for p, m in columns],
        results_rows=rows,
        hyperparameters=hyperparameters,
        no_training_note=no_training_note,
        plots=plots,
        eval_split=eval_split,
        benchmark_name=benchmark_name,
    )
    _assert_no_secret(str(card), "the model card")
    return card


def extract_usage_snippet(card: ModelCard | str) -> str:
    """The first ``python`` code block of a card (what the usage test executes)."""
    match = re.search(r"```python\n(.*?)```", str(card), flags=re.DOTALL)
    if match is None:
        raise ValueError("the card has no ```python code block")
    return match.group(1)


__all__ = [
    "METHODS",
    "build_model_card",
    "extract_usage_snippet",
    "hyperparameters_from_training_args",
    "parse_retrieval_metrics",
    "usage_snippet",
]
