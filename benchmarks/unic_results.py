"""UNIC on the many-class benchmark: each teacher alone, the starting point, UNIC and its ablations, two regimes.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/unic_results.py [--rows ...] [--seeds 0 1 2] [--jobs 2]
        [--steps 4000] [--output docs/results/unic.md]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/unic_results.py --report-only

(i) from scratch (the paper's regime): a small ViT student distils EfficientNet-Lite0 and MobileNetV2 (fed the
student's 32-px view resized to 48 px) from targets cached once on one augmented view per image
(``build_unic_feature_cache``), trained with ``UnicTrainer``. (ii) pretrained student (offline): an
EfficientNet-Lite0 student from its ImageNet weights distils Lite2, MobileNetV2 and Lite1, its top stages over a
cached trunk, through ``recipes/unic.py``; its teacher and starting-point rows (the frozen nets) run here, its
student rows are skipped while the library lacks their settings (listed on the page). Every student row shares
the budget rule (``stop_on_plateau`` on validation merged R@1, ``--steps`` the cap), keeps its best validation
checkpoint and reports test retrieval and the k-NN probe. Runner, store, tables, verdicts and plots:
``benchmarks/sweep.py``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from torch import nn

from hf_distill.data import ImageTransform, load_benchmark, subset_split
from hf_distill.evaluation import KNNClassificationEvaluator, RetrievalEvaluator
from hf_distill.layers import PixelNormalize
from hf_distill.models.unic import UnicStudentConfig
from hf_distill.trainers.unic import build_unic_feature_cache, teacher_shapes, unic_train_transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402
from sweep import Row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = "merged/mean/R@1"
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
}
METRICS = (
    ("merged", "R@1", "merged R@1 (test, unseen classes)"),
    ("merged", "mP@5", "merged mP@5 (test, unseen classes)"),
    ("separate", "R@1", "separate R@1 (test, unseen classes)"),
    ("separate", "mP@5", "separate mP@5 (test, unseen classes)"),
    ("knn", "top1", "k-NN top-1 (k = 20, val queries, train index of the val classes)"),
)
SCRATCH_TEACHERS = ["efficientnet_lite0", "mobilenet_v2"]
PRETRAINED = {  # regime (ii): what its rows set on top of the shared settings
    "teachers": ["efficientnet_lite2", "mobilenet_v2", "efficientnet_lite1"],
    "image_size": 64,
    "teacher_image_size": 64,
}
STUDENT_START = {  # CNN teachers need the std floor (ReLU dims constant over a batch: FeatureStandardizer)
    "student_offline_weights": "efficientnet_lite0",
    "trainable_from": 5,
    "cache_views": 4,
    "standardize_min_std_ratio": 0.1,
}
SCRATCH = [
    *(Row(f"teacher_{t}", f"teacher: {t}", {"kind": "teacher", "teacher": t}, seeded=False) for t in SCRATCH_TEACHERS),
    Row("starting_point", "starting point (untrained student)", {"kind": "student", "variant": "starting_point"}),
    *(Row(v, LABELS[v], {"kind": "student", "variant": v}) for v in VARIANTS),
]  # fmt: skip
PRE = [
    *(Row(f"pre_teacher_{t}", f"teacher: {t}", {**PRETRAINED, "kind": "teacher", "teacher": t}, seeded=False)
      for t in PRETRAINED["teachers"]),
    Row("pre_starting_point", "starting point: Lite0 ImageNet features",
        {**PRETRAINED, "kind": "teacher", "teacher": "efficientnet_lite0"}, seeded=False),
    *(Row(f"pre_{v}", f"Lite0 student: {LABELS[v]}", {**PRETRAINED, **STUDENT_START, "kind": "student", "variant": v})
      for v in VARIANTS),
    # The learning-rate check of the pretrained regime (the shipped config's 5e-4 against a lower one, on val).
    Row("pre_all_on_lr1e-4", f"Lite0 student: {LABELS['all_on']}, lr 1e-4",
        {**PRETRAINED, **STUDENT_START, "kind": "student", "variant": "all_on", "recipe_learning_rate": 1e-4}),
]  # fmt: skip
ROWS = {row.name: row for row in [*SCRATCH, *PRE]}
STORED_BY = {  # the settings each stored part depends on (see `Settings.directory`)
    "evaluation": tuple(
        "benchmark teachers teacher_image_size student_backbone student_kwargs image_size knn_index_per_domain".split()
    ),
    "cache": tuple(
        "benchmark teachers teacher_image_size image_size max_train_per_domain train_scale_min".split()
    ),
}
FLAGS = ("benchmark", "steps", "eval_steps", "batch_size", "max_train_per_domain", "knn_index_per_domain")


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
        steps: the cap of the plateau rule (``stop_on_plateau``; ``eval_steps`` apart, ``plateau_*`` its window and
            threshold).
        batch_size / learning_rate / warmup_steps / weight_decay / max_grad_norm: optimisation.
        train_scale_min: smallest crop of the cached view.
        knn_index_per_domain: cap of the k-NN index (train images of the val classes) per domain.
        eval_batch_size: images per forward pass in evaluation.
    """

    benchmark: str = "data/manydomain"
    teachers: list[str] = field(default_factory=lambda: list(SCRATCH_TEACHERS))
    teacher_image_size: int = 48
    student_backbone: str = "vit_tiny_patch16_224"
    student_kwargs: dict = field(
        default_factory=lambda: {"patch_size": 8, "depth": 4, "embed_dim": 192, "num_heads": 3}
    )
    image_size: int = 32
    max_train_per_domain: int = 500
    steps: int = 4000
    eval_steps: int = 200
    plateau_fraction: float = 0.2
    plateau_min_gain: float = 0.003
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


class ValidationEvaluator:
    """The trainer's evaluator: merged retrieval on the stored val images (what the plateau rule watches)."""

    primary_metric = PRIMARY

    def __init__(self, benchmark: Any, settings: Settings) -> None:
        self.evaluator = RetrievalEvaluator(
            benchmark, split="val", transform=pixels_to_unit, batch_size=settings.eval_batch_size
        )

    def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
        return self.evaluator(NormalizedEmbedder(model.export_embedder()).eval())


def settings_of(values: dict) -> Settings:
    return sweep.dataclass_of(Settings, values)


def recipe_run(name: str, values: dict, seed: int) -> dict:
    """Regime (ii) students: ``recipes/unic.py`` with the row's recipe settings and the plateau rule."""
    # Imported as a module (a dataclass needs its module in ``sys.modules``), as `accepted` imports it.
    if str(ROOT / "recipes") not in sys.path:
        sys.path.insert(0, str(ROOT / "recipes"))
    module = importlib.import_module("unic")
    out = Path(values["work_dir"]) / f"{name}_seed{seed}"
    options = VARIANTS[values["variant"]]
    # The shipped CNN config (batch 128, lr 5e-4 cosine, AdamW 0.9/0.99, wd 0.03, clip 3, trunk cache) with the
    # row's settings on top.
    argv = ["--config", str(ROOT / "recipes" / "configs" / "unic_cnn_offline.yaml")]
    argv += ["--benchmark", values["benchmark"], "--seed", str(seed), "--output_dir", str(out)]
    argv += ["--teachers", *values["teachers"], "--image_size", str(values["image_size"])]
    argv += [
        "--max_steps",
        str(values["steps"]),
        "--eval_strategy",
        "steps",
        "--eval_steps",
        str(values["eval_steps"]),
    ]
    argv += [
        "--save_steps",
        str(values["eval_steps"]),
        "--load_best_model_at_end",
        "true",
        "--stop_on_plateau",
        "true",
    ]
    argv += [
        "--drop_prob",
        str(options["drop_prob"]),
        "--standardize_targets",
        str(options["standardize_targets"]),
    ]
    argv += [f"--{key}={value}" for key, value in STUDENT_START.items()] + ["--report_to", "none"]
    argv += ["--max_train_per_domain", str(values["max_train_per_domain"])]
    if "recipe_learning_rate" in values:
        argv += ["--learning_rate", str(values["recipe_learning_rate"])]
    argv += [f"--{key}={values[key]}" for key in ("plateau_fraction", "plateau_min_gain")]
    if options["ladder_blocks"] is not None:
        argv += ["--ladder_blocks", *map(str, options["ladder_blocks"])]
    # The recipe's k-NN probe indexes a random cap of the train split (most cjk val classes then have no index
    # image), not `knn_benchmark`'s val-class index the teachers and the starting point are probed on: its
    # figures are not comparable and stay out of the row (its retrieval equals this script's: the untrained
    # student's val merged R@1 at step 0 equals the starting point's on `evaluation_benchmark`, 0.4206).
    metrics = {key: value for key, value in module.main(argv).items() if not key.startswith("knn/")}
    return {**metrics, **sweep.recipe_curve(out)}


def train_run(name: str, values: dict, seed: int) -> dict:
    """One row and seed: a frozen net (teacher or pretrained starting point), or a student."""
    from transformers import set_seed

    from hf_distill.losses import UnicLoss
    from hf_distill.models.unic import UnicStudentModel
    from hf_distill.teachers import load_teachers
    from hf_distill.teachers.cache import CachedViewDataset
    from hf_distill.trainers.unic import UnicTrainer, UnicTrainingArguments

    torch.set_num_threads(1)
    if "student_offline_weights" in values:
        return recipe_run(name, values, seed)
    settings, work_dir = settings_of(values), values["work_dir"]
    images_dir = settings.directory(work_dir, "evaluation") / "images"
    benchmark = evaluation_benchmark(settings, images_dir)
    if values["kind"] == "teacher":
        spec = {
            "model": values["teacher"],
            "name": values["teacher"],
            "image_size": settings.teacher_image_size,
        }
        teacher = next(iter(load_teachers([spec]).values()))
        return evaluate(TeacherEmbedder(teacher), benchmark, settings)
    variant = values["variant"]
    options = VARIANTS["all_on" if variant == "starting_point" else variant]
    teachers = load_teachers(teacher_specs(settings))
    set_seed(seed)
    model = UnicStudentModel(student_config(settings, teachers, options["ladder_blocks"]))
    record: dict[str, Any] = {"steps": 0}
    if variant != "starting_point":
        images = training_images(load_benchmark(settings.benchmark), settings)
        cache, transform = feature_cache(settings, teachers, images, work_dir)
        out = settings.directory(work_dir, "training") / f"{variant}_seed{seed}"
        args = UnicTrainingArguments(
            output_dir=str(out), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, weight_decay=settings.weight_decay, adam_beta1=0.9,
            adam_beta2=0.99, lr_scheduler_type="cosine", warmup_steps=settings.warmup_steps,
            max_grad_norm=settings.max_grad_norm, standardize_targets=options["standardize_targets"], seed=seed,
            logging_steps=max(settings.eval_steps // 4, 1), eval_strategy="steps", eval_steps=settings.eval_steps,
            save_strategy="steps", save_steps=settings.eval_steps, save_total_limit=2, load_best_model_at_end=True,
            metric_for_best_model=PRIMARY, stop_on_plateau=True, plateau_fraction=settings.plateau_fraction,
            plateau_min_gain=settings.plateau_min_gain, report_to="none", use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = UnicTrainer(
            model=model, args=args, train_dataset=CachedViewDataset(cache, images, transform, 0),
            loss=UnicLoss(list(settings.teachers), drop_prob=options["drop_prob"]),
            domain_names=list(benchmark.domains), evaluator=ValidationEvaluator(benchmark, settings),
        )  # fmt: skip
        trainer.train()
        record.update(
            curve=sweep.validation_curve(trainer.state.log_history),
            selected_step=sweep.selected_step(trainer.state.best_model_checkpoint),
            steps=trainer.state.global_step,
        )
    record.update(evaluate(NormalizedEmbedder(model.export_embedder()), benchmark, settings))
    return record


# ------------------------------------------------------------------------------------------- the page


def convert(page: dict) -> dict:
    """A page written before the shared runner (``teachers`` / ``students``) in the runner's shape."""
    if "students" not in page:
        return page
    rows = {f"teacher_{name}": [{**m, "seed": 0}] for name, m in page["teachers"]["metrics"].items()}
    for variant, runs in page["students"].items():
        rows[variant] = [
            {**run["metrics"], **{k: v for k, v in run.items() if k != "metrics"}} for run in runs
        ]
    setup = {key: page[key] for key in ("settings", "seeds", "domains", "command") if key in page}
    return {"setup": setup, "rows": rows}


def best_teacher_lines(page: dict, teachers: list[Row], student: str, domains: list[str]) -> list[str]:
    """(d) per domain: student − best teacher (merged R@1), with the verdict of "matches or beats"."""
    if not page["rows"].get(student) or not all(page["rows"].get(t.name) for t in teachers):
        return []
    lines = [
        "| domain | best teacher | student − best teacher (points) | sum of stds | verdict |",
        "|---|---|---:|---:|---|",
    ]
    for domain in [*domains, "mean"]:
        key = f"merged/{domain}/R@1"
        best = max(teachers, key=lambda t: sweep.values(page, t.name, key)[0])
        word, delta, noise = sweep.verdict(
            sweep.values(page, student, key), sweep.values(page, best.name, key)
        )
        word = "does not hold" if word == sweep.DOES_NOT_HOLD else "holds (matches or beats)"
        lines.append(
            f"| {domain} | {best.label.split(': ')[-1]} | {100 * delta:+.1f} | {100 * noise:.1f} | {word} |"
        )
    return lines


def claims(page: dict, rows: list[Row], prefix: str, domains: list[str]) -> list[str]:
    value = functools.partial(sweep.values, page)
    start, student = prefix + "starting_point", prefix + "all_on"
    regime = "pretrained Lite0" if prefix else "scratch"
    lines = [sweep.claim_line(page, f"({regime}) UNIC all on beats the starting point", student, start)]
    teachers = [r for r in rows if r.settings.get("kind") == "teacher" and "starting" not in r.name]
    if value(student, PRIMARY) and all(value(t.name, PRIMARY) for t in teachers):
        beaten = []
        for domain in domains:
            key = f"merged/{domain}/R@1"
            best = max(value(t.name, key)[0] for t in teachers)
            if sweep.verdict(value(student, key), [best])[0] != sweep.DOES_NOT_HOLD:
                beaten.append(domain)
        word = "holds" if len(beaten) == len(domains) else "does not hold"
        lines.append(
            f"- **({regime}) (d) the student matches or beats the best teacher on every domain**: {word} "
            f"({len(beaten)} of {len(domains)}: {', '.join(beaten) or 'none'}; per domain below)."
        )
    for variant in list(VARIANTS)[1:]:
        text = f"({regime}) (d) {LABELS[variant].split(' (')[0]} → all on helps"
        lines.append(sweep.claim_line(page, text, student, prefix + variant))
    return sweep.measured(lines)


def write_page(page: dict, output: Path) -> None:
    setup = page["setup"]
    domains = setup["domains"]
    lines = ["# UNIC on the many-class benchmark", "", "## Claims", ""]
    lines += claims(page, SCRATCH, "", domains) + claims(page, PRE, "pre_", domains)
    lines += [*sweep.skipped_lines(page), *sweep.page_notes(page, "notes"), ""]
    lines += [
        "Verdict rule: `benchmarks/sweep.py` (difference of the means against the sum of the seed stds).",
        "",
    ]
    old = "(this page predates the plateau rule: fixed steps, last step)"
    lines += ["**Budget rule.** " + setup.get("budget", old), "", *sweep.commands_block(setup)]
    for title, rows in (
        ("(i) student from scratch", SCRATCH),
        ("(ii) Lite0 student from ImageNet weights", PRE),
    ):
        # The starting point first: every trained row is read against it.
        labelled = [(r.name, r.label) for r in sorted(rows, key=lambda r: "starting_point" not in r.name)]
        if not any(page["rows"].get(name) for name, _ in labelled):
            continue
        teachers = [r for r in rows if r.settings.get("kind") == "teacher" and "starting" not in r.name]
        lines += [f"## {title}: (d) student − best teacher, merged R@1", ""]
        lines += best_teacher_lines(page, teachers, f"{'pre_' if rows is PRE else ''}all_on", domains) + [""]
        lines += sweep.metric_tables(page, title, labelled, [*domains, "mean"], METRICS, "model")
    everything = [(r.name, r.label) for r in [*SCRATCH, *PRE]]
    lines += sweep.plots_and_runs(page, everything, everything, domains, output, "unic")
    output.write_text("\n".join(lines))


def prepare(rows: list[Row], shared: dict) -> None:
    """Build the evaluation images and the students' target cache once, here, before the workers read them."""
    from hf_distill.teachers import load_teachers

    for row in rows:
        values = {**shared, **row.settings}
        if "student_offline_weights" in values:
            continue
        settings = settings_of(values)
        evaluation_benchmark(settings, settings.directory(values["work_dir"], "evaluation") / "images")
        if values["kind"] == "student" and values["variant"] != "starting_point":
            images = training_images(load_benchmark(settings.benchmark), settings)
            feature_cache(settings, load_teachers(teacher_specs(settings)), images, values["work_dir"])


def accepted() -> set[str]:
    """Setting names this script routes itself plus the UNIC recipe's (a pretrained CNN student lives there)."""
    sys.path.insert(0, str(ROOT / "recipes"))
    from unic import UnicRecipeArguments

    from hf_distill.trainers.unic import UnicTrainingArguments

    own = {item.name for item in fields(Settings)} | {
        "kind",
        "teacher",
        "variant",
        "work_dir",
        "recipe_learning_rate",
    }
    return own | sweep.accepted_names(UnicRecipeArguments, UnicTrainingArguments)


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = sweep.page_parser(
        __doc__, "docs/results/unic.md", ROWS, work_dir="outputs/unic_results", merge=True
    )
    sweep.add_setting_flags(parser, {name: getattr(defaults, name) for name in FLAGS}, dashed=True)
    args = parser.parse_args(argv)
    output = Path(args.output)
    page = sweep.open_page(output, convert, args.merge)
    if not args.report_only:
        shared = {
            **asdict(defaults),
            "work_dir": args.work_dir,
            **{name: getattr(args, name) for name in FLAGS},
        }
        rows = [ROWS[name] for name in args.rows]
        budget = sweep.budget_rule("every student", defaults.plateau_min_gain, defaults.plateau_fraction,
                                   args.eval_steps, args.steps)  # fmt: skip
        prepare(rows, shared)
        page = sweep.run_page(
            page, "unic_results.py", argv or sys.argv[1:], rows, args.seeds, shared, train_run,
            output.with_suffix(".json"), accepted(), args.jobs,
            domains=list(load_benchmark(args.benchmark).domains), shared=shared, budget=budget,
        )  # fmt: skip
    write_page(page, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
