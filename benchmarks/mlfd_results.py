"""MLFD vs. dataset-specific students trained without distillation, over several seeds (SPEC §4).

For every seed this runs the library's MLFD stages (:func:`hf_distill.trainers.mlfd_stages.run_mlfd_stages`, the
stages ``recipes/mlfd.py`` runs; a child process each, several at a time) and reads its ``results.json``. The baseline of a domain is its stage-1 individual teacher: the student's architecture trained
on the same images with cross-entropy only and the same schedule (the script checks that the teacher and student
epochs and learning rates are equal, so the two differ only by the distillation). Metrics: top-1 accuracy of the
classifier head on ``val`` (held-out images of the training classes) and retrieval R@1 on ``test`` (unseen
classes, the domain's own index). The table (mean ± sample standard deviation over seeds) is printed and
written to a markdown file together with the command that produced it.

    python benchmarks/mlfd_results.py --config recipes/configs/mlfd_offline.yaml --seeds 0 1 2 \\
        --output-dir outputs/mlfd_results --markdown docs/results/mlfd.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS = (("val/top1", "val top-1"), ("test/R@1", "test R@1"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "recipes" / "configs" / "mlfd_offline.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", default="outputs/mlfd_results", help="one sub-folder per seed")
    parser.add_argument("--markdown", default=None, help="write the table here (e.g. docs/results/mlfd.md)")
    parser.add_argument("--parallel", type=int, default=1, help="seeds run at the same time")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads per run")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="recipe overrides as key=value (e.g. max_train_samples=500 student_epochs=2)",
    )
    return parser.parse_args(argv)


def _recipe_settings(config: str, overrides: dict[str, str]) -> dict:
    settings = yaml.safe_load(Path(config).read_text()) or {}
    settings.update({key: yaml.safe_load(value) for key, value in overrides.items()})
    return settings


def _check_baseline_is_fair(settings: dict) -> None:
    # The stage-1 teacher stands for the no-distillation student only when both train the same way.
    for teacher_key, student_key, default in (
        ("teacher_epochs", "student_epochs", 3.0),
        ("teacher_learning_rate", "student_learning_rate", 1e-3),
    ):
        teacher, student = settings.get(teacher_key, default), settings.get(student_key, default)
        if float(teacher) != float(student):
            raise SystemExit(
                f"{teacher_key}={teacher} differs from {student_key}={student}: the stage-1 teachers would not be "
                "a fair no-distillation baseline; set them equal"
            )


def _run_seed(config: str, seed: int, output: str, overrides: list[str], threads: int) -> None:
    """One seed, in a child process whose output (logs, warnings) goes to ``<output>/recipe.log``."""
    log = (Path(output) / "recipe.log").open("w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    # Imported here, in the child, after OMP_NUM_THREADS is set: the parent only schedules and reads results.
    import datasets
    import torch

    from hf_distill.data import load_domains
    from hf_distill.recipe import parse_recipe_args, setup_logging
    from hf_distill.trainers.mlfd_stages import MlfdStageArguments, run_mlfd_stages

    torch.set_num_threads(threads)
    setup_logging()
    datasets.disable_progress_bars()
    argv = ["--config", config, "--seed", str(seed), "--output_dir", output, *overrides]
    (stage_args,) = parse_recipe_args([MlfdStageArguments], argv)
    run_mlfd_stages(stage_args, load_domains(stage_args.benchmark_path, stage_args.domains))


def run_seeds(args: argparse.Namespace, overrides: dict[str, str]) -> dict[int, dict]:
    """Run the stages once per seed (``args.parallel`` at a time) and return each run's ``results.json``."""
    os.environ.update(OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    context = multiprocessing.get_context("spawn")
    flags = [part for key, value in overrides.items() for part in (f"--{key}", *value.split())]
    pending = list(args.seeds)
    running: dict[int, tuple[multiprocessing.process.BaseProcess, Path]] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            output = Path(args.output_dir) / f"seed{seed}"
            output.mkdir(parents=True, exist_ok=True)
            process = context.Process(
                target=_run_seed, args=(args.config, seed, str(output), flags, args.threads)
            )
            process.start()
            running[seed] = (process, output)
        time.sleep(2)
        for seed, (process, output) in list(running.items()):
            if process.is_alive():
                continue
            del running[seed]
            if process.exitcode != 0:
                raise SystemExit(f"seed {seed} failed (exit {process.exitcode}); see {output / 'recipe.log'}")
    return {
        seed: json.loads((Path(args.output_dir) / f"seed{seed}" / "results.json").read_text())
        for seed in args.seeds
    }


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_table(results: dict[int, dict]) -> str:
    """Markdown table: per domain and metric, baseline vs. MLFD student (mean ± std over seeds, in %)."""
    first = next(iter(results.values()))
    domains = first["arguments"]["domains"]
    backbones = dict(zip(domains, first["arguments"]["teacher_backbones"]))
    lines = [
        "| domain (student) | metric | no distillation | MLFD student | Δ (mean) | joint teacher |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for domain in domains:
        for key, label in METRICS:
            baseline = [run["teachers"][domain][key] for run in results.values()]
            student = [run["students"][domain][key] for run in results.values()]
            delta = 100 * (statistics.mean(student) - statistics.mean(baseline))
            joint = (
                _mean_std([run["joint_teacher"][f"{domain}/val/top1"] for run in results.values()])
                if key == "val/top1"
                else "–"
            )
            lines.append(
                f"| {domain} ({backbones[domain]}) | {label} | {_mean_std(baseline)} | {_mean_std(student)} | "
                f"{delta:+.1f} | {joint} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.overrides)
    settings = _recipe_settings(args.config, overrides)
    _check_baseline_is_fair(settings)
    start = time.perf_counter()
    results = run_seeds(args, overrides)
    wall = time.perf_counter() - start
    table = format_table(results)
    seconds = [run["seconds"] for run in results.values()]
    command = "python benchmarks/mlfd_results.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    summary = (
        f"{len(results)} seeds ({', '.join(map(str, results))}), wall time {wall / 60:.1f} min for the sweep "
        f"({args.parallel} run(s) at a time, {args.threads} thread(s) each); per run "
        f"{min(seconds):.0f}–{max(seconds):.0f} s."
    )
    print(table)
    print(summary)
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings_text = yaml.safe_dump(settings, sort_keys=False).strip()
        path.write_text(
            "# MLFD on the offline benchmark\n\n"
            "Per domain: the dataset-specific student trained without distillation (cross-entropy only; the\n"
            "stage-1 individual teacher, which has the student's architecture and schedule) vs. the MLFD student\n"
            "distilled from the joint teacher. Top-1 = classifier head on `val` (held-out images of the training\n"
            "classes); R@1 = retrieval of unseen classes on `test` (query = index = test, self-match removed).\n"
            "Mean ± sample standard deviation over seeds, in %. Joint teacher = its top-1 on the cached `val` maps.\n\n"
            f"{table}\n\n{summary}\n\nCommand:\n\n```\n{command}\n```\n\nRecipe settings:\n\n```yaml\n"
            f"{settings_text}\n```\n"
        )
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
