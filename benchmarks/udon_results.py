"""UDON and its baselines on the many-class benchmark, 3 seeds, from the starting point (issue 11).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/udon_results.py            # the whole table
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/udon_results.py --from_json docs/results/udon.json  # rewrite

Every row trains on **cached frozen EfficientNet-Lite0 features** (offline ImageNet weights, 64 px, the stored
size of ``data/manydomain``; ``hf_distill.data.frozen_features``): the model's input is the 1280-d pooled
feature and its trainable "backbone" is ``backbone_source="features"``'s residual adapter (identity at
initialisation), so UDON's backbone learning rate, frozen epochs and distillation gradient path act on that
adapter instead of the convolutional layers. All rows share the adapter, the optimizer steps, the batch size, the
optimizer settings and the evaluation (test split, unseen classes, merged and separate, last step — no model
selection), and train through :class:`~hf_distill.trainers.udon.UdonTrainer` on a ``datasets.Dataset`` of the
cached features. Rows:

- starting point: the frozen features (1280-d) and their PCA-64 fitted on the training features;
- USCRR, UJCRR, USCDS (UnED baselines, no distillation);
- the naive multi-teacher baseline: one specialist per domain (a single-domain USCRR model with a 256-d head),
  then its frozen specialists distilled into the universal student with UDON's logit and relational losses
  (``UdonLoss(external_teachers=...)``);
- UDON without dynamic sampling, UDON, and UDON with the released code's gradient path
  (``distillation_reaches_backbone=True``);
- universality: UDON and UJCRR trained without one domain, evaluated on it against the starting point.

Writes ``docs/results/udon.md``, ``docs/results/udon.json`` and ``docs/results/udon_*.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_distill.data import load_benchmark
from hf_distill.data.frozen_features import DEFAULT_CACHE_ROOT, benchmark_features
from hf_distill.evaluation.metrics import RetrievalDomain, evaluate_retrieval
from hf_distill.evaluation.starting_point import fit_pca_head
from hf_distill.losses.udon import UdonLoss, UdonSpecialistTeacher
from hf_distill.models.udon import UdonConfig, UdonModel, variant_settings
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.callbacks import sampling_curves
from hf_distill.trainers.udon import UdonTrainer

BACKBONE = "efficientnet_lite0"
FEATURE_DIM = 1280
STARTING_ROWS = {
    "start_full": "starting point: Lite0 features, 1280-d",
    "start_pca64": "starting point: PCA-64",
}
TRAINED_ROWS = {
    "uscrr": "USCRR",
    "ujcrr": "UJCRR",
    "uscds": "USCDS",
    "naive": "naive multi-teacher (frozen specialists → student)",
    "udon_no_dynamic": "UDON w/o dynamic sampling",
    "udon": "UDON",
    "udon_backbone_kd": "UDON, authors' gradient path (KD reaches the adapter)",
}
LABELS = {**STARTING_ROWS, **TRAINED_ROWS}
HOLDOUT_ROWS = {"udon": "UDON", "ujcrr": "UJCRR"}

logger = logging.getLogger("udon_results")


# ------------------------------------------------------------------------------------------------- data


def load_features(benchmark_path: str, image_size: int, cache_root: str, domains: list[str] | None) -> dict:
    """Train/test features and labels of every domain: ``{domain: {"train": (X, y), "test": (X, y)}}``."""
    benchmark = load_benchmark(benchmark_path, domains=domains)
    features = benchmark_features(
        benchmark, BACKBONE, image_size, splits=("train", "test"), cache_root=cache_root
    )
    data = {}
    for domain, splits in benchmark.domains.items():
        data[domain] = {}
        for split in ("train", "test"):
            labels = torch.tensor(splits[split].select_columns(["label"])[:]["label"], dtype=torch.long)
            data[domain][split] = (features[domain][split], labels)
    return {"data": data, "num_classes": dict(benchmark.num_classes)}


def feature_dataset(data: dict, domains: list[str]) -> Dataset:
    """``pixel_values`` (the cached feature), ``labels`` and ``domain_ids`` of the training rows of ``domains``."""
    features = torch.cat([data[d]["train"][0] for d in domains]).numpy().astype(np.float32)
    labels = torch.cat([data[d]["train"][1] for d in domains]).numpy()
    domain_ids = np.concatenate([np.full(len(data[d]["train"][1]), i) for i, d in enumerate(domains)])
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
    table = pa.table({"pixel_values": column, "labels": labels, "domain_ids": domain_ids.astype(np.int64)})
    # numpy rows: the trainer fetches row by row, and the numpy formatter is about twice as fast as torch's.
    return Dataset(table).with_format("numpy")


# ---------------------------------------------------------------------------------------------- training


def build_model(args: argparse.Namespace, domains: list[str], num_classes: dict, switches: dict, **extra):
    config = UdonConfig(
        backbone="features",
        backbone_source="features",
        backbone_kwargs={"dim": FEATURE_DIM, "layers": args.adapter_layers, "hidden": args.adapter_hidden},
        domains=domains,
        num_classes=[num_classes[d] for d in domains],
        image_size=args.image_size,
        **switches,
        **extra,
    )
    return UdonModel(config)


def train(
    args: argparse.Namespace,
    model: UdonModel,
    loss: UdonLoss,
    dataset: Dataset,
    strategy: str,
    steps: int,
    seed: int,
    output_dir: Path,
) -> UdonTrainer:
    """Train ``model`` for ``steps`` optimizer steps through ``UdonTrainer`` (same settings for every row)."""
    training_args = UdonTrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        backbone_lr_ratio=args.backbone_lr_ratio,
        backbone_frozen_epochs=args.frozen_epochs,
        weight_decay=1e-6,
        lr_scheduler_type="constant",
        sampling_strategy=strategy,
        sampling_update_every=args.update_every,
        logging_steps=args.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        plot_sampling_curves=False,
        evaluate_starting_point=False,
    )
    trainer = UdonTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    trainer.train()
    return trainer


@torch.no_grad()
def embed(embedder: torch.nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Embeddings of ``features`` by an exported embedder (its input is the cached feature)."""
    embedder.eval()
    device = next(embedder.parameters()).device
    parts = [embedder(pixel_values=chunk.to(device)).embeddings.cpu() for chunk in features.split(batch_size)]
    return torch.cat(parts)


def retrieval(embed_fn, data: dict, domains: list[str]) -> dict[str, float]:
    """UnED test metrics (test/test, query = index) of ``embed_fn(features)`` over ``domains``."""
    retrieval_domains = {
        d: RetrievalDomain(query_embeddings=embed_fn(data[d]["test"][0]), query_labels=data[d]["test"][1])
        for d in domains
    }
    return evaluate_retrieval(retrieval_domains)


def starting_point(data: dict, domains: list[str], fit_domains: list[str], dim: int = 64) -> dict[str, dict]:
    """Metrics of the frozen features (1280-d) and of their PCA-``dim`` fitted on ``fit_domains``' train rows."""
    train_features = F.normalize(torch.cat([data[d]["train"][0] for d in fit_domains]), dim=-1)
    weight, bias = fit_pca_head(train_features, dim)

    def pca(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.normalize(features, dim=-1) @ weight.T + bias, dim=-1)

    return {
        "start_full": retrieval(lambda f: F.normalize(f, dim=-1), data, domains),
        "start_pca64": retrieval(pca, data, domains),
    }


def train_row(
    args, row: str, seed: int, data: dict, num_classes: dict, domains: list[str], dataset, out: Path
):
    """Train one row (a UDON variant, a UnED baseline or the naive baseline); returns the trainer and model."""
    # Model initialisation draws from the global generator: seed it so that a row's seed fixes its whole run.
    torch.manual_seed(seed)
    if row == "naive":
        teachers = {}
        for domain in domains:
            torch.manual_seed(seed)
            specialist = build_model(
                args, [domain], num_classes, {"use_teacher": False, "joint_classifier": False}, embed_dim=256
            )
            train(
                args,
                specialist,
                UdonLoss(use_distillation=False),
                feature_dataset(data, [domain]),
                "round_robin",
                args.specialist_steps,
                seed,
                out / f"specialist_{domain}",
            )
            teachers[domain] = UdonSpecialistTeacher(specialist)
        torch.manual_seed(seed)
        model = build_model(args, domains, num_classes, {"use_teacher": False, "joint_classifier": False})
        loss = UdonLoss(external_teachers=teachers)
        strategy = "round_robin"
    else:
        variant = "udon" if row == "udon_backbone_kd" else row
        settings = variant_settings(variant)
        model = build_model(args, domains, num_classes, settings.model)
        loss = UdonLoss(**settings.loss, distillation_reaches_backbone=row == "udon_backbone_kd")
        strategy = settings.strategy
    trainer = train(args, model, loss, dataset, strategy, args.steps, seed, out / row)
    return trainer, model


# ---------------------------------------------------------------------------------------------- report


def stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, in percent."""
    mean = 100 * statistics.mean(values)
    return mean, (100 * statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float]) -> str:
    mean, std = stats(values)
    return f"{mean:.1f} ± {std:.1f}"


def row_values(results: dict, row: str, key: str) -> list[float]:
    return [run[key] for run in results["rows"][row]]


def table(results: dict, protocol: str, metric: str, domains: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(domains) + " | **mean** |", "|---" * (len(domains) + 2) + "|"]
    for row in [*STARTING_ROWS, *TRAINED_ROWS]:
        if row not in results["rows"]:
            continue
        cells = [cell(row_values(results, row, f"{protocol}/{d}/{metric}")) for d in domains]
        mean = cell(row_values(results, row, f"{protocol}/mean/{metric}"))
        lines.append(f"| {LABELS[row]} | " + " | ".join(cells) + f" | **{mean}** |")
    return lines


def beyond_noise(results: dict, a: str, b: str, key: str) -> tuple[float, float, bool]:
    """(mean of a − mean of b, sum of the stds, |difference| > that sum) in points."""
    mean_a, std_a = stats(row_values(results, a, key))
    mean_b, std_b = stats(row_values(results, b, key))
    return mean_a - mean_b, std_a + std_b, abs(mean_a - mean_b) > std_a + std_b


def comparison_lines(results: dict, key: str = "merged/mean/R@1") -> list[str]:
    lines = [
        "| UDON vs | difference (points) | sum of stds | beyond seed noise |",
        "|---|---:|---:|---|",
    ]
    for other in [*STARTING_ROWS, *TRAINED_ROWS]:
        if other == "udon" or other not in results["rows"] or "udon" not in results["rows"]:
            continue
        delta, noise, real = beyond_noise(results, "udon", other, key)
        lines.append(f"| {LABELS[other]} | {delta:+.1f} | {noise:.1f} | {'yes' if real else 'no'} |")
    return lines


def summary_lines(results: dict) -> list[str]:
    """The facts at the top of the report: UDON against its starting point and every baseline, beyond noise or
    not, plus the hand-written findings stored under ``notes`` in the JSON."""
    rows = results["rows"]
    if "udon" not in rows:
        return list(results.get("notes", []))
    key = "merged/mean/R@1"

    def verdict(other: str) -> str:
        delta, noise, real = beyond_noise(results, "udon", other, key)
        word = ("above" if delta > 0 else "below") if real else "within seed noise of"
        return f"{word} {LABELS[other]} ({delta:+.1f} points, sum of stds {noise:.1f})"

    udon_mean, udon_std = stats(row_values(results, "udon", key))
    lines = [
        f"- **UDON**: merged mean test R@1 {udon_mean:.1f} ± {udon_std:.1f}; "
        + "; ".join(verdict(row) for row in STARTING_ROWS if row in rows)
        + "."
    ]
    baselines = [row for row in TRAINED_ROWS if row in rows and row != "udon"]
    if baselines:
        lines.append(
            "- Against the other trained rows: " + "; ".join(verdict(row) for row in baselines) + "."
        )
    lines += [f"- {note}" for note in results.get("notes", [])]
    return lines


def plot_results(results: dict, domains: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in [*STARTING_ROWS, *TRAINED_ROWS] if row in results["rows"]]
    names = [*domains, "mean"]
    figure, axis = plt.subplots(figsize=(13, 5.2))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        means, stds = zip(*(stats(row_values(results, row, f"merged/{d}/R@1")) for d in names))
        positions = np.arange(len(names)) + (i - len(rows) / 2 + 0.5) * width
        axis.bar(positions, means, width, yerr=stds, label=LABELS[row], capsize=1.5)
    axis.set_xticks(np.arange(len(names)), names)
    axis.set_ylabel("merged test R@1 (%)")
    axis.set_title("UDON table: merged R@1 per domain, mean ± std over seeds (cached Lite0 features)")
    axis.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_sampling(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, prob_axis) = plt.subplots(1, 2, figsize=(12, 4))
    runs = results["rows"]["udon"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, domain in enumerate(sorted(runs[0]["sampling_p"])):
        colour = colours[index % len(colours)]
        for seed_index, run in enumerate(runs):
            label = domain if seed_index == 0 else None
            steps, values = run["sampling_p"][domain]
            prob_axis.plot(steps, values, color=colour, alpha=0.8, label=label, lw=1)
            steps, values = run["domain_loss"][domain]
            loss_axis.plot(steps, values, color=colour, alpha=0.8, label=label, lw=1)
    loss_axis.set(
        xlabel="step", ylabel="teacher classification loss", title="UDON per-domain loss (all seeds)"
    )
    prob_axis.set(xlabel="step", ylabel="p(domain)", title="UDON dynamic sampling probability (all seeds)")
    prob_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(results: dict, report: Path) -> None:
    setup = results["setup"]
    domains = setup["domains"]
    seeds = setup["seeds"]
    lines = ["# UDON on the many-class benchmark (`data/manydomain`), 3 seeds", ""]
    lines += ["## Summary", "", *summary_lines(results), ""]
    if results.get("findings"):
        lines += ["## What was found", "", *(f"- {finding}" for finding in results["findings"]), ""]
    lines += [
        "**Setting.** Every row trains on *cached frozen-backbone features*: EfficientNet-Lite0 (offline ImageNet "
        f"weights) at {setup['image_size']} px, 1280-d pooled features computed once "
        "(`hf_distill/data/frozen_features.py`), because training the convolutional backbone for this many runs "
        'does not fit the CPU budget (2 shared cores). The model\'s trainable "backbone" is a residual MLP '
        f'adapter on that feature (`backbone_source="features"`, {setup["adapter_layers"]} block, hidden '
        f"{setup['adapter_hidden']}, the identity at initialisation), so every method starts exactly at the "
        "starting-point features and UDON's backbone learning rate, frozen epochs and distillation gradient path "
        "act on the adapter, not on the convolutions; no augmentation (one cached view per image). Numbers "
        "are therefore about heads + adapter on fixed Lite0 features, not about fine-tuning Lite0.",
        "",
        f"**Shared by all rows.** {setup['steps']} optimizer steps of batch {setup['batch_size']} single-domain "
        f"batches ({setup['epochs']:.1f} epochs of the {setup['train_images']} training images) through "
        f"`UdonTrainer`; AdamW, head lr {setup['learning_rate']:g} constant, adapter lr × "
        f"{setup['backbone_lr_ratio']:g}, adapter frozen for the first {setup['frozen_epochs']:g} epoch(s) "
        f"({setup['frozen_steps']} steps), weight decay 1e-6; dynamic-sampling window {setup['update_every']} "
        f"batches; seeds {', '.join(map(str, seeds))} (mean ± sample std; the starting-point rows are one "
        "deterministic evaluation, hence ± 0.0). **Model selection: none** — the "
        "model after the last step is evaluated. Evaluation: test split (unseen classes), query = index with "
        "the query removed, `hf_distill.evaluation.metrics.evaluate_retrieval`, unweighted mean over domains. "
        f"The naive baseline's specialists train {setup['specialist_steps']} steps each on their own domain "
        "(256-d head, separate classifier) before its student trains the common number of steps.",
        "",
        f"Produced by (wall time {setup['wall_minutes']:.1f} min, load average "
        f"{setup['load_average']} at the start, {setup['load_average_end']} at the end, on "
        f"{setup['machine']}):",
        "",
        "```",
        setup["command"],
        "```",
        "",
    ]
    for protocol, metric in (("merged", "R@1"), ("merged", "mP@5"), ("separate", "R@1")):
        lines += [f"## {protocol} {metric} (%)", "", *table(results, protocol, metric, domains), ""]
    lines += [
        "## UDON against every other row (merged mean R@1)",
        "",
        "Beyond seed noise = the difference of the means is larger than the sum of the two standard deviations.",
        "",
        *comparison_lines(results),
        "",
    ]
    if "udon" in results["rows"] and "udon_no_dynamic" in results["rows"]:
        final_p = {
            d: statistics.mean(run["sampling_p"][d][1][-1] for run in results["rows"]["udon"])
            for d in domains
        }
        hardest = max(final_p, key=final_p.get)
        lines += [
            "## Dynamic sampling",
            "",
            "![UDON per-domain teacher loss and sampling probability](udon_sampling.png)",
            "",
            "Per-domain merged R@1 gain of dynamic sampling (UDON − UDON w/o dynamic sampling, points) and UDON's "
            "final sampling probability (mean over seeds). The hardest domain — the one the sampler ends up "
            f"drawing most, i.e. with the highest teacher loss — is **{hardest}**.",
            "",
            "| domain | final p (UDON) | gain (points) | sum of stds | beyond seed noise |",
            "|---|---:|---:|---:|---|",
        ]
        for d in domains:
            delta, noise, real = beyond_noise(results, "udon", "udon_no_dynamic", f"merged/{d}/R@1")
            mark = " (hardest)" if d == hardest else ""
            lines.append(
                f"| {d}{mark} | {final_p[d]:.3f} | {delta:+.1f} | {noise:.1f} | {'yes' if real else 'no'} |"
            )
        lines.append("")
    if results.get("holdout"):
        holdout = results["holdout"]
        name = holdout["domain"]
        lines += [
            f"## Universality: `{name}` held out of training",
            "",
            f"UDON and UJCRR trained on the other {len(domains) - 1} domains (same steps and settings), evaluated "
            f"on `{name}`'s test split alone (its own index); the starting-point PCA is fitted on the other "
            "domains' training features only.",
            "",
            "| model | R@1 | mP@5 |",
            "|---|---:|---:|",
        ]
        for row in [*STARTING_ROWS, *HOLDOUT_ROWS]:
            if row not in holdout["rows"]:
                continue
            runs = holdout["rows"][row]
            label = LABELS[row] if row in STARTING_ROWS else f"{HOLDOUT_ROWS[row]} (without {name})"
            r1 = cell([run[f"separate/{name}/R@1"] for run in runs])
            mp5 = cell([run[f"separate/{name}/mP@5"] for run in runs])
            lines.append(f"| {label} | {r1} | {mp5} |")
        lines.append("")
    lines += ["## Plots", "", "![merged R@1 per domain](udon_per_domain.png)", ""]
    report.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------- main


def run_sweep(args: argparse.Namespace, results: dict, json_path: Path) -> None:
    loaded = load_features(args.benchmark, args.image_size, args.cache_root, args.domains)
    data, num_classes = loaded["data"], loaded["num_classes"]
    domains = list(data)
    dataset = feature_dataset(data, domains)
    output_root = Path(args.output_root)
    train_images = len(dataset)
    batches_per_epoch = sum(-(-len(data[d]["train"][1]) // args.batch_size) for d in domains)
    results["setup"].update(
        domains=domains,
        train_images=train_images,
        epochs=args.steps / batches_per_epoch,
        frozen_steps=int(np.ceil(args.frozen_epochs * batches_per_epoch)),
    )
    starting = starting_point(data, domains, domains)
    for row, metrics in starting.items():
        results["rows"][row] = [metrics]  # deterministic: one evaluation stands for every seed
    for seed in args.seeds:
        for row in args.rows:
            start = time.perf_counter()
            out = output_root / f"seed{seed}"
            trainer, model = train_row(args, row, seed, data, num_classes, domains, dataset, out)
            metrics = retrieval(partial(embed, model.export_embedder()), data, domains)
            losses, probabilities = sampling_curves(trainer.state.log_history)
            run = {**metrics, "seed": seed, "seconds": time.perf_counter() - start}
            if row in ("udon", "udon_no_dynamic"):
                run["sampling_p"], run["domain_loss"] = probabilities, losses
            results["rows"].setdefault(row, []).append(run)
            json_path.write_text(json.dumps(results, indent=1))
            print(
                f"seed {seed} {row}: merged R@1 {100 * metrics['merged/mean/R@1']:.1f} "
                f"(start full {100 * starting['start_full']['merged/mean/R@1']:.1f}, "
                f"pca64 {100 * starting['start_pca64']['merged/mean/R@1']:.1f}) "
                f"{run['seconds']:.0f} s",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
    if args.holdout:
        rest = [d for d in domains if d != args.holdout]
        rest_dataset = feature_dataset(data, rest)
        held = {"domain": args.holdout, "rows": {}}
        for row, metrics in starting_point(data, [args.holdout], rest).items():
            held["rows"][row] = [metrics]
        for seed in args.seeds:
            for row in HOLDOUT_ROWS:
                out = output_root / f"holdout_seed{seed}"
                _, model = train_row(args, row, seed, data, num_classes, rest, rest_dataset, out)
                metrics = retrieval(partial(embed, model.export_embedder()), data, [args.holdout])
                held["rows"].setdefault(row, []).append({**metrics, "seed": seed})
                print(
                    f"holdout {args.holdout} seed {seed} {row}: R@1 {100 * metrics['separate/mean/R@1']:.1f}"
                )
                shutil.rmtree(out, ignore_errors=True)
        results["holdout"] = held
        json_path.write_text(json.dumps(results, indent=1))


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def run_parallel(args: argparse.Namespace, argv: list[str], results: dict, json_path: Path) -> None:
    """One worker process per seed (``--jobs``), each writing its JSON; merged in seed order."""
    kept, skip = [], 0
    for token in argv:  # drop --seeds/--jobs/--report/--output_root and their values
        if skip and not token.startswith("--"):
            continue
        skip = token in ("--seeds", "--jobs", "--report", "--output_root")
        if not skip:
            kept.append(token)
    workers = []
    for seed in args.seeds:
        report = Path(args.output_root) / f"worker_seed{seed}" / "udon.md"
        command = [sys.executable, __file__, *kept, "--seeds", str(seed), "--jobs", "1", "--worker"]
        command += ["--report", str(report), "--output_root", str(report.parent / "runs")]
        report.parent.mkdir(parents=True, exist_ok=True)
        log = open(report.parent / "log.txt", "w")  # noqa: SIM115 - closed after the worker ends
        workers.append((seed, report, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
    for seed, report, process, log in workers:
        if process.wait() != 0:
            raise RuntimeError(f"worker of seed {seed} failed: see {report.parent / 'log.txt'}")
        log.close()
        part = json.loads(report.with_suffix(".json").read_text())
        for key in ("domains", "train_images", "epochs", "frozen_steps"):
            results["setup"][key] = part["setup"][key]
        for row, runs in part["rows"].items():
            if row in STARTING_ROWS:
                results["rows"][row] = runs
            else:
                results["rows"].setdefault(row, []).extend(runs)
        if part.get("holdout"):
            held = results.setdefault("holdout", {"domain": part["holdout"]["domain"], "rows": {}})
            for row, runs in part["holdout"]["rows"].items():
                if row in STARTING_ROWS:
                    held["rows"][row] = runs
                else:
                    held["rows"].setdefault(row, []).extend(runs)
        json_path.write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="data/manydomain")
    parser.add_argument("--cache_root", default=str(DEFAULT_CACHE_ROOT))
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--domains", nargs="+", default=None, help="benchmark domains (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(TRAINED_ROWS), choices=list(TRAINED_ROWS))
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps of every trained row")
    parser.add_argument("--specialist_steps", type=int, default=30, help="steps of each naive specialist")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--backbone_lr_ratio", type=float, default=0.1)
    parser.add_argument("--frozen_epochs", type=float, default=0.06)
    parser.add_argument("--update_every", type=int, default=25)
    parser.add_argument("--logging_steps", type=int, default=20)
    parser.add_argument("--adapter_layers", type=int, default=1)
    parser.add_argument("--adapter_hidden", type=int, default=256)
    parser.add_argument(
        "--holdout", default="emoji", help="domain held out for the universality rows ('' = none)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: far faster on busy shared cores)"
    )
    parser.add_argument("--output_root", default="outputs/udon_results")
    parser.add_argument("--report", default="docs/results/udon.md")
    parser.add_argument("--from_json", default=None, help="rewrite the report and plots from a saved JSON")
    parser.add_argument("--jobs", type=int, default=3, help="seeds trained in parallel worker processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    json_path = report.with_suffix(".json")
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/udon_results.py " + " ".join(argv)
        results = {"setup": {**vars(args), "command": command.strip()}, "rows": {}}
        results["setup"].update(
            load_average=load_average(),
            machine=f"a shared 2-core {platform.machine()} machine, {args.jobs} seed worker processes × {args.threads} torch thread",
        )
        start = time.perf_counter()
        if args.jobs > 1 and len(args.seeds) > 1:
            run_parallel(args, argv, results, json_path)
        else:
            run_sweep(args, results, json_path)
        results["setup"].update(
            wall_minutes=(time.perf_counter() - start) / 60, load_average_end=load_average()
        )
        json_path.write_text(json.dumps(results, indent=1))
    if args.worker:
        return
    domains = results["setup"]["domains"]
    plot_results(results, domains, report.with_name("udon_per_domain.png"))
    if "udon" in results["rows"] and results["rows"]["udon"][0].get("sampling_p"):
        plot_sampling(results, report.with_name("udon_sampling.png"))
    write_report(results, report)
    print(f"wrote {report} and {json_path}")
    print(results["setup"]["command"])


if __name__ == "__main__":
    main()
