"""MLFD on the many-class benchmark: teachers, joint teachers, dataset-specific students and MLFD students, 3 seeds.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mlfd_results.py [--config recipes/configs/mlfd_offline.yaml]
        [--benchmark data/manydomain] [--seeds 0 1 2] [--jobs 3] [--threads 1] [--unseen typefaces photos]
        [--work-dir outputs/mlfd_results] [--output docs/results/mlfd.md] [key=value ...]

Every seed runs, in its own process (``--jobs`` at a time), the library's MLFD stages twice, single- and
multi-level fusion, the individual teachers and their cached maps shared by both (``benchmarks/mlfd_runs.py``).

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
import mlfd_page  # noqa: E402
import mlfd_runs  # noqa: E402
import sweep  # noqa: E402
from mlfd_page import LABELS, SHORT, beyond_noise, cell, comparison, seed_values  # noqa: E402
from sweep import Row  # noqa: E402


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


def claims(records: list[dict], domains: list[str]) -> list[str]:
    """Claim (e) of the results issue, on mean test R@1 (unseen classes) and mean val top-1, per fusion variant."""

    def claim(text: str, row: str, reference: str, metric: str) -> str:
        means = (seed_values(records, name, domains, "mean", metric) for name in (row, reference))
        return sweep.verdict_line(text, *means)

    lines = []
    for student in ("student_single", "student_multi"):
        for metric, name in (("test/R@1", "mean test R@1"), ("val/top1", "mean val top-1")):
            text = f"(e) {LABELS[student]} beats the dataset-specific students, {name}"
            lines.append(claim(text, student, "teacher", metric))
        text = f"{LABELS[student]} beats its untrained starting point, mean test R@1"
        lines.append(claim(text, student, "starting_point", "test/R@1"))
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


def report(page: dict[str, Any], output: Path) -> str:
    results = page["setup"]
    records = page["rows"]["mlfd"]
    arguments = records[0]["stages"]["single"]["arguments"]
    domains, unseen = arguments["domains"], results["unseen"]
    plot_paths = mlfd_page.plots(records, domains, unseen, output)
    curves, rows, paths = mlfd_page.validation_plots(records, domains, output)
    plot_paths += paths
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
        *sweep.page_notes(page, "notes"),
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
        *mlfd_page.setting_lines(arguments),
    ]
    for metric, title in mlfd_page.METRICS:
        lines += [f"## {title}", "", *mlfd_page.main_table(records, domains, metric), ""]
    lines += [
        "## Differences",
        "",
        "MLFD student minus reference, points (* = beyond seed noise).",
        "",
        *mlfd_page.delta_table(records, domains),
        "",
        "## Universality check",
        "",
        f"Test R@1 (separate protocol) on domains no MLFD stage trained on ({', '.join(unseen)}), of each "
        "exported embedder and of its untrained starting point.",
        "",
        *mlfd_page.unseen_table(records, domains, unseen),
        "",
        "## Plots",
        "",
        *[f"![{path.stem}]({path.name})" for path in plot_paths],
        "",
        "## Runs",
        "",
    ]
    lines += mlfd_page.runs_lines(records, curves, rows)
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
    config, flags, benchmark = settings["config"], settings["flags"], settings["benchmark"]
    return mlfd_runs.run_seed(config, flags, benchmark, seed, settings["work_dir"], settings["threads"], settings["unseen"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    page = sweep.open_page(output, convert)
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
    shared = {"settings": settings, "benchmark": args.benchmark, "unseen": args.unseen, "config": args.config,
              "flags": flags, "work_dir": args.work_dir, "threads": args.threads}  # fmt: skip
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
