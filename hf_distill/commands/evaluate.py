"""``hf-distill evaluate``: UnED retrieval (merged and separate protocols) of a model or of saved embeddings.

Two sources:

- ``--model DIR``: a saved model (``AutoModel.from_pretrained`` after importing hf_distill), preprocessing
  from its image processor (``preprocessor_config.json``) or else from its config; it embeds the
  benchmark's ``--split`` evaluation pairs;
- ``--embeddings FILE``: precomputed descriptors (``.safetensors`` or ``.npz``) with keys ``<domain>/query``,
  ``<domain>/index`` (left out when the queries are also the index: each query is then removed from its
  own neighbours) and optionally ``<domain>/query_labels`` / ``<domain>/index_labels`` (1-D, or 2-D padded
  with -1 for multi-label); missing labels come from ``--benchmark``'s ``--split`` pairs, row by row.
  ``--model ... --save-embeddings FILE`` writes such a file.

Prints a per-domain table and writes the metrics as JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from hf_distill.evaluation.embeddings_file import read_embeddings_file, save_embeddings_file
from hf_distill.evaluation.metrics import PROTOCOLS, RetrievalDomain, evaluate_retrieval

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="UnED retrieval metrics (R@1, mP@5) of a model or of precomputed embeddings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model directory (or Hub id) saved by hf_distill")
    source.add_argument("--embeddings", type=Path, help=".safetensors or .npz file of per-domain embeddings")
    parser.add_argument(
        "--benchmark",
        type=Path,
        default=None,
        help="benchmark directory (default: $HF_DISTILL_BENCHMARK, else data/manydomain)",
    )
    parser.add_argument("--split", default="test", choices=["test", "val"], help="evaluation pairs to score")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--domains", nargs="+", default=None, help="evaluate only these domains")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass (--model)")
    parser.add_argument("--device", default="cpu", help="torch device for --model (cpu, cuda, cuda:1 ...)")
    parser.add_argument(
        "--truncate-dim",
        type=int,
        default=None,
        help="with --model: score the first N values of each embedding, renormalised (one of matryoshka_dims)",
    )
    parser.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"], help="k-NN backend")
    parser.add_argument("--map-k", type=int, default=5, help="cut-off of the extra mAP@k metric")
    parser.add_argument("--output", type=Path, default=None, help="write the metrics to this JSON file")
    parser.add_argument(
        "--save-embeddings",
        type=Path,
        default=None,
        help="with --model: also write the embeddings and labels (.safetensors or .npz) for --embeddings",
    )
    parser.set_defaults(func=run)


def _load_benchmark(path: Path | None, domains: list[str] | None) -> Any:
    from hf_distill.data import load_benchmark

    return load_benchmark(path, domains=domains)


def _labels(dataset: Any) -> list:
    return list(dataset.select_columns(["label"])["label"])


def domains_from_file(
    path: Path, benchmark_path: Path | None, split: str, domains: list[str] | None
) -> dict[str, RetrievalDomain]:
    """Retrieval inputs from an embeddings file, with labels from the file or from the benchmark.

    Args:
        path: the embeddings file.
        benchmark_path: benchmark to read missing labels from (``None``: the default benchmark).
        split: evaluation pairs of the benchmark that the file's rows follow.
        domains: keep only these domains (default: all in the file).
    """
    parts = read_embeddings_file(path)
    names = list(parts) if domains is None else domains
    missing = [name for name in names if name not in parts]
    if missing:
        raise ValueError(f"{path}: no embeddings for domain(s) {missing}; the file has {list(parts)}")
    needs_benchmark = [
        name
        for name in names
        if "query_labels" not in parts[name] or ("index" in parts[name] and "index_labels" not in parts[name])
    ]
    benchmark = _load_benchmark(benchmark_path, needs_benchmark) if needs_benchmark else None
    result = {}
    for name in names:
        group = parts[name]
        labels = {"query": group.get("query_labels"), "index": group.get("index_labels")}
        if name in needs_benchmark:
            pairs = benchmark.eval_pairs.get(split, {})
            if name not in pairs:
                raise ValueError(
                    f"{path}: domain {name!r} has no labels and no {split!r} pair in the benchmark"
                )
            query_split, index_split = pairs[name]
            if (query_split == index_split) == ("index" in group):
                raise ValueError(
                    f"{path}: domain {name!r}: the benchmark's {split!r} pair is {query_split}/{index_split}, so "
                    + (
                        f"the file must not have '{name}/index' (the queries are the index)"
                        if query_split == index_split
                        else f"the file needs '{name}/index' embeddings of split {index_split!r}"
                    )
                )
            splits = benchmark.domains[name]
            if labels["query"] is None:
                labels["query"] = _labels(splits[query_split])
            if "index" in group and labels["index"] is None:
                labels["index"] = _labels(splits[index_split])
        for part in ("query", "index"):
            if part in group and len(labels[part]) != len(group[part]):
                raise ValueError(
                    f"{path}: domain {name!r} has {len(group[part])} {part} embeddings but "
                    f"{len(labels[part])} {part} labels"
                )
        result[name] = RetrievalDomain(group["query"], labels["query"], group.get("index"), labels["index"])
    return result


def _model_transform(model: Any, source: str) -> Any:
    """The model's image processor when it was saved with one, else the transform its config describes."""
    from hf_distill.evaluation.evaluator import default_transform

    if Path(source, "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(source)
        return lambda image: processor(image, return_tensors="pt")["pixel_values"][0]
    return default_transform(model)


def load_truncated_model(source: str, truncate_dim: int | None) -> Any:
    """``AutoModel.from_pretrained(source)``, truncated to ``truncate_dim`` when given (embedders only).

    Args:
        source: saved model folder or Hub id.
        truncate_dim: a width of the embedder's ``matryoshka_dims``, or ``None``.
    """
    from transformers import AutoModel

    import hf_distill  # noqa: F401  (registers the hf_distill model types with AutoModel)
    from hf_distill.models.embedder import UniversalEmbedderModel, check_truncate_dim

    model = AutoModel.from_pretrained(source)
    if truncate_dim is not None:
        if not isinstance(model, UniversalEmbedderModel):
            raise ValueError(
                f"--truncate-dim needs a universal embedder; --model {source} is a {type(model).__name__}"
            )
        check_truncate_dim(truncate_dim, model.config.matryoshka_dims, "--truncate-dim")
        model.config.truncate_dim = truncate_dim
    return model


def evaluate_model(args: argparse.Namespace) -> dict[str, float]:
    """Embed the benchmark's evaluation pairs with the model of ``args.model`` and score them."""
    import torch

    from hf_distill.evaluation.evaluator import RetrievalEvaluator

    model = load_truncated_model(args.model, args.truncate_dim).to(torch.device(args.device))
    evaluator = RetrievalEvaluator(
        _load_benchmark(args.benchmark, args.domains),
        split=args.split,
        protocols=args.protocols,
        transform=_model_transform(model, args.model),
        batch_size=args.batch_size,
        domains=args.domains,
        map_k=args.map_k,
        backend=args.backend,
    )
    retrieval = evaluator.embed(model)
    if args.save_embeddings is not None:
        save_embeddings_file(args.save_embeddings, retrieval)
        logger.info("embeddings written to %s", args.save_embeddings)
    return evaluate_retrieval(retrieval, protocols=args.protocols, map_k=args.map_k, backend=args.backend)


def format_table(metrics: dict[str, float], protocols: list[str], map_k: int = 5) -> str:
    """A text table: one row per domain (then ``mean``), one column per protocol and metric."""
    names = ("R@1", "mP@5", f"mAP@{map_k}")
    domains = list(dict.fromkeys(key.split("/")[1] for key in metrics if key.split("/")[0] == protocols[0]))
    domains = [name for name in domains if name != "mean"] + ["mean"]
    width = max(len(name) for name in domains + ["domain"])
    header = f"{'domain':<{width}}" + "".join(
        f" | {protocol + ' ' + name:>15}" for protocol in protocols for name in names
    )
    lines = [header, "-" * len(header)]
    for domain in domains:
        cells = "".join(
            f" | {metrics[f'{protocol}/{domain}/{name}']:>15.4f}" for protocol in protocols for name in names
        )
        lines.append(f"{domain:<{width}}{cells}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score the chosen source, print the table and write the JSON."""
    # faiss reports its CPU-feature probing at INFO level, which would bury the table.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.embeddings is not None:
        if args.truncate_dim is not None:
            raise ValueError(
                "--truncate-dim needs --model: an embeddings file does not say which widths were trained"
            )
        if args.save_embeddings is not None:
            raise ValueError("--save-embeddings needs --model: the --embeddings file already holds them")
        retrieval = domains_from_file(args.embeddings, args.benchmark, args.split, args.domains)
        sizes = {
            name: {
                "queries": len(domain.query_embeddings),
                "index": len(domain.query_embeddings if domain.query_is_index else domain.index_embeddings),
            }
            for name, domain in retrieval.items()
        }
        metrics = evaluate_retrieval(
            retrieval, protocols=args.protocols, map_k=args.map_k, backend=args.backend
        )
        source = {"embeddings": str(args.embeddings)}
    else:
        metrics = evaluate_model(args)
        sizes = None
        source = {"model": str(args.model), "benchmark": str(args.benchmark or "default")}
        if args.truncate_dim is not None:
            source["truncate_dim"] = args.truncate_dim
    print(format_table(metrics, args.protocols, args.map_k))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {**source, "split": args.split, "protocols": args.protocols, "metrics": metrics}
        if sizes is not None:
            payload["sizes"] = sizes
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
        logger.info("metrics written to %s", args.output)
    return 0


__all__ = ["domains_from_file", "format_table", "register", "run"]
