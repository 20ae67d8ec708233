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
checkpoint and reports test retrieval and the k-NN probe. The runs (settings, evaluation images, target cache,
training) are ``benchmarks/unic_runs.py``'s; runner, store, tables, verdicts and plots ``benchmarks/sweep.py``'s.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from hf_distill.data import load_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402
import unic_runs  # noqa: E402
from sweep import Row  # noqa: E402
from unic_runs import SCRATCH_TEACHERS, Settings  # noqa: E402

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
FLAGS = ("benchmark", "steps", "eval_steps", "batch_size", "max_train_per_domain", "knn_index_per_domain")


def train_run(name: str, values: dict, seed: int) -> dict:
    """One row and seed: a frozen net (teacher or pretrained starting point), or a student."""
    torch.set_num_threads(1)
    if "student_offline_weights" in values:
        return unic_runs.recipe_run(name, values, seed, VARIANTS[values["variant"]], STUDENT_START)
    return unic_runs.trainer_run(values, seed, VARIANTS)


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
        unic_runs.prepare(rows, shared)
        page = sweep.run_page(
            page, "unic_results.py", argv or sys.argv[1:], rows, args.seeds, shared, train_run,
            output.with_suffix(".json"), accepted(), args.jobs,
            domains=list(load_benchmark(args.benchmark).domains), shared=shared, budget=budget,
        )  # fmt: skip
    write_page(page, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
