"""MLFD on the many-class benchmark: teachers, joint teachers, dataset-specific students and MLFD students, 3 seeds.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mlfd_results.py [--config recipes/configs/mlfd_offline.yaml]
        [--benchmark data/manydomain] [--seeds 0 1 2] [--jobs 3] [--threads 1] [--unseen typefaces photos]
        [--work-dir outputs/mlfd_results] [--output docs/results/mlfd.md] [key=value ...]

Every seed runs, in its own process (``--jobs`` at a time), the library's MLFD stages
(:func:`hf_distill.trainers.mlfd_stages.run_mlfd_stages`, what ``recipes/mlfd.py`` runs) twice:

- ``seed<N>/single``: the recipe config as given (single-level fusion, ``joint_fusion_levels: 0``);
- ``seed<N>/multi``: the same with ``joint_fusion_levels=1`` (multi-level fusion: two fused maps, the student
  distils its last two levels). Its ``teachers/`` and ``cache/`` are links to the single-level run's, so the
  individual teachers and their cached maps are trained and computed once per seed and feed both variants.

Rows, all with the same architectures, input size, schedule and evaluation:

- the starting point: each domain's untrained student (``starting_point`` in ``results.json``, measured before
  the first step by the trainer's evaluator);
- the individual teacher of each domain on its own dataset. In MLFD a domain's student has the architecture of
  that domain's teacher; trained with cross-entropy on the same images with the same schedule (the script
  refuses a config where ``teacher_*`` and ``student_*`` schedules differ) it *is* the dataset-specific student
  without distillation, so one training gives both rows of the paper's table;
- the joint teacher (single- and multi-level fusion): val top-1 of its heads on the cached val maps; test
  retrieval with its pooled deepest fused map (the frozen teachers run on the test images);
- the MLFD students (single- and multi-level fusion).

Metrics: top-1 of the classifier head on ``val`` (held-out images of the training classes) and retrieval R@1 /
mP@5 on ``test`` (unseen classes; each domain against its own index, the ``separate`` protocol: every row is a
dataset-specific model, so a merged index over domains would mix different embedding spaces). Universality
check: every exported embedder (and its untrained starting point) is also evaluated on ``--unseen`` domains that
no MLFD stage trained on. Each seed's record is stored under ``--work-dir`` and reused when the script is
relaunched with the same settings. Writes ``--output`` (Markdown, summary first), the JSON twin and PNG plots,
and prints the command and the load average (this runs on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlfd_runs  # noqa: E402
import sweep  # noqa: E402
from mlfd_runs import UNSEEN_ROWS  # noqa: E402
from sweep import Row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("single", "multi")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sweep.page_parser(
        __doc__,
        "docs/results/mlfd.md",
        work_dir="outputs/mlfd_results",
        helps={
            "--jobs": "seeds run at the same time (at most 2)",
            "--work-dir": "one sub-folder per seed",
            "--report-only": "rewrite --output and its plots from its JSON twin (no run; the recorded command is kept)",
        },
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="recipes/configs/mlfd_offline.yaml")
    parser.add_argument("--benchmark", default="data/manydomain")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per seed process")
    parser.add_argument(
        "--unseen", nargs="+", default=["typefaces", "photos"], help="domains for the universality check"
    )
    parser.add_argument(
        "--cap-epochs",
        type=float,
        default=30,
        help="run stages 1, 3 and 4 to their val top-1 plateau with this many epochs as the cap (0: the config's "
        "fixed schedule)",
    )
    parser.add_argument(
        "--min-epochs",
        type=float,
        default=10,
        help="never stop on a plateau before this (at 4 the rule stopped on the first noisy dip: see the page)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="stage-argument overrides as key=value (e.g. max_train_per_domain=500)"
    )
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- table


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


def claims(records: list[dict], domains: list[str]) -> list[str]:
    """Claim (e) of the results issue, on mean test R@1 (unseen classes) and mean val top-1, per fusion variant."""
    lines = []
    for student in ("student_single", "student_multi"):
        for metric, name in (("test/R@1", "mean test R@1"), ("val/top1", "mean val top-1")):
            lines.append(
                sweep.verdict_line(
                    f"(e) {LABELS[student]} beats the dataset-specific students, {name}",
                    seed_values(records, student, domains, "mean", metric),
                    seed_values(records, "teacher", domains, "mean", metric),
                )
            )
        lines.append(
            sweep.verdict_line(
                f"{LABELS[student]} beats its untrained starting point, mean test R@1",
                seed_values(records, student, domains, "mean", "test/R@1"),
                seed_values(records, "starting_point", domains, "mean", "test/R@1"),
            )
        )
    return lines


def summary(records: list[dict], domains: list[str], unseen: list[str]) -> list[str]:
    """The lines at the top of the page, computed from the figures (beyond noise = |Δ| > sum of the std)."""
    lines = []
    for student in ("student_single", "student_multi"):
        parts = []
        for reference in ("teacher", "starting_point"):
            for metric, metric_name in (("val/top1", "val top-1"), ("test/R@1", "test R@1")):
                better, worse = [], []
                for column in [*domains, "mean"]:
                    ours = seed_values(records, student, domains, column, metric)
                    theirs = seed_values(records, reference, domains, column, metric)
                    if beyond_noise(ours, theirs):
                        (better if statistics.mean(ours) > statistics.mean(theirs) else worse).append(column)
                delta = comparison(
                    seed_values(records, student, domains, "mean", metric),
                    seed_values(records, reference, domains, "mean", metric),
                )
                parts.append(
                    f"vs {SHORT[reference]}, {metric_name} {delta} (mean; better beyond noise: "
                    f"{', '.join(better) or 'none'}; worse: {', '.join(worse) or 'none'})"
                )
        lines.append(f"- **{LABELS[student]}**: " + "; ".join(parts) + ".")
    below = []
    for row in ("teacher", "student_single", "student_multi"):
        for domain in domains:
            ours = seed_values(records, row, domains, domain, "test/R@1")
            start = seed_values(records, "starting_point", domains, domain, "test/R@1")
            if statistics.mean(ours) < statistics.mean(start):
                below.append(f"{SHORT[row]} on {domain} ({comparison(ours, start)})")
    weak = []
    for domain in domains:
        teacher = seed_values(records, "teacher", domains, domain, "val/top1")
        joint = seed_values(records, "joint_single", domains, domain, "val/top1")
        if not (beyond_noise(joint, teacher) and statistics.mean(joint) > statistics.mean(teacher)):
            weak.append(
                f"{domain} (val top-1: individual teacher {cell(teacher)}, joint teacher {cell(joint)})"
            )
    lines.append(
        "- **Where not**: test R@1 below the untrained starting point: "
        + ("; ".join(below) if below else "none")
        + ". Joint teacher (single-level) not better than the individual teacher beyond noise: "
        + ("; ".join(weak) if weak else "none")
        + " — there distillation has nothing better to pass on."
    )

    def unseen_mean(record: dict, row: str) -> float:
        return statistics.mean(
            record["unseen"][row][domain][f"{target}/R@1"] for domain in domains for target in unseen
        )

    parts = []
    start = [unseen_mean(record, "starting_point") for record in records]
    for row in ("teacher", "student_single", "student_multi"):
        values = [unseen_mean(record, row) for record in records]
        parts.append(f"{SHORT[row]} {comparison(values, start)}")
    lines.append(
        f"- **Universality** (R@1 on {', '.join(unseen)}, never trained on; per seed the mean over the students and "
        "unseen domains, minus the same for the untrained starting points; * = beyond seed noise): "
        + "; ".join(parts)
        + "."
    )
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


def report(page: dict[str, Any], output: Path) -> str:
    results = page["setup"]
    records = page["rows"]["mlfd"]
    arguments = records[0]["stages"]["single"]["arguments"]
    domains, unseen = arguments["domains"], results["unseen"]
    backbones = dict(zip(domains, arguments["teacher_backbones"]))
    plot_paths = plots(records, domains, unseen, output)
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
    seconds = [record["seconds"] for record in records]
    lines = [
        "# MLFD on the many-class benchmark",
        "",
        "## Claims",
        "",
        *claims(records, domains),
        "",
        sweep.VERDICT_RULE,
        "",
        *[f"- {note}" for note in page.get("notes", [])],
        *summary(records, domains, unseen),
        "",
        *sweep.commands_block(
            results,
            "Produced by (Δ marked * when |Δ| > the sum of the two standard deviations, the issue's noise rule):",
        ),
        "On the shared 2-core development machine; per seed the time of every stage and evaluation is in the "
        f"Runs table (their sum, {max(spent['total'] for spent in seconds) / 60:.1f} min for the slowest seed, is "
        "a seed's wall time: the two fusion variants run one after the other). The last invocation of the script "
        f"took {results['wall_seconds'] / 60:.1f} min with {results['jobs']} seed process(es) at a time, "
        f"{results['threads']} thread each; load average {results['load_start']:.1f} at its start, "
        f"{results['load_end']:.1f} at its end (the other CPU slot ran another sweep). Figures in percent, mean ± "
        "sample std over seeds "
        f"{', '.join(map(str, results['seeds']))}.",
        "",
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
    for metric, title in METRICS:
        lines += [f"## {title}", "", *main_table(records, domains, metric), ""]
    lines += [
        "## Differences",
        "",
        "MLFD student minus reference, points (* = beyond seed noise).",
        "",
        *delta_table(records, domains),
        "",
        "## Universality check",
        "",
        f"Test R@1 (separate protocol) on domains no MLFD stage trained on ({', '.join(unseen)}), of each "
        "exported embedder and of its untrained starting point.",
        "",
        *unseen_table(records, domains, unseen),
        "",
        "## Plots",
        "",
        *[f"![{path.stem}]({path.name})" for path in plot_paths],
        "",
        "## Runs",
        "",
    ]
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
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def convert(page: dict[str, Any]) -> dict[str, Any]:
    """A page written before the shared runner (``records`` by seed) in the runner's shape."""
    if "records" not in page:
        return page
    setup = {key: value for key, value in page.items() if key != "records"}
    runs = [{**page["records"][str(seed)], "seed": seed} for seed in page["seeds"]]
    return {"setup": setup, "rows": {"mlfd": runs}}


def train_run(name: str, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """The sweep's training function: every stage of one seed (both fusion variants), see
    :func:`mlfd_runs.run_seed`."""
    return mlfd_runs.run_seed(
        settings["config"],
        settings["flags"],
        settings["benchmark"],
        seed,
        settings["work_dir"],
        settings["threads"],
        settings["unseen"],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    page = convert(sweep.load_page(output.with_suffix(".json")))
    if args.report_only:
        output.write_text(report(page, output))
        print(f"rewrote {output} from {output.with_suffix('.json')}")
        return 0
    settings, flags = mlfd_runs.stage_settings(args)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mlfd_results.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    print(command, flush=True)
    os.environ.update(OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    shared = {
        "settings": settings,
        "benchmark": args.benchmark,
        "unseen": args.unseen,
        "config": args.config,
        "flags": flags,
        "work_dir": args.work_dir,
        "threads": args.threads,
    }
    mlfd_runs.stamp_seed_folders(args.work_dir, args.seeds, settings, flags)
    load_start, start = os.getloadavg()[0], time.perf_counter()
    row = Row("mlfd", "the MLFD stages of one seed, both fusion variants")
    earlier_keys = {record.get("key") for record in page.get("rows", {}).get("mlfd", [])}
    page = sweep.run_sweep(
        [row], args.seeds, shared, train_run, output.with_suffix(".json"), jobs=args.jobs, page=page
    )
    # A page of the fixed 3-epoch schedule (one ``command``, no keyed runs) is replaced, not extended; so are
    # the commands of earlier invocations none of whose runs are still on the page (other settings).
    previous = page.get("setup", {}) if "commands" in page.get("setup", {}) else {}
    if not earlier_keys & {record["key"] for record in page["rows"]["mlfd"]}:
        previous = {}
    commands = sweep.record_command(previous, "mlfd_results.py", argv if argv is not None else sys.argv[1:])
    page["setup"] = {
        "commands": commands,
        "seeds": sorted(record["seed"] for record in page["rows"]["mlfd"]),
        "unseen": args.unseen,
        "jobs": min(args.jobs, sweep.MAX_JOBS),
        "threads": args.threads,
        "wall_seconds": time.perf_counter() - start,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    sweep.save_page(page, output.with_suffix(".json"))
    output.write_text(report(page, output))
    print(output.read_text())
    print(
        f"wall {page['setup']['wall_seconds'] / 60:.1f} min, load average {load_start:.1f} → {page['setup']['load_end']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
