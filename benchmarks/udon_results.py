"""UDON against the UnED baselines on the offline benchmark: 3 seeds each, mean ± std, written to
``docs/results/udon.md``.

    python benchmarks/udon_results.py [--config recipes/configs/udon_results.yaml] [--seeds 0 1 2]

Runs USCRR, UJCRR, UDON without dynamic sampling and UDON with ``recipes/udon.py`` (one process, in turn),
then tabulates merged R@1 and mP@5 per domain and their unweighted mean over domains, and the final dynamic
sampling probabilities of UDON. The per-run outputs stay under ``--output_root``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))

import udon as udon_recipe  # noqa: E402

from hf_distill.trainers.callbacks import sampling_curves  # noqa: E402

VARIANTS = ("uscrr", "ujcrr", "udon_no_dynamic", "udon")
LABELS = {
    "uscrr": "USCRR",
    "ujcrr": "UJCRR",
    "udon_no_dynamic": "UDON w/o dynamic sampling",
    "udon": "UDON",
}


def run_one(config: str, benchmark: str | None, variant: str, seed: int, output_dir: Path) -> dict:
    """Train and evaluate one variant/seed; returns test metrics plus the final sampling probabilities."""
    argv = ["--config", config, "--variant", variant, "--seed", str(seed), "--output_dir", str(output_dir)]
    if benchmark is not None:
        argv += ["--benchmark", benchmark]
    start = time.perf_counter()
    metrics = udon_recipe.main(argv)
    elapsed = time.perf_counter() - start
    state = json.loads((output_dir / "run_summary.json").read_text())
    log_history = json.loads((output_dir / "log_history.json").read_text())
    _, probabilities = sampling_curves(log_history)
    final_p = {name: values[-1] for name, (_, values) in probabilities.items()}
    return {"metrics": metrics, "seconds": elapsed, "final_p": final_p, "steps": state["global_step"]}


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in percent (sample standard deviation)."""
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def table(results: dict[str, list[dict]], metric: str, domains: list[str]) -> list[str]:
    """Markdown table of ``merged/<domain>/<metric>`` for every variant."""
    header = "| method | " + " | ".join(domains) + " | **mean** |"
    lines = [header, "|" + "---|" * (len(domains) + 2)]
    for variant, runs in results.items():
        cells = [mean_std([run["metrics"][f"merged/{d}/{metric}"] for run in runs]) for d in domains]
        mean = mean_std([run["metrics"][f"merged/mean/{metric}"] for run in runs])
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + f" | **{mean}** |")
    return lines


def comparison(results: dict[str, list[dict]], domains: list[str]) -> list[str]:
    """Sentences comparing UDON's mean merged R@1 with the best baseline, overall and per domain."""
    if "udon" not in results or len(results) < 2:
        return []

    def mean_of(variant: str, key: str) -> float:
        return statistics.mean(run["metrics"][key] for run in results[variant])

    others = [variant for variant in results if variant != "udon"]
    lines = ["## UDON against the best other method (merged R@1, percentage points)", ""]
    for domain in [*domains, "mean"]:
        key = f"merged/{domain}/R@1"
        best = max(others, key=lambda variant: mean_of(variant, key))
        delta = 100 * (mean_of("udon", key) - mean_of(best, key))
        lines.append(f"- {domain}: {delta:+.1f} against {LABELS[best]}")
    lines.append("")
    return lines


def write_report(
    results: dict[str, list[dict]], command: str, config: str, path: Path, curves: Path | None
) -> None:
    """Write the markdown report."""
    some_run = next(iter(results.values()))[0]
    domains = sorted(
        {key.split("/")[1] for key in some_run["metrics"] if key.startswith("merged/")} - {"mean"}
    )
    seeds = len(next(iter(results.values())))
    total_minutes = sum(run["seconds"] for runs in results.values() for run in runs) / 60
    lines = [
        "# UDON on the offline benchmark",
        "",
        f"Test split (unseen classes), merged protocol (every query against the union of all domains' indexes), "
        f"in percent, mean ± std over {seeds} seeds. Setting: `{config}` — a reduced-step configuration "
        f"({some_run['steps']} optimizer steps per run) chosen so that the whole sweep fits in about 20 minutes "
        "on a shared 2-core CPU machine; it is not the paper's schedule.",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"Total training + evaluation time of the {sum(len(r) for r in results.values())} runs: "
        f"{total_minutes:.1f} minutes.",
        "",
        "## R@1",
        "",
        *table(results, "R@1", domains),
        "",
        "## mP@5",
        "",
        *table(results, "mP@5", domains),
        "",
    ]
    lines += comparison(results, domains)
    if "udon" in results and results["udon"][0]["final_p"]:
        names = sorted(results["udon"][0]["final_p"])
        lines += [
            "## UDON's sampling probabilities at the end of training",
            "",
            "| seed | " + " | ".join(names) + " |",
            "|" + "---|" * (len(names) + 1),
        ]
        for index, run in enumerate(results["udon"]):
            lines.append(f"| {index} | " + " | ".join(f"{run['final_p'][n]:.3f}" for n in names) + " |")
        lines.append("")
    if curves is not None:
        lines += [f"![UDON per-domain losses and sampling probabilities, first seed]({curves.name})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/configs/udon_results.yaml")
    parser.add_argument("--benchmark", default=None, help="benchmark directory (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--output_root", default="outputs/udon_results")
    parser.add_argument("--report", default="docs/results/udon.md")
    parser.add_argument(
        "--from_json",
        default=None,
        help="rewrite the report from a previous run's saved results, without training",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    results: dict[str, list[dict]] = {}
    if args.from_json is not None:
        results = json.loads(Path(args.from_json).read_text())
    for variant in args.variants if args.from_json is None else []:
        for seed in args.seeds:
            output_dir = Path(args.output_root) / f"{variant}_seed{seed}"
            shutil.rmtree(output_dir, ignore_errors=True)
            run = run_one(args.config, args.benchmark, variant, seed, output_dir)
            results.setdefault(variant, []).append(run)
            print(
                f"{variant} seed {seed}: merged R@1 {run['metrics']['merged/mean/R@1']:.4f}, "
                f"mP@5 {run['metrics']['merged/mean/mP@5']:.4f} ({run['seconds']:.0f} s)",
                flush=True,
            )
    report = Path(args.report)
    curves = None
    if "udon" in results:
        source = Path(args.output_root) / f"udon_seed{args.seeds[0]}" / "sampling_curves.png"
        if source.is_file():
            curves = report.with_name("udon_sampling_curves.png")
            report.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, curves)
    argv = sys.argv[1:]
    if "--from_json" in argv:  # the command that produced the numbers, not the one that re-tabulated them
        index = argv.index("--from_json")
        argv = argv[:index] + argv[index + 2 :]
    command = "python benchmarks/udon_results.py " + " ".join(argv)
    write_report(results, command.strip(), args.config, report, curves)
    if args.from_json is None:
        report.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
