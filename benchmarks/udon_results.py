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
reports test (unseen classes). The runner, store, tables, verdicts and plots are ``benchmarks/sweep.py``'s.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402
from sweep import Row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FEATURE_DIM, PRIMARY = 1280, "merged/mean/R@1"
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
    "start",
    "variant",
    "holdout",
    "sampling_loss_window",
    "distillation_reaches_backbone",
    "embed_dim",
    "matryoshka_dims",
}


def accepted() -> set[str]:
    """What this script routes itself plus the UDON recipe's arguments (``trainable_from`` lives there)."""
    from hf_distill.trainers.arguments import UdonTrainingArguments

    sys.path.insert(0, str(ROOT / "recipes"))
    from udon import UdonRecipeArguments

    from hf_distill.recipe import RecipeArguments

    return SCRIPT_KEYS | sweep.accepted_names(UdonRecipeArguments, RecipeArguments, UdonTrainingArguments)


# ------------------------------------------------------------------------------------------ training


@functools.lru_cache(maxsize=1)
def features(benchmark_path: str, image_size: int) -> dict:
    """``{domain: {split: (features, labels)}}`` of the cached Lite0 features, and the class counts."""
    from hf_distill.data import load_benchmark
    from hf_distill.data.frozen_features import benchmark_features

    benchmark = load_benchmark(benchmark_path)
    cached = benchmark_features(benchmark, "efficientnet_lite0", image_size, splits=("train", "val", "test"))
    data = {
        domain: {
            split: (cached[domain][split], torch.tensor(splits[split].select_columns(["label"])[:]["label"]))
            for split in ("train", "val", "test")
        }
        for domain, splits in benchmark.domains.items()
    }
    return {"data": data, "num_classes": dict(benchmark.num_classes)}


def retrieval(embed, data: dict, domains: list[str], split: str) -> dict[str, float]:
    """UnED metrics (query = index, self-match removed) of ``embed(features)`` on ``split`` of ``domains``."""
    from hf_distill.evaluation.metrics import RetrievalDomain, evaluate_retrieval

    with torch.no_grad():
        return evaluate_retrieval(
            {d: RetrievalDomain(embed(data[d][split][0]), data[d][split][1]) for d in domains}
        )


def embedder_fn(model, truncate_dim: int | None = None):
    """The exported embedder over cached features, its output cut to a trained width (``truncate_dim``)."""
    embedder = model.export_embedder().eval()
    return lambda x: torch.cat([embedder.embed_pixel_values(c, truncate_dim) for c in x.split(4096)])


class FeatureEvaluator:
    """The trainer's validation evaluator: merged retrieval on the cached val features of ``domains``."""

    primary_metric = PRIMARY

    def __init__(self, data: dict, domains: list[str]) -> None:
        self.data, self.domains = data, domains

    def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
        return retrieval(embedder_fn(model), self.data, self.domains, "val")


def fit(settings: dict, seed: int, domains: list[str], out: Path, specialist: bool = False):
    """Train one model on cached features with the plateau rule; returns (model, trainer)."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    from hf_distill.losses.udon import UdonLoss, UdonSpecialistTeacher
    from hf_distill.models.udon import UdonConfig, UdonModel, variant_settings
    from hf_distill.trainers.arguments import UdonTrainingArguments
    from hf_distill.trainers.udon import UdonTrainer

    loaded = features(settings["benchmark"], settings["image_size"])
    data, variant = loaded["data"], settings["variant"]
    naive = variant == "naive"
    chosen = variant_settings("uscrr" if naive or specialist else variant)
    model_switches, loss_kwargs, strategy = dict(chosen.model), dict(chosen.loss), chosen.strategy
    loss_kwargs["distillation_reaches_backbone"] = settings.get("distillation_reaches_backbone", False)
    if naive and not specialist:  # its specialists, each trained to its own plateau, then distilled
        teachers = {
            d: UdonSpecialistTeacher(fit(settings, seed, [d], out / f"specialist_{d}", True)[0])
            for d in domains
        }
        loss_kwargs = {"external_teachers": teachers}
    widths = {key: settings[key] for key in ("embed_dim", "matryoshka_dims") if key in settings}
    torch.manual_seed(seed)  # model initialisation draws from the global generator
    model = UdonModel(UdonConfig(
        backbone="features", backbone_source="features", domains=domains,
        backbone_kwargs={"dim": FEATURE_DIM, "layers": settings["adapter_layers"], "hidden": settings["adapter_hidden"]},
        num_classes=[loaded["num_classes"][d] for d in domains], image_size=settings["image_size"],
        **model_switches, **({"embed_dim": 256} if specialist else widths),
    ))  # fmt: skip
    rows = np.concatenate([data[d]["train"][0].numpy() for d in domains]).astype(np.float32)
    table = pa.table({
        "pixel_values": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1]),
        "labels": np.concatenate([data[d]["train"][1].numpy() for d in domains]),
        "domain_ids": np.concatenate([np.full(len(data[d]["train"][1]), i) for i, d in enumerate(domains)]),
    })  # fmt: skip
    every = settings["eval_steps"]
    args = UdonTrainingArguments(
        output_dir=str(out), max_steps=settings["max_steps"], per_device_train_batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"], backbone_lr_ratio=settings["backbone_lr_ratio"],
        backbone_frozen_epochs=settings["frozen_epochs"], weight_decay=1e-6, lr_scheduler_type="constant",
        sampling_strategy=strategy, sampling_update_every=settings["update_every"],
        sampling_loss_window=settings.get("sampling_loss_window", "update"), logging_steps=settings["logging_steps"],
        eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model=PRIMARY, stop_on_plateau=True,
        plateau_fraction=settings["plateau_fraction"], plateau_min_gain=settings["plateau_min_gain"], plateau_min_steps=settings["plateau_min_steps"],
        report_to="none", remove_unused_columns=False, disable_tqdm=True, seed=seed,
        use_cpu=not torch.cuda.is_available(), plot_sampling_curves=False,
    )  # fmt: skip
    trainer = UdonTrainer(
        model=model, args=args, train_dataset=Dataset(table).with_format("numpy"),
        loss=UdonLoss(**loss_kwargs), evaluator=FeatureEvaluator(data, domains),
    )  # fmt: skip
    trainer.train()
    return model, trainer


def recipe_run(name: str, settings: dict, seed: int) -> dict:
    """Regime (ii): ``recipes/udon.py`` with the row's recipe settings and the plateau rule."""
    spec = importlib.util.spec_from_file_location("udon_recipe", ROOT / "recipes" / "udon.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are being defined
    spec.loader.exec_module(module)
    out = Path(settings["output_root"]) / f"{name}_seed{seed}"
    argv = [
        "--config",
        str(ROOT / "recipes/configs/udon_offline.yaml"),
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
    ]
    argv += [
        "--benchmark",
        settings["benchmark"],
        "--max_steps",
        str(settings["max_steps"]),
        "--report_to",
        "none",
    ]
    argv += ["--eval_steps", str(settings["eval_steps"]), "--save_steps", str(settings["eval_steps"])]
    argv += ["--stop_on_plateau", "true", "--backbone_frozen_epochs", "0"]
    argv += [
        f"--{key}={settings[key]}" for key in ("plateau_fraction", "plateau_min_gain", "plateau_min_steps")
    ]
    argv += [f"--{key}={value}" for key, value in settings.items() if key not in SHARED]
    metrics = module.main(argv)
    return {**metrics, **sweep.recipe_curve(out)}


def train_run(name: str, settings: dict, seed: int) -> dict:
    """One row and seed: a starting point, a cached-feature run or a recipe run (``trainable_from``)."""
    torch.set_num_threads(1)
    if "trainable_from" in settings:
        return recipe_run(name, settings, seed)
    from hf_distill.evaluation.starting_point import fit_pca_head

    data = features(settings["benchmark"], settings["image_size"])["data"]
    held = settings.get("holdout")
    domains = [d for d in data if d != held]
    tested = [held] if held else domains
    if "start" in settings:
        normalize = torch.nn.functional.normalize
        if settings["start"] == "full":
            return retrieval(lambda f: normalize(f, dim=-1), data, tested, "test")
        weight, bias = fit_pca_head(normalize(torch.cat([data[d]["train"][0] for d in domains]), dim=-1), 64)
        return retrieval(
            lambda f: normalize(normalize(f, dim=-1) @ weight.T + bias, dim=-1), data, tested, "test"
        )
    out = Path(settings["output_root"]) / f"{name}_seed{seed}"
    model, trainer = fit(settings, seed, domains, out)
    from hf_distill.trainers.callbacks import sampling_curves

    record = retrieval(embedder_fn(model), data, tested, "test")
    for width in settings.get("matryoshka_dims", [])[1:]:  # the same model read at its narrower widths
        narrow = retrieval(embedder_fn(model, width), data, tested, "test")
        record.update({f"{key}@{width}d": value for key, value in narrow.items()})
    record.update(
        curve=sweep.validation_curve(trainer.state.log_history),
        selected_step=sweep.selected_step(trainer.state.best_model_checkpoint),
        steps=trainer.state.global_step,
    )
    if settings["variant"] == "udon":
        record["domain_loss"], record["sampling_p"] = sampling_curves(trainer.state.log_history)
    shutil.rmtree(out, ignore_errors=True)
    return record


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
            accepted(), args.jobs, domains=list(features(args.benchmark, args.image_size)["data"]), shared=shared,
            budget=sweep.budget_rule("every trained row", args.plateau_min_gain, args.plateau_fraction,
                                     args.eval_steps, args.max_steps, args.plateau_min_steps),
        )  # fmt: skip
    write_page(page, report)
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
