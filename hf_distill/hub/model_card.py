"""Model cards for exported embedders: Hub metadata, retrieval results, training details, plots, citation.

The pieces a card is rendered from: the methods' titles and citations, metric parsing, the model-index, the
plots and the usage snippet. What a card says is an :class:`~hf_distill.hub.card_data.EmbedderCardData`
(filled during training by ``ModelCardCallback``); its text comes from the Jinja template shipped inside the
package, ``hf_distill/hub/templates/embedder_card.md.j2``; the YAML header is a
``huggingface_hub.ModelCardData`` with a model-index built from the evaluator's metrics
(``"{protocol}/{domain}/{metric}"`` keys, optionally prefixed, e.g. ``eval_merged/cars/R@1``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard

from hf_distill.registry import MethodCard, get_method, registered_methods

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "embedder_card.md.j2"
TRAINING_CURVES_PNG = "training_curves.png"
PER_DOMAIN_PNG = "per_domain_results.png"
RETRIEVAL_GRID_PNG = "retrieval_examples.png"
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

# Arguments that name places, runs or process details rather than how the model was trained.
BOOKKEEPING_ARGUMENTS = frozenset(
    {
        "output_dir",
        "logging_dir",
        "run_name",
        "resume_from_checkpoint",
        "hub_model_id",
        "disable_tqdm",
        "ddp_find_unused_parameters",
    }
)


# A pretrained backbone used as it is: not a registered training method, but it gets a card too.
BASELINE_CARD = MethodCard(
    title="Off-the-shelf baseline (no training)",
    summary="An off-the-shelf pretrained backbone used as is, as a reference point for the distilled models.",
    citation=None,
)


def method_card(method: str) -> MethodCard:
    """The card information of a registered method (``hf_distill.registry``), or of ``"baseline"``.

    Args:
        method: a registered method name or ``"baseline"``.
    """
    if method == "baseline":
        return BASELINE_CARD
    if method not in registered_methods():
        raise ValueError(
            f"method={method!r} is unknown; use one of {sorted([*registered_methods(), 'baseline'])}"
        )
    return get_method(method).card


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


def _plain(value: Any) -> Any:
    """Enums as their value (also inside lists); everything else unchanged."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value.value if isinstance(value, Enum) else value


def _same_as_default(value: Any, default: Any) -> bool:
    """Whether a field holds its default, also after ``__post_init__`` filled an empty default in (``None`` →
    ``False``, ``"none"`` → ``[]``, ``None`` → a default configuration object)."""
    value, default = _plain(value), _plain(default)
    if value == default:
        return True
    if default is None or default in ("", "none"):
        if value is None or value is False or value in ("", "none"):
            return True
        if isinstance(value, list | dict) and not value:
            return True
        return is_dataclass(value) and value == type(value)()
    return False


def non_default_arguments(args: Any) -> dict[str, Any]:
    """The fields of a ``TrainingArguments`` (or any dataclass) whose value differs from the field's default.

    The defaults are read from the dataclass fields, not from a fresh instance: building ``TrainingArguments``
    resets accelerate's state, which a running ``Trainer`` depends on. Values derived by ``__post_init__`` from
    an unset field (e.g. UDON's ``backbone_learning_rate``) count as set: they are what the run used.
    Bookkeeping fields (paths, run name, process details) and anything named like a secret (token, password,
    ...) are left out.

    Args:
        args: the training arguments of the run.
    """
    values = {}
    for f in fields(args):
        if not f.init or f.name in BOOKKEEPING_ARGUMENTS or SECRET_KEY.search(f.name):
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        value = getattr(args, f.name)
        if default is MISSING or not _same_as_default(value, default):
            values[f.name] = _plain(value)
    return values


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, shell-quoted, with the value of any secret-like option hidden.

    Args:
        argv: the arguments; ``sys.argv`` when None (the interpreter is written as ``python``).
    """
    argv = list(sys.argv if argv is None else argv)
    words = ["python", *argv] if argv and argv[0].endswith(".py") else argv
    shown, hide_next = [], False
    for word in words:
        name, has_value, _ = word.partition("=")
        if hide_next:
            shown.append("***")
            hide_next = False
        elif name.startswith("-") and SECRET_KEY.search(name):
            shown.append(f"{name}=***" if has_value else word)
            hide_next = not has_value
        else:
            shown.append(word)
    return shlex.join(shown)


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


def _plot_per_domain(
    grouped: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: Path,
    starting_rows: Sequence[tuple[str, Mapping[str, Mapping[str, Mapping[str, float]]]]] = (),
) -> bool:
    """Bars of R@1 and mP@5 per domain (one panel per protocol and metric): the starting point's forms (full
    width, same-width PCA) beside the trained model's, so the plot shows where training helped; False if there
    are no metrics.

    Args:
        grouped: the trained model's metrics, ``protocol -> domain -> metric -> value``.
        path: the PNG to write.
        starting_rows: ``(label, grouped metrics)`` of each starting-point form.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in ("merged", "separate") if grouped.get(p)]
    if not protocols:
        return False
    models = [*((f"start: {label}", rows) for label, rows in starting_rows if rows), ("this model", grouped)]
    metrics = [m for m in ("R@1", "mP@5") if any(m in v for p in protocols for v in grouped[p].values())]
    figure, axes = plt.subplots(
        len(metrics), len(protocols), figsize=(6 * len(protocols), 3.6 * len(metrics)), squeeze=False
    )
    # Okabe-Ito: starting points in orange and purple tones, this model in blue.
    colors = ["#e69f00", "#cc79a7", "#f0e442"][: len(models) - 1] + ["#0072b2"]
    for row, metric in enumerate(metrics):
        for column, protocol in enumerate(protocols):
            axis = axes[row][column]
            domains = list(grouped[protocol])
            width = 0.8 / len(models)
            for number, (label, values) in enumerate(models):
                heights = [values.get(protocol, {}).get(d, {}).get(metric, 0.0) for d in domains]
                positions = [i + (number - (len(models) - 1) / 2) * width for i in range(len(domains))]
                axis.bar(positions, heights, width=width, label=label, color=colors[number])
            axis.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
            axis.set_ylim(0, 1)
            axis.set_title(f"{metric}, {protocol} protocol")
            axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
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
    plots_dir: str | os.PathLike | None = None,
    template_path: str | os.PathLike | None = None,
    **card_fields: Any,
) -> ModelCard:
    """Build the model card of an exported embedder in one call:
    ``EmbedderCardData(**card_fields).to_model_card(model, plots_dir, template_path)``.

    Args:
        model: the ``UniversalEmbedderModel`` (or its config) the card describes.
        plots_dir: where to save the PNG plots (the card links them by file name); no plots when None.
        template_path: Jinja template; defaults to the one shipped in ``hf_distill/hub/templates``.
        **card_fields: fields of :class:`~hf_distill.hub.card_data.EmbedderCardData` (``method``, ``repo_id``,
            ``metrics``, ``starting_point``, ``teachers``, ``domains``, ``hyperparameters``, ``log_history``, ...).

    Returns:
        a ``huggingface_hub.ModelCard``; ``card.save(path)`` writes it.
    """
    # card_data imports this module's helpers, so it is imported here rather than at the top.
    from hf_distill.hub.card_data import EmbedderCardData

    return EmbedderCardData(**card_fields).to_model_card(
        model, plots_dir=plots_dir, template_path=template_path
    )


def extract_usage_snippet(card: ModelCard | str) -> str:
    """The first ``python`` code block of a card (what the usage test executes)."""
    match = re.search(r"```python\n(.*?)```", str(card), flags=re.DOTALL)
    if match is None:
        raise ValueError("the card has no ```python code block")
    return match.group(1)


__all__ = [
    "BASELINE_CARD",
    "method_card",
    "build_model_card",
    "command_line",
    "extract_usage_snippet",
    "hyperparameters_from_training_args",
    "non_default_arguments",
    "parse_retrieval_metrics",
    "usage_snippet",
]
