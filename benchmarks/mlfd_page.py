"""The MLFD page's rows (facets of each seed's record, ``mlfd_results.py``'s one sweep row) and what is built
from them: per-seed values, the tables, the plots and the setting in words."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import sweep
from mlfd_runs import UNSEEN_ROWS

ROWS = (
    ("starting_point", "starting point (untrained student)"),
    ("teacher", "individual teacher = dataset-specific student, no distillation"),
    ("joint_single", "joint teacher, single-level fusion"),
    ("joint_multi", "joint teacher, multi-level fusion"),
    ("student_single", "MLFD student, single-level fusion"),
    ("student_multi", "MLFD student, multi-level fusion"),
)
LABELS = dict(ROWS)
METRICS = (
    ("val/top1", "val top-1 (classifier head, held-out images of the training classes)"),
    ("test/R@1", "test R@1 (unseen classes, separate protocol)"),
    ("test/mP@5", "test mP@5 (unseen classes, separate protocol)"),
)
SHORT = {
    "starting_point": "starting point",
    "teacher": "no-distillation students",
    "student_single": "MLFD single-level",
    "student_multi": "MLFD multi-level",
}


def row_value(record: dict[str, Any], row: str, domain: str, metric: str) -> float | None:
    """One seed's value of ``metric`` for ``row`` on ``domain`` (None where the row has no such metric)."""
    single, multi = record["stages"]["single"], record["stages"]["multi"]
    if row == "starting_point":
        return single["students"][domain]["starting_point"].get(metric)
    if row == "teacher":
        return single["teachers"][domain].get(metric)
    if row.startswith("joint_"):
        variant = row.removeprefix("joint_")
        stages = single if variant == "single" else multi
        if metric == "val/top1":
            return stages["joint_teacher"][f"{domain}/val/top1"]
        return record["joint_test"][variant].get(f"{domain}/{metric}")
    return (single if row == "student_single" else multi)["students"][domain].get(metric)


TRAINED = ("teacher", "student_single", "student_multi")


def trained_runs(records: list[dict], domain: str) -> dict[str, list[dict]]:
    """The models trained for ``domain`` (stages 1 and 4) as sweep rows: per seed its metrics, val curve,
    selected step, training seconds and load, under ``<domain>/<row>``."""
    runs: dict[str, list[dict]] = {}
    for row in TRAINED:
        for record in records:
            stages = record["stages"]["multi" if row == "student_multi" else "single"]
            metrics = (stages["teachers"] if row == "teacher" else stages["students"])[domain]
            run = {**metrics, "seed": record["seed"], "seconds": metrics.get("train_seconds", 0.0)}
            runs.setdefault(f"{domain}/{row}", []).append({**run, "load": record["load"]})
    return runs


def schedule(arguments: dict[str, Any]) -> str:
    """The stage-1/4 budget rule in words."""
    if not arguments.get("stop_on_plateau"):
        return f"{arguments['teacher_epochs']:g} epochs"
    return (
        f"until val top-1 gained ≤ {100 * arguments['plateau_min_gain']:g} points over the last "
        f"{100 * arguments['plateau_fraction']:g} % of the steps (evaluated every epoch, never before epoch "
        f"{arguments.get('plateau_min_epochs', 0):g}, cap {arguments['teacher_epochs']:g} epochs; the best val "
        "epoch is kept, so the val top-1 table is the selection metric and test is the unbiased one)"
    )


def joint_schedule(arguments: dict[str, Any]) -> str:
    """Stage 3's budget in words (the same plateau rule, on the mean val top-1 over domains of the cached maps)."""
    if not arguments.get("stop_on_plateau"):
        return f"{arguments['joint_epochs']:g} epochs"
    return f"to the same plateau on its mean val top-1 (cap {arguments['joint_epochs']:g} epochs)"


def seed_values(records: list[dict], row: str, domains: list[str], column: str, metric: str) -> list[float]:
    """Per seed, the value in ``column`` (a domain, or ``mean``: the unweighted mean over ``domains``)."""
    values = []
    for record in records:
        if column == "mean":
            values.append(statistics.mean(row_value(record, row, domain, metric) for domain in domains))
        else:
            values.append(row_value(record, row, column, metric))
    return values


mean_std, cell = sweep.mean_std, sweep.cell


def beyond_noise(a: list[float], b: list[float]) -> bool:
    """Whether two means differ by more than the sum of their standard deviations (``sweep.verdict``)."""
    return sweep.verdict(a, b)[0] != sweep.NOISE


comparison = sweep.comparison


def main_table(records: list[dict], domains: list[str], metric: str) -> list[str]:
    """The page's table of ``metric`` (``sweep.table`` over each row's per-seed values)."""
    columns = [*domains, "mean"]
    page = {"rows": {row: [{} for _ in records] for row, _ in ROWS}}
    for row, _ in ROWS:
        for column in columns:
            for slot, value in zip(page["rows"][row], seed_values(records, row, domains, column, metric)):
                slot[column] = value
    return sweep.table(page, ROWS, columns, lambda column: column)


def delta_table(records: list[dict], domains: list[str]) -> list[str]:
    """MLFD students minus the no-distillation students and minus the starting point (* = beyond noise)."""
    lines = [
        "| MLFD student | vs | metric | " + " | ".join(domains) + " | mean |",
        "|---|---|---|" + "---:|" * (len(domains) + 1),
    ]
    for student in ("student_single", "student_multi"):
        for reference in ("teacher", "starting_point"):
            for metric, _ in METRICS[:2]:
                cells = [
                    comparison(
                        seed_values(records, student, domains, column, metric),
                        seed_values(records, reference, domains, column, metric),
                    )
                    for column in [*domains, "mean"]
                ]
                name = "no distillation" if reference == "teacher" else "starting point"
                lines.append(
                    f"| {LABELS[student].split(', ')[1]} | {name} | {metric} | " + " | ".join(cells) + " |"
                )
    return lines


def unseen_values(records: list[dict], row: str, domain: str, unseen: str) -> list[float]:
    return [record["unseen"][row][domain][f"{unseen}/R@1"] for record in records]


def unseen_table(records: list[dict], domains: list[str], unseen: list[str]) -> list[str]:
    targets = [*unseen, "mean"] if len(unseen) > 1 else unseen
    columns = [(domain, target) for domain in domains for target in targets]
    header = " | ".join(f"{domain} → {target}" for domain, target in columns)
    lines = [f"| exported embedder | {header} |", "|---|" + "---:|" * len(columns)]
    for row in UNSEEN_ROWS:
        label = LABELS[row].split(" = ")[0] if row == "teacher" else LABELS[row]
        if row == "teacher":
            label = "dataset-specific student, no distillation"
        cells = [cell(unseen_values(records, row, domain, target)) for domain, target in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plots(records: list[dict], domains: list[str], unseen: list[str], output: Path) -> list[Path]:
    """Per-domain bars of val top-1 and test R@1 for every row, and the universality check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    columns = [*domains, "mean"]
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(ROWS)
    for axis, (metric, title) in zip(axes, METRICS[:2]):
        for position, (row, label) in enumerate(ROWS):
            stats = [mean_std(seed_values(records, row, domains, column, metric)) for column in columns]
            axis.bar(
                [index + position * width for index in range(len(columns))],
                [100 * mean for mean, _ in stats],
                width,
                yerr=[100 * std for _, std in stats],
                label=label,
            )
        axis.set_xticks([index + 0.4 - width / 2 for index in range(len(columns))])
        axis.set_xticklabels(columns)
        axis.set_ylabel("%")
        axis.set_title(title.split(" (")[0])
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    paths.append(output.with_name(output.stem + "_per_domain.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(UNSEEN_ROWS)
    for position, row in enumerate(UNSEEN_ROWS):
        stats = [
            mean_std([statistics.mean(r["unseen"][row][domain][f"{t}/R@1"] for t in unseen) for r in records])
            for domain in domains
        ]
        axis.bar(
            [index + position * width for index in range(len(domains))],
            [100 * mean for mean, _ in stats],
            width,
            yerr=[100 * std for _, std in stats],
            label=SHORT[row],
        )
    axis.set_xticks([index + 0.4 - width / 2 for index in range(len(domains))])
    axis.set_xticklabels([f"{domain} student" for domain in domains])
    axis.set_ylabel(f"test R@1 on {', '.join(unseen)} (mean), %")
    axis.legend(fontsize=7)
    figure.tight_layout()
    paths.append(output.with_name(output.stem + "_universality.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def validation_plots(records: list[dict], domains: list[str], output: Path) -> tuple[dict, list, list[Path]]:
    """Per domain, the val top-1 curves of its trained models (``<page>_val_<domain>.png``); returns those
    models as a sweep page and rows (for the runs table) and the plots written."""
    plot_paths: list[Path] = []
    rows = [(f"{domain}/{row}", f"{domain}: {SHORT[row]}") for domain in domains for row in TRAINED]
    curves = {
        "rows": {name: runs for domain in domains for name, runs in trained_runs(records, domain).items()}
    }
    for domain in domains:
        mine = [(name, label.split(": ")[1]) for name, label in rows if name.startswith(f"{domain}/")]
        path = sweep.plot_curves(
            curves, mine, output.with_name(f"{output.stem}_val_{domain}.png"), f"{domain}: val top-1 (%)"
        )
        plot_paths += [path] if path else []
    return curves, rows, plot_paths


def setting_lines(arguments: dict[str, Any]) -> list[str]:
    """The page's ``## Setting`` section, from the stage arguments of a seed."""
    domains = arguments["domains"]
    backbones = dict(zip(domains, arguments["teacher_backbones"]))
    return [
        "## Setting",
        "",
        f"- benchmark `{arguments['benchmark']}`; MLFD datasets: "
        + ", ".join(f"{domain} (teacher and student `{backbones[domain]}`)" for domain in domains)
        + (
            ". Three kinds of image — grey photographs of clothing (6 training classes, 1,500 images each), "
            "handwritten digits (6 classes) and national flags (159 classes, about 5 images each) — and mixed "
            "teacher architectures (a ViT and CNNs), as in the paper; the shipped `recipes/configs/mlfd_offline.yaml`."
            if domains == ["clothing", "digits", "flags"]
            else "."
        ),
        f"- every model from scratch at {arguments['image_size']} px (train: resize {arguments['train_resize_size']}, "
        f"random crop, flip), on a fixed subset of at most {arguments['max_train_per_domain']} training images per "
        f"domain (the same for every seed); teachers and students {schedule(arguments)}, "
        f"lr {arguments['teacher_learning_rate']:g} cosine, batch {arguments['batch_size']}, AdamW wd "
        f"{arguments['weight_decay']:g}; joint teacher {joint_schedule(arguments)} on the cached "
        f"last-stage maps (adaptors {arguments['joint_adaptor_channels']}, output {arguments['joint_out_channels']} "
        f"channels, dropout {arguments['joint_dropout']}); student loss α = {arguments['alpha']}, "
        f"β = {arguments['beta']}, γ = {arguments['gamma']}, T = {arguments['temperature']}.",
        "- multi-level fusion: `joint_fusion_levels=1` (a stride-2 3×3 fusion block and a second fused map); the "
        "student distils its last two feature levels. At 32 px the CNN teachers' last map is 1×1, so the fusion "
        "grid is 1×1 and the two fused levels differ in depth, not in resolution.",
        "- the individual teachers (stage 1) and their cached maps (stage 2) are computed once per seed and "
        "shared by both fusion variants; the no-distillation row is the stage-1 model (see the script's docstring).",
        "- starting point: the untrained student of each seed, evaluated by the trainer's evaluator before the "
        "first step (the teacher's untrained model, built from the same seed, has the same backbone).",
        "- joint teacher rows: val top-1 on the cached val maps; test retrieval with the L2-normalised pooled "
        "deepest fused map, the frozen individual teachers run on each test image.",
        "",
    ]


def runs_lines(records: list[dict], curves: dict, rows: list) -> list[str]:
    """The ``## Runs`` section's tables: each trained model's run (when curves are stored), then each seed's times."""
    seconds = [record["seconds"] for record in records]
    lines = []
    if any(run.get("curve") for runs in curves["rows"].values() for run in runs):
        lines += [
            "Each trained model: optimizer steps run, the step of the epoch kept (best val top-1), its training "
            "seconds and the load average when its seed ended.",
            "",
            *sweep.runs_table(curves, rows),
            "",
            "Per seed:",
            "",
        ]
    lines += [
        "| seed | stages, single (s) | stages, multi (s) | joint test eval (s) | universality eval (s) | total (s) | load |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record, spent in zip(records, seconds):
        lines.append(
            f"| {record['seed']} | {spent['stages_single']:.0f} | {spent['stages_multi']:.0f} | "
            f"{spent['joint_test_single'] + spent['joint_test_multi']:.0f} | {spent['unseen']:.0f} | "
            f"{spent['total']:.0f} | {record['load']:.1f} |"
        )
    lines += [
        "",
        "Stage times are those of the run that produced the stage outputs (`seconds` in each variant's "
        "`results.json`; a relaunch skips finished stages and reuses them, and the single-level stages may have "
        "been run by `recipes/mlfd.py` with the same settings into the same folders).",
        "",
    ]
    return lines
