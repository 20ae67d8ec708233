"""UDON and its baselines on the many-class benchmark, 3 seeds, each row run to its validation plateau (issue 18).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/udon_results.py [--rows udon ujcrr ...] [--seeds 0 1 2]
        [--jobs 2] [--max_steps 8000] [--report docs/results/udon.md]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/udon_results.py --report-only   # rebuild the page from its JSON

Two regimes. (i) ``features``: every row trains heads + the residual adapter of ``backbone_source="features"``
on cached frozen EfficientNet-Lite0 features (``hf_distill.data.frozen_features``), through ``UdonTrainer``.
(ii) ``ft_*`` rows: the top stages of Lite0 fine-tuned over a cached trunk (``trainable_from``), through
``recipes/udon.py``; rows whose settings the library does not accept yet are skipped and listed on the page.
Every trained row shares the budget rule (``stop_on_plateau``: stop once validation merged R@1 gained at most
0.3 points over the last 20 % of the steps, ``max_steps`` the cap), keeps its best validation checkpoint and
reports test (unseen classes). The runs themselves are ``benchmarks/udon_runs.py``'s; the runner, store, tables,
verdicts and plots ``benchmarks/sweep.py``'s.
"""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402
import udon_runs  # noqa: E402
from sweep import Row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRIMARY = "merged/mean/R@1"
HOLDOUT = "emoji"
METRICS = [
    (p, m, f"{p} test {m} (%)") for p, m in (("merged", "R@1"), ("merged", "mP@5"), ("separate", "R@1"))
]
SHARED = {
    "benchmark": "data/manydomain", "image_size": 64, "max_steps": 8000, "eval_steps": 400, "batch_size": 64,
    "learning_rate": 5e-3, "backbone_lr_ratio": 0.1, "frozen_epochs": 0.06, "update_every": 100,
    "logging_steps": 100, "adapter_layers": 1, "adapter_hidden": 256, "plateau_fraction": 0.2,
    "plateau_min_gain": 0.003, "plateau_min_steps": 800, "output_root": "outputs/udon_results",
}  # fmt: skip
START = [Row("start_full", "starting point: Lite0 features, 1280-d", {"start": "full"}, seeded=False),
         Row("start_pca64", "starting point: PCA-64", {"start": "pca64"}, seeded=False)]  # fmt: skip
FEATURES = [
    Row("uscrr", "USCRR", {"variant": "uscrr"}),
    Row("ujcrr", "UJCRR", {"variant": "ujcrr"}),
    Row("uscds", "USCDS", {"variant": "uscds"}),
    Row("naive", "naive multi-teacher (frozen specialists → student)", {"variant": "naive"}),
    Row("udon_no_dynamic", "UDON w/o dynamic sampling", {"variant": "udon_no_dynamic"}),
    Row("udon", "UDON", {"variant": "udon"}),
    Row("udon_backbone_kd", "UDON, authors' gradient path (KD reaches the adapter)", {"variant": "udon", "distillation_reaches_backbone": True}),
    Row("udon_summary_window", "UDON, released code's sampling window", {"variant": "udon", "sampling_loss_window": "summary"}),
]  # fmt: skip
WIDTHS = [  # issue 21: one Matryoshka head against dedicated narrow heads, trained the same way (regime i)
    Row("udon_matryoshka", "UDON, Matryoshka head 64/32/16", {"variant": "udon", "matryoshka_dims": [64, 32, 16]}),
    Row("udon_dim32", "UDON, dedicated 32-d head", {"variant": "udon", "embed_dim": 32}),
    Row("udon_dim16", "UDON, dedicated 16-d head", {"variant": "udon", "embed_dim": 16}),
]  # fmt: skip
FINE_TUNED = [  # regime (ii): Lite0's top stages trained over its cached trunk (recipes/udon.py)
    Row(f"ft_{variant}", f"{label}, Lite0 stages ≥ 5 fine-tuned", {"variant": variant, "trainable_from": 5})
    for variant, label in (("uscrr", "USCRR"), ("ujcrr", "UJCRR"), ("udon_no_dynamic", "UDON w/o dynamic sampling"), ("udon", "UDON"))
]  # fmt: skip
HELD = [Row(f"holdout_{r.name}", r.label, {**r.settings, "holdout": HOLDOUT}, r.seeded) for r in START]
HELD += [
    Row(f"holdout_{v}", f"{label} (without {HOLDOUT})", {"variant": v, "holdout": HOLDOUT})
    for v, label in (("udon", "UDON"), ("ujcrr", "UJCRR"))
]
ROWS = {row.name: row for row in [*START, *FEATURES, *WIDTHS, *FINE_TUNED, *HELD]}
SCRIPT_KEYS = set(SHARED) | {
    "start", "variant", "holdout", "sampling_loss_window", "distillation_reaches_backbone", "embed_dim",
    "matryoshka_dims",
}  # fmt: skip


def accepted() -> set[str]:
    """What this script routes itself plus the UDON recipe's arguments (``trainable_from`` lives there)."""
    from hf_distill.trainers.arguments import UdonTrainingArguments

    sys.path.insert(0, str(ROOT / "recipes"))
    from udon import UdonRecipeArguments

    from hf_distill.recipe import RecipeArguments

    return SCRIPT_KEYS | sweep.accepted_names(UdonRecipeArguments, RecipeArguments, UdonTrainingArguments)


def train_run(name: str, settings: dict, seed: int) -> dict:
    """One row and seed: a starting point, a cached-feature run or a recipe run (``trainable_from``)."""
    torch.set_num_threads(1)
    if "trainable_from" in settings:
        return udon_runs.recipe_run(name, settings, seed, SHARED)
    return udon_runs.feature_run(name, settings, seed)


# ------------------------------------------------------------------------------------------- the page


def convert(page: dict) -> dict:
    """A page written before the shared runner (holdout rows under ``holdout``) in the runner's shape."""
    for name, runs in page.pop("holdout", {}).get("rows", {}).items():
        page["rows"][f"holdout_{name}"] = runs
    return page


def claims(page: dict, trained: list[Row], prefix: str = "") -> list[str]:
    """The issue's claims (a)–(c) for one regime, each with its verdict."""
    claim = functools.partial(sweep.claim_line, page)
    lines = [claim(f"(a) {r.label} beats the 1280-d starting point", r.name, "start_full") for r in trained]
    for name in ("holdout_udon", "holdout_ujcrr") if not prefix else ():
        text = f"(a) {ROWS[name].label} beats the starting point on {HOLDOUT}"
        lines.append(claim(text, name, "holdout_start_full", f"separate/{HOLDOUT}/R@1"))
    for other in ("uscrr", "ujcrr", "naive"):
        lines.append(claim(f"(b) UDON beats {ROWS[other].label}", prefix + "udon", prefix + other))
    runs = page["rows"].get(prefix + "udon", [])
    if runs and runs[0].get("sampling_p"):
        final = {
            d: statistics.mean(run["sampling_p"][d][1][-1] for run in runs) for d in runs[0]["sampling_p"]
        }
        hard = max(final, key=final.get)
        udon, static = prefix + "udon", prefix + "udon_no_dynamic"
        lines.append(
            claim(
                f"(c) dynamic sampling helps the hardest domain ({hard})", udon, static, f"merged/{hard}/R@1"
            )
        )
        lines.append(claim("(c) … without costing the mean", udon, static))
    return sweep.measured(lines)


SETTING = (
    "**Setting.** (i) every row trains on cached frozen EfficientNet-Lite0 features (offline ImageNet weights, "
    "{image_size} px, 1280-d, one un-augmented view per image): its trainable backbone is a residual adapter "
    "({adapter_layers} block, hidden {adapter_hidden}, the identity at initialisation), so every method starts at the "
    "starting-point features and UDON's backbone learning rate, frozen steps and distillation gradient path act on "
    "that adapter. (ii) `ft_*` rows fine-tune Lite0's top stages over its cached trunk (`recipes/udon.py`, "
    "`trainable_from`). Shared: batch {batch_size} single-domain batches, AdamW, head lr {learning_rate:g} constant, "
    "backbone lr × {backbone_lr_ratio:g}, weight decay 1e-6, dynamic-sampling window {update_every} batches; "
    "validation = the val split (held-out images of the training classes), test = unseen classes, query = index "
    "with the query removed, unweighted mean over domains; the naive baseline's specialists (256-d head) run to "
    "their own plateau first. Figures in percent, mean ± sample std over seeds."
)


def widths_section(page: dict) -> list[str]:
    """Issue 21's row: the Matryoshka model read at 64/32/16 against a dedicated head of each width."""
    if not page["rows"].get("udon_matryoshka"):
        return []
    value = functools.partial(sweep.values, page)
    dedicated = {
        64: value("udon", PRIMARY),
        32: value("udon_dim32", PRIMARY),
        16: value("udon_dim16", PRIMARY),
    }
    nested = {
        width: value("udon_matryoshka", PRIMARY + (f"@{width}d" if width != 64 else ""))
        for width in dedicated
    }
    lines = ["## Matryoshka widths (regime i): merged test R@1 (%)", "",
             "| head | 64-d | 32-d | 16-d |", "|---|---:|---:|---:|",
             "| one Matryoshka head (64/32/16), read at each width | " + " | ".join(sweep.cell(nested[w]) for w in dedicated) + " |",
             "| a dedicated head of that width (UDON row for 64-d) | " + " | ".join(sweep.cell(dedicated[w]) for w in dedicated) + " |", ""]  # fmt: skip
    for width in dedicated:
        if nested[width] and dedicated[width]:
            gap = 100 * (statistics.mean(nested[width]) - statistics.mean(dedicated[width]))
            goal = "met" if gap >= -1.0 else "missed"
            lines.append(
                f"- {width}-d: Matryoshka − dedicated = {gap:+.1f} points (goal: within 1 point — {goal})."
            )
    return lines + [""]


def write_page(page: dict, report: Path) -> None:
    setup = page["setup"]
    domains = setup["domains"]
    labelled = [(r.name, r.label) for r in [*START, *FEATURES]]
    fine = [(r.name, r.label) for r in [*START, *FINE_TUNED]]
    lines = ["# UDON on the many-class benchmark (`data/manydomain`)", "", "## Claims", ""]
    lines += claims(page, FEATURES) + claims(page, FINE_TUNED, "ft_")
    lines += [
        "",
        sweep.VERDICT_RULE,
        "",
        *sweep.page_notes(page, "notes", "findings"),
        *sweep.skipped_lines(page),
    ]
    lines += [
        "",
        SETTING.format(
            **{**SHARED, **{k: setup[k] for k in SHARED if k in setup}, **setup.get("shared", {})}
        ),
    ]
    old = "(this page predates the plateau rule: fixed steps, last step evaluated)"
    lines += ["", "**Budget rule.** " + setup.get("budget", old), "", *sweep.commands_block(setup)]
    for title, rows in (
        ("(i) heads + adapter on cached Lite0 features", labelled),
        ("(ii) Lite0 top stages fine-tuned", fine),
    ):
        if any(page["rows"].get(name) for name, _ in rows[2:]):
            lines += sweep.metric_tables(page, title, rows, [*domains, "mean"], METRICS, "method")
    lines += widths_section(page)
    held = [(r.name, r.label) for r in HELD]
    lines += [f"## Universality: `{HOLDOUT}` held out of training", ""]
    lines += sweep.table(page, held, ["R@1", "mP@5"], lambda m: f"separate/{HOLDOUT}/{m}", "model") + [""]
    lines += sweep.plots_and_runs(page, labelled, labelled + fine[2:] + held, domains, report, "udon")
    report.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = sweep.page_parser(__doc__, "docs/results/udon.md", ROWS, output_flag="--report")
    sweep.add_setting_flags(parser, SHARED)
    args = parser.parse_args(argv)
    report = Path(args.report)
    page = sweep.open_page(report, convert)
    if not args.report_only:
        shared = {key: getattr(args, key) for key in SHARED}
        page = sweep.run_page(
            page, "udon_results.py", argv if argv is not None else sys.argv[1:],
            [ROWS[name] for name in args.rows], args.seeds, shared, train_run, report.with_suffix(".json"),
            accepted(), args.jobs, domains=list(udon_runs.features(args.benchmark, args.image_size)["data"]), shared=shared,
            budget=sweep.budget_rule("every trained row", args.plateau_min_gain, args.plateau_fraction,
                                     args.eval_steps, args.max_steps, args.plateau_min_steps),
        )  # fmt: skip
    write_page(page, report)
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
