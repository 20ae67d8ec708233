"""What a model card says, gathered as training goes (the way sentence-transformers fills its card data).

:class:`EmbedderCardData` holds everything the card of an exported embedder shows: the Hub id, the method,
base model, teachers and domains, the final evaluator metrics, the starting point (the untrained backbone as
full features and as a PCA of them, measured on the same split), the validation curve, the log history, the
training arguments that differ from their defaults and the command line. A recipe creates it,
:class:`~hf_distill.trainers.callbacks.ModelCardCallback` fills it during ``trainer.train()``, the recipe adds
the test metrics and :meth:`EmbedderCardData.to_model_card` renders it with the template shipped inside the
package (``hf_distill/hub/templates/embedder_card.md.j2``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from hf_distill.hub.model_card import (
    PER_DOMAIN_PNG,
    RETRIEVAL_GRID_PNG,
    TEMPLATE_PATH,
    TRAINING_CURVES_PNG,
    _assert_no_secret,
    _clean_hyperparameters,
    _eval_results,
    _plain,
    _plot_per_domain,
    _plot_training_curves,
    method_card,
    non_default_arguments,
    parse_retrieval_metrics,
    usage_snippet,
)

STARTING_POINT_PREFIX = "starting_point/"
PCA_FORM = re.compile(r"^pca(?P<dim>\d+)$")


def _summary(grouped: Mapping[str, Mapping[str, Mapping[str, float]]], protocol: str, metric: str):
    """The domain mean of ``metric`` under ``protocol``, or the value of the only domain; None otherwise."""
    domains = grouped.get(protocol, {})
    if "mean" in domains:
        return domains["mean"].get(metric)
    return next(iter(domains.values())).get(metric) if len(domains) == 1 else None


def _form_label(form: str, feature_dim: Any) -> str:
    """How the card names a starting-point form (``full``, ``pca64``, ...)."""
    match = PCA_FORM.match(form)
    if match:
        return f"PCA-{match['dim']} of its features (fitted on train)"
    return f"full features ({feature_dim}-d)" if form == "full" else form


@dataclass
class EmbedderCardData:
    """The content of an embedder's model card; filled by the recipe and by ``ModelCardCallback``.

    Args:
        method: ``"udon"``, ``"unic"``, ``"mlfd"`` or ``"baseline"`` (title, summary and citation).
        repo_id: the Hub id (or folder) the usage snippet loads; defaults to ``model_name``.
        model_name: card title; defaults to the last part of ``repo_id``.
        base_model: Hub id of the checkpoint the backbone started from (metadata ``base_model``).
        teachers / domains: names of the teachers distilled from and of the training domains.
        datasets: Hub dataset ids (metadata ``datasets``).
        metrics: the trained model's evaluator metrics on ``eval_split`` (``"{protocol}/{domain}/{metric}"``,
            optionally prefixed); they fill the model-index.
        eval_split: the split ``metrics`` and ``starting_point`` were measured on.
        starting_point: :func:`~hf_distill.evaluation.starting_point.evaluate_starting_point` output on
            ``eval_split`` (``starting_point/<form>/<metric key>``); shown first in the results table.
        starting_point_command: the command that measured the starting point; ``command`` when None.
        validation_metrics / validation_step: the last evaluation during training and its step.
        validation_split: the split the trainer's evaluator reads (named in the card).
        untrained_metrics: the same evaluator on the untrained model at step 0 (``StartingPointCallback``).
        log_history: ``trainer.state.log_history`` (training-curve plot).
        training_arguments: training arguments that differ from their defaults (see
            :func:`~hf_distill.hub.model_card.non_default_arguments`).
        hyperparameters: method settings the recipe adds (a mapping, or ``TrainingArguments``: card-worthy
            fields only). Keys named like a secret are never shown.
        trained_steps: optimisation steps run.
        command: the command line of the run (see :func:`~hf_distill.hub.model_card.command_line`).
        license / tags: SPDX-style licence id of the weights; extra Hub tags.
        benchmark_name / benchmark_type: how the evaluation data is named in the card and the model-index.
        no_training_note: shown instead of the settings table when there are none.
        retrieval_grid: a PNG of queries and their neighbours on ``eval_split`` (``hf-distill show``), copied
            next to the card and shown beside the per-domain plot.
        width_metrics: the test metrics at each Matryoshka width of the embedder (width -> evaluator
            metrics), shown as a table of R@1 and mP@5 per width when there is more than one.
    """

    method: str
    repo_id: str | None = None
    model_name: str | None = None
    base_model: str | None = None
    teachers: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    eval_split: str = "test"
    starting_point: dict[str, float] = field(default_factory=dict)
    starting_point_command: str | None = None
    validation_metrics: dict[str, float] = field(default_factory=dict)
    validation_step: int | None = None
    validation_split: str | None = None
    untrained_metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    training_arguments: dict[str, Any] = field(default_factory=dict)
    hyperparameters: Any = field(default_factory=dict)
    trained_steps: int | None = None
    command: str | None = None
    license: str = "apache-2.0"
    tags: list[str] = field(default_factory=list)
    benchmark_name: str = "hf_distill offline benchmark"
    benchmark_type: str = "hf_distill/offline_benchmark"
    no_training_note: str = "the backbone's pretrained weights are used as they are."
    retrieval_grid: str | None = None
    width_metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method_card(self.method)  # an unknown method fails here

    # ------------------------------------------------------------------------------ filled during training

    def record_training_arguments(self, args: Any) -> None:
        """Keep the training arguments that differ from their defaults (never tokens)."""
        self.training_arguments = non_default_arguments(args)

    def record_starting_point(self, results: Mapping[str, float], command: str | None = None) -> None:
        """Keep ``evaluate_starting_point`` results (keys ``starting_point/<form>/<metric key>``).

        Args:
            results: the metrics; other keys (``step``, ...) are ignored.
            command: the command that measured them.
        """
        self.starting_point = {
            key: float(value) for key, value in results.items() if key.startswith(STARTING_POINT_PREFIX)
        }
        if command is not None:
            self.starting_point_command = command

    def record_evaluation(
        self, metrics: Mapping[str, Any], step: int | None, untrained: bool = False
    ) -> None:
        """Keep an evaluation of the model during training (``eval_`` prefixes dropped).

        Args:
            metrics: the evaluator's metrics.
            step: the global step.
            untrained: the step-0 evaluation of the untrained model.
        """
        values = {
            key.removeprefix("eval_"): float(value)
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        if untrained:
            self.untrained_metrics = values
        else:
            self.validation_metrics, self.validation_step = values, step

    # ------------------------------------------------------------------------------------------ rendering

    def _starting_rows(self, feature_dim: Any) -> list[tuple[str, dict]]:
        """``(form label, grouped metrics)`` per starting-point form, full features first."""
        forms: dict[str, dict[str, float]] = {}
        for key, value in self.starting_point.items():
            form, _, rest = key.removeprefix(STARTING_POINT_PREFIX).partition("/")
            forms.setdefault(form, {})[rest] = value
        order = sorted(forms, key=lambda form: (form != "full", form))
        return [(_form_label(form, feature_dim), parse_retrieval_metrics(forms[form])) for form in order]

    def _comparison(self, starting_rows, trained) -> str | None:
        """One sentence saying whether the trained model is above each starting point on the primary metric."""
        for protocol in ("merged", "separate"):
            final = _summary(trained, protocol, "R@1")
            starts = [
                (label, _summary(grouped, protocol, "R@1")) for label, grouped in starting_rows if grouped
            ]
            starts = [(label, value) for label, value in starts if value is not None]
            if final is None or not starts:
                continue
            parts = [
                f"{'above' if final >= value else '**below**'} the {label}: {100 * value:.2f} → "
                f"{100 * final:.2f} ({100 * (final - value):+.2f})"
                for label, value in starts
            ]
            verdict = "above" if all(final >= value for _, value in starts) else "**not above**"
            return (
                f"On {protocol} mean R@1 this model is {verdict} its starting point: "
                + "; ".join(parts)
                + "."
            )
        return None

    def _validation_text(self) -> str | None:
        for key in ("merged/mean/R@1", "separate/mean/R@1"):
            if key in self.untrained_metrics and key in self.validation_metrics:
                where = f"the `{self.validation_split}` split" if self.validation_split else "validation"
                return (
                    f"During training, on {where}: {key} {100 * self.untrained_metrics[key]:.2f} for the "
                    f"untrained model at step 0, {100 * self.validation_metrics[key]:.2f} at step "
                    f"{self.validation_step} (last evaluation)."
                )
        return None

    def to_model_card(
        self,
        model: Any,
        plots_dir: str | os.PathLike | None = None,
        template_path: str | os.PathLike | None = None,
    ) -> ModelCard:
        """Render the card.

        Args:
            model: the ``UniversalEmbedderModel`` (or its config) the card describes.
            plots_dir: where to save the PNG plots (the card links them by file name); no plots when None.
            template_path: Jinja template; defaults to the one shipped in ``hf_distill/hub/templates``.

        Returns:
            a ``huggingface_hub.ModelCard``; ``card.save(path)`` writes it.
        """
        info = method_card(self.method)
        config = getattr(model, "config", model)
        feature_dim = getattr(model, "feature_dim", None)
        repo_id, model_name = self.repo_id, self.model_name
        model_name = model_name or (
            repo_id.rstrip("/").split("/")[-1] if repo_id else f"{self.method}-universal-embedder"
        )
        repo_id = repo_id or model_name
        trained = parse_retrieval_metrics(
            {k: v for k, v in self.metrics.items() if not k.startswith(STARTING_POINT_PREFIX)}
        )
        starting_rows = self._starting_rows(feature_dim or "backbone")
        settings = {
            **_clean_hyperparameters(self.hyperparameters),
            **_clean_hyperparameters(self.training_arguments),
        }
        settings = {key: _plain(value) for key, value in settings.items()}

        plots: dict[str, str] = {}
        if plots_dir is not None:
            plots_dir = Path(plots_dir)
            plots_dir.mkdir(parents=True, exist_ok=True)
            if self.log_history and _plot_training_curves(self.log_history, plots_dir / TRAINING_CURVES_PNG):
                plots["training_curves"] = TRAINING_CURVES_PNG
            if _plot_per_domain(trained, plots_dir / PER_DOMAIN_PNG, starting_rows):
                plots["per_domain"] = PER_DOMAIN_PNG
            if self.retrieval_grid is not None:
                grid = Path(self.retrieval_grid)
                if not grid.is_file():
                    raise FileNotFoundError(f"retrieval_grid={grid} does not exist")
                if grid.resolve() != (plots_dir / RETRIEVAL_GRID_PNG).resolve():
                    shutil.copyfile(grid, plots_dir / RETRIEVAL_GRID_PNG)
                plots["retrieval_grid"] = RETRIEVAL_GRID_PNG

        output_dim = config.embed_dim or feature_dim
        everything = [trained, *(grouped for _, grouped in starting_rows)]
        protocols = [p for p in ("merged", "separate") if any(p in grouped for grouped in everything)]
        columns = [(p, m) for p in protocols for m in ("R@1", "mP@5")]
        summary_rows = [
            {
                "model": label,
                "values": [
                    f"{100 * value:.2f}" if (value := _summary(grouped, p, m)) is not None else "–"
                    for p, m in columns
                ],
            }
            for label, grouped in [
                *(
                    (f"starting point: `{config.backbone}` untrained, {label}", grouped)
                    for label, grouped in starting_rows
                ),
                (f"**this model** ({output_dim}-d)", trained),
            ]
        ]
        width_rows = [
            {
                "width": f"{width}" + (" (full)" if number == 0 else ""),
                "values": [
                    f"{100 * value:.2f}" if (value := _summary(grouped, p, m)) is not None else "–"
                    for p, m in columns
                ],
            }
            for number, (width, grouped) in enumerate(
                (int(width), parse_retrieval_metrics(values))
                for width, values in sorted(self.width_metrics.items(), key=lambda item: -int(item[0]))
            )
        ]
        domain_columns = [(p, m) for p in ("merged", "separate") for m in ("R@1", "mP@5") if p in trained]
        domain_names = list(dict.fromkeys(d for p in trained.values() for d in p if d != "mean"))
        if any("mean" in trained[p] for p in trained):
            domain_names.append("mean")
        domain_rows = [
            {
                "domain": f"**{domain}**" if domain == "mean" else domain,
                "values": [
                    f"{100 * trained[p][domain][m]:.2f}" if m in trained[p].get(domain, {}) else "–"
                    for p, m in domain_columns
                ],
            }
            for domain in domain_names
        ]

        card_data = ModelCardData(
            license=self.license,
            library_name="hf_distill",
            pipeline_tag="image-feature-extraction",
            base_model=self.base_model,
            datasets=list(self.datasets) or None,
            tags=[
                "image-feature-extraction",
                "image-retrieval",
                "universal-embedding",
                self.method,
                *self.tags,
            ],
            model_name=model_name,
            eval_results=_eval_results(trained, self.benchmark_name, self.benchmark_type, self.eval_split)
            or None,
        )
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
            teachers=list(self.teachers),
            domains=list(self.domains),
            usage_snippet=usage_snippet(repo_id),
            summary_columns=[f"{m} ({p})" for p, m in columns],
            summary_rows=summary_rows if (starting_rows or trained) else [],
            has_starting_point=bool(starting_rows),
            comparison=self._comparison(starting_rows, trained),
            validation_text=self._validation_text(),
            width_rows=width_rows if len(width_rows) > 1 else [],
            results_columns=[f"{m} ({p})" for p, m in domain_columns],
            results_rows=domain_rows,
            hyperparameters=settings,
            trained_steps=self.trained_steps,
            command=self.command,
            starting_point_command=(self.starting_point_command or self.command) if starting_rows else None,
            no_training_note=self.no_training_note,
            plots=plots,
            eval_split=self.eval_split,
            benchmark_name=self.benchmark_name,
        )
        _assert_no_secret(str(card), "the model card")
        return card


__all__ = ["EmbedderCardData"]
