"""UNIC on the offline benchmark: every teacher and the distilled student, retrieval and a k-NN probe per domain.

    HF_HUB_OFFLINE=1 python benchmarks/unic_results.py --seeds 0 1 2 [--key value ...] [--output docs/results/unic.md]

Runs ``recipes/unic.py`` once per seed (``--config``, default ``recipes/configs/unic_offline.yaml``; any further
``--key value`` pairs after ``--`` override it, e.g. ``-- --max_train_per_domain 400``), evaluates each frozen
teacher once (they are deterministic, so their figures do not vary with the seed) with the same evaluators, and
writes a Markdown table: per domain, each teacher, the best teacher, the student's mean ± std over the seeds and
the student's gap to the best teacher, for merged retrieval R@1 and mP@5 (test split, unseen classes) and k-NN
(k = 20) top-1 (val queries against the train split).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import unic as unic_recipe  # noqa: E402
from common import parse_recipe_args  # noqa: E402

from hf_distill.data import ImageTransform, load_benchmark  # noqa: E402
from hf_distill.teachers import load_teachers  # noqa: E402
from hf_distill.trainers.unic import UnicTrainingArguments  # noqa: E402

METRICS = (
    ("merged/{}/R@1", "merged R@1 (test)"),
    ("merged/{}/mP@5", "merged mP@5 (test)"),
    ("knn/{}/top1", "k-NN top-1 (val)"),
)


class TeacherEmbedder(nn.Module):
    """A frozen teacher's L2-normalised global feature as an embedding (for the evaluators).

    Args:
        teacher: a ``FrozenTeacher``.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.teacher(pixel_values).global_features, dim=-1)


def evaluate_teachers(recipe, benchmark) -> dict[str, dict[str, float]]:
    """Every teacher of the recipe through the recipe's evaluation, at its own input size and normalisation."""
    results = {}
    for name, teacher in load_teachers(unic_recipe.teacher_specs(recipe)).items():
        preprocessing = teacher.preprocessing
        transform = ImageTransform(
            preprocessing.image_size,
            preprocessing.mean,
            preprocessing.std,
            train=False,
            resize_size=preprocessing.image_size,
        )
        results[name] = unic_recipe.evaluate_embedder(
            TeacherEmbedder(teacher), benchmark, recipe, None, transform
        )
    return results


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def markdown_report(
    teachers: dict[str, dict[str, float]],
    students: list[dict[str, float]],
    domains: list[str],
    command: str,
    settings: str,
    elapsed_s: float,
) -> str:
    """The results page: one table per metric and a plain list of where the student trails the best teacher."""
    lines = [
        "# UNIC on the offline benchmark",
        "",
        "Frozen ImageNet-pretrained teachers distilled into a ViT student trained from scratch (SPEC §3). Figures in",
        f"percent; student = mean ± std over {len(students)} seeds; teachers are deterministic (one evaluation).",
        "",
        f"Produced by `{command}` in {elapsed_s / 60:.1f} min on the shared 2-core development machine.",
        "",
        settings,
        "",
    ]
    shortfalls = []
    for pattern, title in METRICS:
        names = list(teachers)
        lines += [
            f"## {title}",
            "",
            "| domain | " + " | ".join(names) + " | best teacher | student | student − best |",
            "|---|" + "---:|" * (len(names) + 3),
        ]
        for domain in [*domains, "mean"]:
            key = pattern.format(domain)
            teacher_values = {name: teachers[name][key] for name in names}
            best_name = max(teacher_values, key=teacher_values.get)
            student_values = [run[key] for run in students]
            gap = statistics.mean(student_values) - teacher_values[best_name]
            label = f"**{domain}**" if domain == "mean" else domain
            lines.append(
                f"| {label} | "
                + " | ".join(f"{100 * teacher_values[name]:.1f}" for name in names)
                + f" | {100 * teacher_values[best_name]:.1f} ({best_name}) | {_cell(student_values)} | {100 * gap:+.1f} |"
            )
            if gap < 0:
                shortfalls.append(f"{title}, {domain}: {-100 * gap:.1f} points below {best_name}")
        lines.append("")
    lines += ["## Where the student does not reach the best teacher", ""]
    lines += [f"- {entry}" for entry in shortfalls] or [
        "- nowhere: the student matches or beats the best teacher."
    ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="recipes/configs/unic_offline.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", default="outputs/unic_results")
    parser.add_argument("--output", default="docs/results/unic.md")
    args, overrides = parser.parse_known_args()
    overrides = [value for value in overrides if value != "--"]
    command = "python " + " ".join(shlex.quote(part) for part in sys.argv)
    start = time.perf_counter()

    students = []
    for seed in args.seeds:
        output_dir = os.path.join(args.work_dir, f"student_seed{seed}")
        argv = ["--config", args.config, *overrides, "--seed", str(seed), "--output_dir", output_dir]
        students.append(unic_recipe.main(argv))
    recipe, _ = parse_recipe_args(
        (unic_recipe.UnicRecipeArguments, UnicTrainingArguments), ["--config", args.config, *overrides]
    )
    benchmark = load_benchmark(recipe.benchmark, recipe.domains)
    teachers = evaluate_teachers(recipe, benchmark)
    elapsed = time.perf_counter() - start

    os.makedirs(args.work_dir, exist_ok=True)
    with open(os.path.join(args.work_dir, "results.json"), "w") as handle:
        json.dump({"teachers": teachers, "students": students, "command": command}, handle, indent=2)
    settings = (
        f"Settings: config `{args.config}` with overrides `{' '.join(overrides) or 'none'}`; teachers "
        f"{', '.join(str(spec.model) for spec in unic_recipe.teacher_specs(recipe))} at "
        f"{recipe.teacher_image_size or 'native'} px; student {recipe.student_backbone} {recipe.student_kwargs} at "
        f"{recipe.image_size} px; k-NN k = {recipe.knn_k}, index capped at "
        f"{recipe.knn_max_index_per_domain or 'all'} train images per domain."
    )
    report = markdown_report(teachers, students, list(benchmark.domains), command, settings, elapsed)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
