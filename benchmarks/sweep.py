"""The one sweep runner of the results pages (``udon_results.py``, ``unic_results.py``, ``mlfd_results.py``).

A page is rows × seeds. A script declares its rows (:class:`Row`: a name, a label and the settings that differ)
and one training function; this module runs the missing (row, seed) runs in at most two worker processes, stores
each finished run in the page's JSON twin (the store: resumable, every run keyed by the hash of its settings and
seed, so a relaunch with the same settings skips it and a changed row is run again), and builds the page's
pieces from that JSON alone — Markdown tables of mean ± sample std over seeds, claim verdicts, bar plots and the
validation curve (merged R@1 against steps) of every row — so ``--report-only`` rebuilds a page without training.
It also holds what the scripts share around their rows: the shared flags (:func:`page_parser`), opening a page
(:func:`open_page`), recording an invocation and sweeping (:func:`run_page`) and the page's common sections
(verdict rule, commands, metric tables, plots and runs). Each script's runs live beside it (``<method>_runs.py``).

Records are flat: ``{"seed", "key", <metric key>: value, ..., "curve": [[step, value], ...],
"selected_step", "seconds", "load"}``; metric keys follow ``hf_distill.evaluation`` (``merged/<domain>/R@1``).

Verdict rule (the issue's noise rule): with ``d`` = mean(a) − mean(b) and ``n`` = std(a) + std(b) (sample stds
over seeds), a claim "a beats b" *holds* when ``d > n``, *does not hold* when ``d < −n`` and is *within seed
noise* otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shlex
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields, is_dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hf_distill.trainers import callbacks

MAX_JOBS = 2
HOLDS, DOES_NOT_HOLD, NOISE = "holds", "does not hold", "within seed noise"
CURVE_KEY, PRIMARY = "eval_merged/mean/R@1", "merged/mean/R@1"
VERDICT_RULE = (
    "Verdict rule: a claim holds when the difference of the means exceeds the sum of the two seed standard "
    "deviations, does not hold when it is below minus that sum, else it is within seed noise."
)


@dataclass(frozen=True)
class Row:
    """One row of a results table.

    Args:
        name: key of the row in the JSON.
        label: text of the row in the tables.
        settings: what this row sets (merged over the script's shared settings to make the run's settings).
        seeded: False for a deterministic row (a starting point, a frozen teacher): run once, seed 0.
    """

    name: str
    label: str
    settings: dict = field(default_factory=dict)
    seeded: bool = True


def run_key(settings: dict, seed: int) -> str:
    """The store key of one run: a hash of its settings (key order does not matter) and its seed.

    Args:
        settings: the run's full settings (JSON-serialisable).
        seed: the run's seed.
    """
    text = json.dumps({"settings": settings, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def accepted_names(*targets: Any) -> set[str]:
    """Keyword names the given classes or functions accept (dataclass fields, else signature parameters).

    Args:
        *targets: classes (``UdonConfig``, ``UdonTrainingArguments`` …) or functions.
    """
    names: set[str] = set()
    for target in targets:
        if is_dataclass(target):
            names |= {item.name for item in fields(target)}
        else:
            parameters = inspect.signature(target).parameters.values()
            names |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def dataclass_of(cls: type, values: dict) -> Any:
    """An instance of the dataclass ``cls`` from the entries of ``values`` that are its fields (others ignored)."""
    names = {item.name for item in fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in names})


def unsupported(settings: dict, accepted: set[str]) -> list[str]:
    """Setting names of a row that nothing in the library accepts yet (the row is skipped, not run).

    Args:
        settings: the row's settings.
        accepted: what the script and the library accept (see :func:`accepted_names`).
    """
    return sorted(set(settings) - accepted)


# --------------------------------------------------------------------------------------- command line


def page_parser(
    doc: str,
    output: str,
    rows: Iterable[str] | None = None,
    output_flag: str = "--output",
    work_dir: str | None = None,
    merge: bool = False,
    helps: dict[str, str] | None = None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """The flags the results scripts share, in this order: ``--rows`` (when ``rows`` are given), ``--seeds``,
    ``--jobs``, ``--work-dir`` (when given a default), the page (``output_flag``), ``--report-only`` and
    ``--merge`` (when ``merge``).

    Args:
        doc: the script's docstring (its first line describes the parser).
        output: the page's default path.
        helps: help texts replacing the shared ones, by flag (``"--jobs"`` …).
        **kwargs: further ``argparse.ArgumentParser`` arguments.
    """
    helps = {
        "--jobs": f"worker processes (at most {MAX_JOBS})",
        "--report-only": "rebuild the page from its JSON",
        **(helps or {}),
    }
    parser = argparse.ArgumentParser(description=doc.split("\n")[0], **kwargs)
    if rows is not None:
        parser.add_argument("--rows", nargs="+", default=list(rows), choices=list(rows))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=MAX_JOBS, help=helps["--jobs"])
    if work_dir is not None:
        parser.add_argument("--work-dir", default=work_dir, help=helps.get("--work-dir"))
    parser.add_argument(output_flag, default=output)
    parser.add_argument("--report-only", action="store_true", help=helps["--report-only"])
    if merge:
        parser.add_argument(
            "--merge",
            nargs="+",
            default=[],
            metavar="JSON",
            help="first add the runs of these stores (invocations run side by side with another --output)",
        )
    return parser


def add_setting_flags(parser: argparse.ArgumentParser, defaults: dict, dashed: bool = False) -> None:
    """One flag per shared setting (``--name``, or ``--na-me`` when ``dashed``), typed by its default."""
    for name, value in defaults.items():
        parser.add_argument(
            f"--{name.replace('_', '-') if dashed else name}", type=type(value), default=value
        )


def budget_rule(
    who: str, gain: float, fraction: float, every: int, cap: int, min_steps: int | None = None
) -> str:
    """The page's budget rule (the plateau rule of ``stop_on_plateau``) in words.

    Args:
        who: what the rule applies to (``"every trained row"``).
        gain / fraction: the plateau threshold and window (fractions).
        every: steps between two evaluations.
        cap: the most steps a run may take.
        min_steps: the step before which no run stops (None: not named).
    """
    floor = f", never before step {min_steps}" if min_steps is not None else ""
    return (
        f"{who} stops once validation merged R@1 gained ≤ {100 * gain:.1f} points over the last "
        f"{100 * fraction:.0f} % of its steps (evaluated every {every} steps{floor}, cap {cap}); the best "
        "validation checkpoint is tested."
    )


# ---------------------------------------------------------------------------------------------- store


def load_page(path: Path) -> dict:
    """The page's JSON (``{"setup": ..., "rows": {row: [records]}}``), or an empty page."""
    if path.exists():
        return json.loads(path.read_text())
    return {"setup": {}, "rows": {}}


def save_page(page: dict, path: Path) -> None:
    """Write the page's JSON atomically (an interrupted write never leaves half a store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(page, indent=1))
    os.replace(temporary, path)


def record_command(setup: dict, script: str, argv: Sequence[str]) -> list[str]:
    """Add this invocation to the page's ``commands`` (every distinct one that wrote runs to the store, in order).

    A page is often filled by several invocations (regimes, later seeds); each is kept so every row's command
    can be rerun. A store written before this list (one ``command``) keeps that command first.
    """
    command = f"HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/{script} " + shlex.join(argv)
    commands = setup.setdefault("commands", [setup["command"]] if setup.get("command") else [])
    setup.pop("command", None)
    if command not in commands:
        commands.append(command)
    return commands


def done_keys(page: dict) -> set[str]:
    return {record["key"] for records in page["rows"].values() for record in records if "key" in record}


def add_record(page: dict, row: str, record: dict) -> None:
    """Store ``record`` under ``row`` (replacing a record with the same key), runs kept in seed order."""
    records = [old for old in page["rows"].get(row, []) if old.get("key") != record.get("key")]
    records.append(record)
    page["rows"][row] = sorted(records, key=lambda item: item.get("seed", 0))


def merge_page(page: dict, other: dict) -> dict:
    """Add to ``page`` the runs of ``other`` (a page filled by another invocation into another store, e.g. two
    sweeps of one page run side by side) and its commands; a run whose key ``page`` already holds is kept as is.
    """
    page.setdefault("rows", {})
    done = done_keys(page)
    for row, records in other.get("rows", {}).items():
        for record in records:
            if record.get("key") not in done:
                add_record(page, row, record)
    commands = page.setdefault("setup", {}).setdefault("commands", [])
    commands += [c for c in other.get("setup", {}).get("commands", []) if c not in commands]
    return page


def open_page(
    output: Path, convert: Callable[[dict], dict] = lambda page: page, merge: Sequence[str] = ()
) -> dict:
    """The page's store (``output``'s JSON twin) in the runner's shape (``convert``), with the runs of the
    ``merge`` stores added (then saved)."""
    page = convert(load_page(output.with_suffix(".json")))
    for other in merge:
        merge_page(page, load_page(Path(other)))
    if merge:
        save_page(page, output.with_suffix(".json"))
    return page


def run_page(page: dict, script: str, argv: Sequence[str], *arguments: Any, **setup: Any) -> dict:
    """Record this invocation of ``script`` and ``setup`` on the page, then :func:`run_sweep` into it
    (``*arguments``: :func:`run_sweep`'s, ``page`` left out)."""
    record_command(page["setup"], script, argv)
    page["setup"].update(setup)
    return run_sweep(*arguments, page=page)


def run_sweep(
    rows: Sequence[Row],
    seeds: Sequence[int],
    shared: dict,
    train: Callable[[str, dict, int], dict],
    path: Path,
    accepted: set[str] | None = None,
    jobs: int = MAX_JOBS,
    page: dict | None = None,
) -> dict:
    """Run every (row, seed) not yet in the store at ``path``; store each run as it finishes.

    Args:
        rows: the rows to run.
        seeds: seeds of the seeded rows (deterministic rows run once, seed 0).
        shared: settings every row shares (a row's settings override them).
        train: ``train(row_name, settings, seed) -> metrics record``; a module-level function (it is pickled
            into the worker processes).
        path: the page's JSON (the store).
        accepted: setting names the library accepts; rows setting others are skipped and listed in
            ``page["skipped"]`` instead of crashing the sweep. None: no check.
        jobs: worker processes, at most :data:`MAX_JOBS`; 1 runs in this process.
        page: the page to add to (default: the one stored at ``path``).

    Returns:
        the page, also saved at ``path``.
    """
    page = load_page(path) if page is None else page
    page.setdefault("rows", {})
    page["skipped"] = {}
    done = done_keys(page)
    pending = []
    for row in rows:
        settings = {**shared, **row.settings}
        missing = unsupported(row.settings, accepted) if accepted is not None else []
        if missing:
            page["skipped"][row.name] = f"settings the library does not accept yet: {', '.join(missing)}"
            print(f"skipping {row.name}: {page['skipped'][row.name]}", flush=True)
            continue
        keys = {seed: run_key(settings, seed) for seed in (seeds if row.seeded else [0])}
        # Runs of this row made with other settings no longer belong on the page; runs of seeds this invocation
        # does not ask for stay (a page's seeds may be filled by several invocations).
        page["rows"][row.name] = [
            r for r in page["rows"].get(row.name, []) if r.get("key") == run_key(settings, r.get("seed", 0))
        ]
        pending += [(row.name, settings, seed, key) for seed, key in keys.items() if key not in done]
    save_page(page, path)
    start = time.perf_counter()

    def finish(name: str, seed: int, key: str, record: dict) -> None:
        add_record(page, name, {**record, "seed": seed, "key": key})
        save_page(page, path)
        value = record.get(PRIMARY)
        shown = f"{100 * value:.1f}" if isinstance(value, float) else "—"
        print(f"[{time.perf_counter() - start:6.0f} s] {name} seed {seed}: merged R@1 {shown}", flush=True)

    jobs = max(1, min(jobs, MAX_JOBS))
    if jobs == 1:
        for name, settings, seed, key in pending:
            finish(name, seed, key, timed(train, name, settings, seed))
        return page
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(timed, train, name, settings, seed): (name, seed, key)
            for name, settings, seed, key in pending
        }
        for future in as_completed(futures):
            finish(*futures[future], future.result())
    return page


def timed(train: Callable[[str, dict, int], dict], name: str, settings: dict, seed: int) -> dict:
    """``train(name, settings, seed)`` plus its wall seconds and the load average at its end."""
    start = time.perf_counter()
    record = dict(train(name, settings, seed))
    record.setdefault("seconds", time.perf_counter() - start)
    record.setdefault("load", os.getloadavg()[0])
    return record


# --------------------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def values(page: dict, row: str, key: str) -> list[float]:
    """Per seed, ``key`` of ``row``'s records (rows missing the key give an empty list)."""
    return [record[key] for record in page["rows"].get(row, []) if key in record]


def cell(items: Sequence[float], scale: float = 100.0) -> str:
    """``mean ± std`` in percent (``—`` when there is nothing)."""
    if not items:
        return "—"
    mean, std = mean_std(items)
    return f"{scale * mean:.1f} ± {scale * std:.1f}"


def verdict(a: Sequence[float], b: Sequence[float]) -> tuple[str, float, float]:
    """Whether "a beats b": (:data:`HOLDS` / :data:`DOES_NOT_HOLD` / :data:`NOISE`, difference, noise).

    The difference and the noise (sum of the two stds) are in the values' units.

    Args:
        a: per-seed values of the row the claim is about.
        b: per-seed values of the reference row.
    """
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    delta, noise = mean_a - mean_b, std_a + std_b
    if delta > noise:
        return HOLDS, delta, noise
    if delta < -noise:
        return DOES_NOT_HOLD, delta, noise
    return NOISE, delta, noise


def comparison(a: Sequence[float], b: Sequence[float]) -> str:
    """``mean(a) − mean(b)`` in points, marked ``*`` when beyond seed noise (the verdict rule)."""
    delta = 100 * (statistics.mean(a) - statistics.mean(b))
    return f"{delta:+.1f}{'*' if verdict(a, b)[0] != NOISE else ''}"


def verdict_line(claim: str, a: Sequence[float], b: Sequence[float], scale: float = 100.0) -> str:
    """A Markdown verdict line: ``- **claim**: holds (+2.1 points, sum of stds 0.8).`` ``a`` is a trained row: with
    one seed there is no seed noise to judge by, so the line gives the difference and no verdict."""
    if not a or not b:
        return f"- **{claim}**: not measured."
    word, delta, noise = verdict(a, b)
    if len(a) < 2:
        return f"- **{claim}**: one seed only, no verdict ({scale * delta:+.1f} points)."
    return f"- **{claim}**: {word} ({scale * delta:+.1f} points, sum of stds {scale * noise:.1f})."


def claim_line(page: dict, claim: str, row: str, reference: str, key: str = PRIMARY) -> str:
    """:func:`verdict_line` of "``row`` beats ``reference``" on ``key`` of the page's runs."""
    return verdict_line(claim, values(page, row, key), values(page, reference, key))


def measured(lines: Iterable[str]) -> list[str]:
    """The verdict lines whose rows are on the page (those saying "not measured." left out)."""
    return [line for line in lines if not line.endswith("not measured.")]


def table(
    page: dict,
    rows: Iterable[tuple[str, str]],
    columns: Sequence[str],
    key: Callable[[str], str],
    first: str = "row",
) -> list[str]:
    """Markdown table: one line per (row name, label) present in the page, one column per entry of
    ``columns`` (``key(column)`` names the metric), the last column in bold, cells ``mean ± std``."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, label in rows:
        if not page["rows"].get(name):
            continue
        cells = [cell(values(page, name, key(column))) for column in columns]
        cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def metric_tables(
    page: dict,
    title: str,
    rows: Sequence[tuple[str, str]],
    columns: Sequence[str],
    metrics: Iterable[tuple[str, str, str]],
    first: str,
) -> list[str]:
    """One :func:`table` per ``(protocol, metric, heading)`` under ``## {title}: {heading}``, the cells keyed
    ``{protocol}/{column}/{metric}``."""
    lines = []
    for protocol, metric, heading in metrics:
        lines += [f"## {title}: {heading}", ""]
        lines += table(page, rows, columns, lambda c, p=protocol, m=metric: f"{p}/{c}/{m}", first) + [""]
    return lines


def page_notes(page: dict, *keys: str) -> list[str]:
    """The page's stored notes (under each of ``keys``) as Markdown items."""
    return [f"- {note}" for key in keys for note in page.get(key, [])]


def skipped_lines(page: dict) -> list[str]:
    """One Markdown item per row the last sweep skipped, with why."""
    return [f"- row `{name}` skipped: {why}" for name, why in page.get("skipped", {}).items()]


def commands_block(setup: dict, intro: str = "Produced by:") -> list[str]:
    """``intro`` and the page's recorded commands in a code block (a store's single ``command`` before the list)."""
    return [intro, "", "```", *setup.get("commands", [setup.get("command", "")]), "```", ""]


# -------------------------------------------------------------------------------------------- curves


def validation_curve(log_history: list[dict], key: str = CURVE_KEY) -> list[list[float]]:
    """``[[step, value], ...]`` of the logged validation metric (default: merged mean R@1), step 0 included."""
    return callbacks.validation_curve(log_history, key)


selected_step = callbacks.selected_step


def recipe_curve(output_dir: Path) -> dict:
    """A recipe run's validation curve (step-0 starting point included), the step of the checkpoint that
    ``load_best_model_at_end`` kept (from the last checkpoint's trainer state: the starting point is on the
    curve but is no checkpoint, so the curve's best point need not be the model tested) and the steps run."""
    output_dir = Path(output_dir)
    history = json.loads((output_dir / "log_history.json").read_text())
    states = sorted(
        output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1])
    )
    best = json.loads(states[-1].read_text()).get("best_model_checkpoint") if states else None
    return {
        "curve": callbacks.validation_curve(history),
        "selected_step": selected_step(best),
        "steps": history[-1].get("step"),
    }


# --------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(
    page: dict,
    rows: Iterable[tuple[str, str]],
    columns: Sequence[str],
    key: Callable[[str], str],
    path: Path,
    ylabel: str,
) -> Path:
    """Grouped bars (mean ± std over seeds) of every row for every column."""
    import numpy as np

    plt = _pyplot()
    present = [(name, label) for name, label in rows if page["rows"].get(name)]
    figure, axis = plt.subplots(figsize=(13, 5.2))
    width = 0.8 / max(len(present), 1)
    for index, (name, label) in enumerate(present):
        stats = [mean_std(values(page, name, key(c)) or [float("nan")]) for c in columns]
        positions = np.arange(len(columns)) + (index - len(present) / 2 + 0.5) * width
        axis.bar(positions, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats], label=label)
    axis.set_xticks(np.arange(len(columns)), columns)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(page: dict, rows: Iterable[tuple[str, str]], path: Path, ylabel: str) -> Path | None:
    """Validation metric against steps for every row with a stored curve (one line per seed, the selected
    checkpoint marked), so a reader sees each plateau. None when no row has a curve."""
    plt = _pyplot()
    present = [(n, label) for n, label in rows if any(r.get("curve") for r in page["rows"].get(n, []))]
    if not present:
        return None
    figure, axis = plt.subplots(figsize=(10, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, label) in enumerate(present):
        colour = colours[index % len(colours)]
        for seed_index, record in enumerate(page["rows"][name]):
            curve = record.get("curve") or []
            if not curve:
                continue
            steps, points = zip(*curve)
            axis.plot(
                steps, [100 * v for v in points], color=colour, lw=1, label=label if seed_index == 0 else None
            )
            chosen = dict(map(tuple, curve)).get(record.get("selected_step"))
            if chosen is not None:
                axis.plot([record["selected_step"]], [100 * chosen], "o", color=colour, ms=4)
    axis.set(xlabel="optimizer step", ylabel=ylabel, title="validation curves (dot: selected checkpoint)")
    axis.legend(fontsize="x-small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def runs_table(page: dict, rows: Iterable[tuple[str, str]]) -> list[str]:
    """One line per stored run: steps trained, selected step, seconds and load average."""
    lines = ["| row | seed | steps | selected step | s | load |", "|---|---:|---:|---:|---:|---:|"]
    for name, _ in rows:
        for record in page["rows"].get(name, []):
            steps = record.get("steps", "—")
            chosen = record.get("selected_step") or "—"
            lines.append(
                f"| {name} | {record.get('seed', 0)} | {steps} | {chosen} | "
                f"{record.get('seconds', 0):.0f} | {record.get('load', 0):.1f} |"
            )
    return lines


def plots_and_runs(
    page: dict,
    bar_rows: Sequence[tuple[str, str]],
    rows: Sequence[tuple[str, str]],
    domains: Sequence[str],
    output: Path,
    name: str,
) -> list[str]:
    """The ``## Plots`` and ``## Runs`` sections: bars of merged test R@1 per domain of ``bar_rows``
    (``<name>_per_domain.png`` beside ``output``), the validation curves of ``rows`` (``<name>_validation.png``,
    when any row has one) and the table of ``rows``' runs."""
    bars, curves = (
        output.with_name(f"{output.stem}_per_domain.png"),
        output.with_name(f"{output.stem}_validation.png"),
    )
    plot_bars(page, bar_rows, [*domains, "mean"], lambda c: f"merged/{c}/R@1", bars, "merged test R@1 (%)")
    lines = ["## Plots", "", f"![merged R@1 per domain]({bars.name})", ""]
    if plot_curves(page, rows, curves, "val merged R@1 (%)"):
        lines += [f"![validation merged R@1 against steps]({curves.name})", ""]
    return lines + ["## Runs", "", *runs_table(page, rows), ""]
