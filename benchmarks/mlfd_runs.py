"""What one seed of the MLFD page (``mlfd_results.py``) runs, from the stages' settings (the recipe config and
the overrides): the library's MLFD stages (:func:`hf_distill.trainers.mlfd_stages.run_mlfd_stages`, what
``recipes/mlfd.py`` runs) twice, the joint teachers' test retrieval and the universality check.

- ``seed<N>/single``: the recipe config as given (single-level fusion, ``joint_fusion_levels: 0``);
- ``seed<N>/multi``: the same with ``joint_fusion_levels=1`` (multi-level fusion: two fused maps, the student
  distils its last two levels). Its ``teachers/`` and ``cache/`` are links to the single-level run's, so the
  individual teachers and their cached maps are trained and computed once per seed and feed both variants.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import yaml

UNSEEN_ROWS = ("starting_point", "teacher", "student_single", "student_multi")


def recipe_settings(config: str, overrides: dict[str, str]) -> dict[str, Any]:
    """The config's keys with the command-line overrides applied (as the stages will read them)."""
    settings = yaml.safe_load(Path(config).read_text()) or {}
    settings.update({key: yaml.safe_load(value) for key, value in overrides.items()})
    return settings


def check_baseline_is_fair(settings: dict[str, Any]) -> None:
    """Refuse a config where the stage-1 teacher would not be the no-distillation student (same schedule)."""
    for teacher_key, student_key in (
        ("teacher_epochs", "student_epochs"),
        ("teacher_learning_rate", "student_learning_rate"),
    ):
        if teacher_key in settings or student_key in settings:
            if settings.get(teacher_key) != settings.get(student_key):
                raise SystemExit(
                    f"{teacher_key}={settings.get(teacher_key)} differs from {student_key}="
                    f"{settings.get(student_key)}: the individual teachers would not be the no-distillation "
                    "students; set them equal"
                )


def stage_settings(args: Any) -> tuple[dict[str, Any], list[str]]:
    """The stages' settings (the config with the overrides: the command line's, after the plateau rule's when
    ``args.cap_epochs``) and the overrides as stage flags; refuses an unfair baseline or trained ``--unseen``."""
    overrides = dict(item.split("=", 1) for item in args.overrides)
    if args.cap_epochs:
        # The budget rule of every results page: train to the validation plateau, keep the best epoch.
        plateau = {"stop_on_plateau": "true", "plateau_min_epochs": f"{args.min_epochs:g}"}
        plateau |= {f"{stage}_epochs": f"{args.cap_epochs:g}" for stage in ("teacher", "joint", "student")}
        overrides = {**plateau, **overrides}
    settings = recipe_settings(args.config, overrides)
    check_baseline_is_fair(settings)
    missing = sorted(set(args.unseen) & set(settings.get("domains", [])))
    if missing:
        raise SystemExit(
            f"--unseen {missing} are MLFD training domains; name domains outside {settings['domains']}"
        )
    return settings, [part for key, value in overrides.items() for part in (f"--{key}", *value.split())]


def stamp_seed_folders(work_dir: str, seeds: list[int], settings: dict[str, Any], flags: list[str]) -> None:
    """Mark every seed folder with the settings its stages are trained with; refuse one holding other settings
    (finished stages in a seed folder are skipped on a relaunch, so they must come from these settings)."""
    wanted = json.dumps({"settings": settings, "flags": flags}, sort_keys=True)
    for seed in seeds:
        folder = Path(work_dir) / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = folder / "settings.json"
        if stamp.exists() and stamp.read_text() != wanted:
            raise SystemExit(
                f"{folder} holds stages trained with other settings ({stamp}); pass another --work-dir or remove it"
            )
        stamp.write_text(wanted)


def _stage_arguments(config: str, flags: list[str], benchmark: str, seed: int, output: Path, levels: int):
    from hf_distill.recipe import parse_recipe_args
    from hf_distill.trainers.mlfd_stages import MlfdStageArguments

    argv = ["--config", config, *flags, "--benchmark", benchmark, "--seed", str(seed)]
    argv += ["--output_dir", str(output)]
    if levels:
        argv += ["--joint_fusion_levels", str(levels)]
    (args,) = parse_recipe_args([MlfdStageArguments], argv)
    return args


def _joint_teacher_retrieval(args: Any, benchmark: Any, variant_dir: Path) -> dict[str, float]:
    """Test retrieval of a joint teacher: the frozen teachers' maps of each test image, fused and pooled."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import AutoModel

    from hf_distill.data import ImageTransform
    from hf_distill.evaluation import RetrievalEvaluator
    from hf_distill.teachers.cache import map_column
    from hf_distill.trainers.mlfd_stages import stage1_teachers, teacher_extractor

    teachers = stage1_teachers(args, benchmark)
    joint = AutoModel.from_pretrained(variant_dir / "joint_teacher").eval()
    extract = teacher_extractor(teachers)

    class JointTeacherEmbedder(nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            maps = extract(pixel_values)
            fused = joint.fuse({name: maps[map_column(name)] for name in joint.config.teacher_names})
            return F.normalize(fused[-1].mean(dim=(2, 3)), dim=-1)

    # The teachers' input is the un-augmented view their maps were cached from: [0, 1] pixels, each teacher
    # normalising them its own way.
    transform = ImageTransform(args.image_size, (0, 0, 0), (1, 1, 1), resize_size=args.image_size)
    evaluator = RetrievalEvaluator(
        benchmark,
        split="test",
        protocols=("separate",),
        transform=transform,
        batch_size=args.eval_batch_size,
        domains=list(args.domains),
    )
    with torch.no_grad():
        metrics = evaluator(JointTeacherEmbedder())
    return {
        f"{domain}/test/{key.split('/')[-1]}": value
        for domain in args.domains
        for key, value in metrics.items()
        if key.startswith(f"separate/{domain}/")
    }


def _unseen_retrieval(args: Any, benchmark: Any, base: Path, unseen: list[str]) -> dict[str, dict]:
    """Per row and trained domain: retrieval of that domain's exported embedder on the unseen domains."""
    import torch
    from transformers import AutoModel

    from hf_distill.evaluation import RetrievalEvaluator
    from hf_distill.models.mlfd import MlfdClassifierModel
    from hf_distill.trainers.mlfd_evaluation import eval_transform
    from hf_distill.trainers.mlfd_stages import classifier_config

    results: dict[str, dict] = {row: {} for row in UNSEEN_ROWS}
    for index, domain in enumerate(args.domains):
        # The untrained model exactly as stage 1 builds it (same seed, same config).
        torch.manual_seed(args.seed)
        untrained = MlfdClassifierModel(classifier_config(args, index, benchmark.num_classes[domain]))
        models = {
            "starting_point": untrained,
            "teacher": AutoModel.from_pretrained(base / "single" / "teachers" / domain),
            "student_single": AutoModel.from_pretrained(base / "single" / "students" / domain),
            "student_multi": AutoModel.from_pretrained(base / "multi" / "students" / domain),
        }
        for row, model in models.items():
            evaluator = RetrievalEvaluator(
                benchmark,
                split="test",
                protocols=("separate",),
                transform=eval_transform(model.config),
                batch_size=args.eval_batch_size,
                domains=unseen,
            )
            with torch.no_grad():
                metrics = evaluator(model.export_embedder())
            results[row][domain] = {key.split("/", 1)[1]: value for key, value in metrics.items()}
    return results


def run_seed(
    config: str,
    flags: list[str],
    benchmark_path: str,
    seed: int,
    work_dir: str,
    threads: int,
    unseen: list[str],
) -> dict[str, Any]:
    """Both MLFD variants of one seed, the joint teachers' test retrieval and the universality check."""
    import datasets
    import torch

    from hf_distill.data import load_domains
    from hf_distill.recipe import setup_logging
    from hf_distill.trainers.mlfd_stages import run_mlfd_stages

    torch.set_num_threads(threads)
    base = Path(work_dir) / f"seed{seed}"
    log = (base / "run.log").open("a")
    if multiprocessing.parent_process() is not None:  # a worker: its output goes to the seed's log
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    setup_logging()
    datasets.disable_progress_bars()
    start = time.perf_counter()
    single = _stage_arguments(config, flags, benchmark_path, seed, base / "single", 0)
    multi = _stage_arguments(config, flags, benchmark_path, seed, base / "multi", 1)
    benchmark = load_domains(benchmark_path, [*single.domains, *unseen])
    record: dict[str, Any] = {"seed": seed, "stages": {}, "joint_test": {}, "seconds": {}}
    for name, args in (("single", single), ("multi", multi)):
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if name == "multi":
            # Same teachers and caches as the single-level run: only stages 3 and 4 differ.
            for shared in ("teachers", "cache"):
                if not (folder / shared).exists():
                    (folder / shared).symlink_to(Path("..") / "single" / shared)
        previous = folder / "results.json"
        # Stages found complete are skipped (and results.json rewritten): keep the time of the run that made them.
        earlier = json.loads(previous.read_text())["seconds"] if previous.exists() else None
        record["stages"][name] = run_mlfd_stages(args, benchmark)
        record["seconds"][f"stages_{name}"] = earlier or record["stages"][name]["seconds"]
        eval_start = time.perf_counter()
        record["joint_test"][name] = _joint_teacher_retrieval(args, benchmark, folder)
        record["seconds"][f"joint_test_{name}"] = round(time.perf_counter() - eval_start, 1)
    eval_start = time.perf_counter()
    record["unseen"] = _unseen_retrieval(single, benchmark, base, unseen)
    record["seconds"]["unseen"] = round(time.perf_counter() - eval_start, 1)
    record["seconds"]["this_invocation"] = round(time.perf_counter() - start, 1)
    spent = record["seconds"]
    record["seconds"]["total"] = round(
        sum(
            spent[key]
            for key in ("stages_single", "stages_multi", "joint_test_single", "joint_test_multi", "unseen")
        ),
        1,
    )
    record["load"] = os.getloadavg()[0]
    return record
