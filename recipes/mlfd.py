"""MLFD end to end (SPEC §4): individual teachers → feature cache → joint teacher → dataset-specific students.

    accelerate launch recipes/mlfd.py --config recipes/configs/mlfd_offline.yaml [--key value ...]
    python recipes/mlfd.py --config recipes/configs/mlfd_offline.yaml [--push_to_hub --hub_model_id user/name]

Any field of :class:`~hf_distill.trainers.mlfd_stages.MlfdStageArguments` can be set in the YAML file or
overridden on the command line. The stages are the library's (:func:`~hf_distill.trainers.mlfd_stages.run_mlfd_stages`):
each writes its output under ``output_dir`` and is skipped when that output is complete, so relaunching the same
command resumes an interrupted run. ``results.json`` holds every stage's metrics; with ``--push_to_hub`` each
student's embedder is published as ``<hub_model_id>-<domain>`` (the token comes from ``HF_TOKEN`` or
``hf auth login``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from hf_distill.data import load_domains
from hf_distill.recipe import Recipe, parse_recipe_args, setup_logging
from hf_distill.trainers.mlfd_stages import (
    RESULTS_FILE,
    MlfdStageArguments,
    push_students,
    run_mlfd_stages,
)


class MlfdRecipe(Recipe):
    """The MLFD recipe: the skeleton's parse, data and push around the library's four stages.

    Each stage builds its own training arguments from the stage arguments, so this recipe has one arguments
    object (it stands for both the recipe's and the method's arguments of :class:`Recipe`).

    Args:
        args: the stage arguments.
    """

    method = "mlfd"
    arguments_class = MlfdStageArguments
    # Stage-4 students over a cached trunk (MlfdStageArguments.trainable_from).
    supports_cached_trunk = True

    def __init__(self, args: MlfdStageArguments) -> None:
        super().__init__(args, args)

    def load_data(self) -> Any:
        """The domains named by ``benchmark`` and ``domains``."""
        return load_domains(self.recipe.benchmark, self.recipe.domains)

    def run(self) -> dict[str, Any]:
        """Run (or resume) the four stages, print the summary and push the students when asked."""
        self.benchmark = self.load_data()
        results = run_mlfd_stages(self.recipe, self.benchmark)
        for line in summary_lines(results, self.recipe.domains):
            print(line)
        print(f"results: {Path(self.recipe.output_dir) / RESULTS_FILE} ({results['seconds']} s)")
        if self.push:
            for domain, repo_id in push_students(self.recipe).items():
                print(f"pushed the {domain} student to {repo_id}")
        return results

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> dict[str, Any]:
        """Parse ``--config`` (YAML) and ``--key value`` overrides, then run.

        Args:
            argv: command-line arguments; defaults to ``sys.argv[1:]``.
        """
        (args,) = parse_recipe_args([MlfdStageArguments], argv)
        setup_logging()
        datasets.disable_progress_bars()
        return cls(args).run()


def summary_lines(results: dict[str, Any], domains: Sequence[str]) -> list[str]:
    """One line per domain: the baseline (its stage-1 teacher) next to the MLFD student, and its starting point."""
    lines = []
    for domain in domains:
        teacher, student = results["teachers"][domain], results["students"][domain]
        line = (
            f"{domain}: teacher/baseline val top-1 {teacher['val/top1']:.4f} test R@1 {teacher['test/R@1']:.4f} | "
            f"MLFD student val top-1 {student['val/top1']:.4f} test R@1 {student['test/R@1']:.4f}"
        )
        start = student.get("starting_point")
        if start:
            line += f" | untrained val top-1 {start['val/top1']:.4f} test R@1 {start['test/R@1']:.4f}"
        lines.append(line)
    return lines


if __name__ == "__main__":
    MlfdRecipe.main()
    sys.exit(0)
