"""``hf-distill show``: a picture of what an embedder retrieves.

For a few queries per domain (spread evenly over each query set) the grid shows the query (blue frame) and
its top-k neighbours from the merged index of all domains: green frame = relevant (same domain and label),
orange = wrong; rank and domain are written above each image. Embeddings come from
``UniversalEmbedderModel.encode`` (the saved image processor).

Sources:

- ``--benchmark DIR`` (default: $HF_DISTILL_BENCHMARK, else data/manydomain): the ``--split`` evaluation pairs
  of each domain (queries against the index split, or against the query split itself minus the query);
- ``--images DIR``: a folder laid out ``DIR/<domain>/<class>/<image>`` (or ``DIR/<class>/<image>`` for one
  domain named after the folder); every image is a query, searched among all the others.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``show`` sub-command."""
    parser = subparsers.add_parser(
        "show",
        help="draw queries and their top-k neighbours (correct / wrong) as a PNG grid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="embedder folder (or Hub id) saved by hf_distill")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--benchmark", type=Path, default=None, help="benchmark directory")
    source.add_argument("--images", type=Path, default=None, help="DIR/<domain>/<class>/<image> folder")
    parser.add_argument("--output", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--split", default="test", choices=["test", "val"], help="benchmark evaluation pairs")
    parser.add_argument("--domains", nargs="+", default=None, help="only these domains")
    parser.add_argument("--queries-per-domain", type=int, default=3, help="rows per domain")
    parser.add_argument("--k", type=int, default=5, help="neighbours per query")
    parser.add_argument("--truncate-dim", type=int, default=None, help="a Matryoshka width of the model")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"], help="k-NN backend")
    parser.set_defaults(func=run)


def _load_embedder(source: str, truncate_dim: int | None) -> Any:
    from transformers import AutoModel

    import hf_distill  # noqa: F401  (registers the embedder with the Auto classes)
    from hf_distill.models.embedder import UniversalEmbedderModel, check_truncate_dim

    model = AutoModel.from_pretrained(source)
    if not isinstance(model, UniversalEmbedderModel):
        raise ValueError(f"--model {source} is a {type(model).__name__}, not a universal embedder")
    check_truncate_dim(truncate_dim, model.config.matryoshka_dims, "--truncate-dim")
    return model


def benchmark_domains(
    model: Any,
    benchmark: Any,
    split: str = "test",
    domains: list[str] | None = None,
    batch_size: int = 64,
    truncate_dim: int | None = None,
) -> tuple[dict[str, Any], Any, Any]:
    """Embed a benchmark's evaluation pairs with ``model.encode``.

    Args:
        model: a ``UniversalEmbedderModel``.
        benchmark: a loaded ``Benchmark``.
        split: evaluation pairs (``"test"`` or ``"val"``).
        domains: only these domains (default: all with a pair).
        batch_size: images per forward pass.
        truncate_dim: a Matryoshka width, or ``None``.

    Returns:
        ``(retrieval domains, query image lookup, index image lookup)`` for ``retrieval_rows`` and
        ``draw_retrieval_grid``.
    """
    from hf_distill.evaluation import RetrievalDomain
    from hf_distill.evaluation.retrieval_grid import benchmark_image_lookups

    if split not in benchmark.eval_pairs:
        raise ValueError(
            f"the benchmark has no {split!r} evaluation pairs; it has {list(benchmark.eval_pairs)}"
        )
    pairs = benchmark.eval_pairs[split]
    names = list(pairs) if domains is None else domains
    unknown = [name for name in names if name not in pairs]
    if unknown:
        raise ValueError(f"--domains {unknown} have no {split!r} pair; the benchmark has {list(pairs)}")

    def encode(dataset: Any) -> Any:
        return model.encode(dataset["image"], batch_size=batch_size, truncate_dim=truncate_dim)

    retrieval = {}
    for name in names:
        query_split, index_split = pairs[name]
        splits = benchmark.domains[name]
        queries = encode(splits[query_split])
        query_labels = list(splits[query_split]["label"])
        if query_split == index_split:
            retrieval[name] = RetrievalDomain(queries, query_labels)
        else:
            retrieval[name] = RetrievalDomain(
                queries, query_labels, encode(splits[index_split]), list(splits[index_split]["label"])
            )
    return (retrieval, *benchmark_image_lookups(benchmark, split, names))


def folder_layout(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """``{domain: {class: [image paths]}}`` of a ``DIR/<domain>/<class>/<image>`` or ``DIR/<class>/<image>`` folder."""
    from hf_distill.commands.embed import find_images

    paths = find_images(folder)
    depths = {len(path.relative_to(folder).parts) for path in paths}
    if depths - {2, 3} or len(depths) != 1:
        raise ValueError(
            f"--images {folder}: images must all sit at DIR/<domain>/<class>/<image> or all at "
            f"DIR/<class>/<image>; found them at depths {sorted(depths)} below the folder"
        )
    layout: dict[str, dict[str, list[Path]]] = {}
    for path in paths:
        parts = path.relative_to(folder).parts
        domain, label = (folder.name, parts[0]) if len(parts) == 2 else parts[:2]
        layout.setdefault(domain, {}).setdefault(label, []).append(path)
    return layout


def folder_domains(
    model: Any, folder: Path, batch_size: int = 64, truncate_dim: int | None = None
) -> tuple[dict[str, Any], Any, Any]:
    """Embed an image folder (see :func:`folder_layout`); each domain's images are its queries and its index.

    Returns:
        as :func:`benchmark_domains`.
    """
    from PIL import Image

    from hf_distill.evaluation import RetrievalDomain

    layout = folder_layout(folder)
    retrieval, files = {}, {}
    for domain, classes in layout.items():
        files[domain] = [path for label in sorted(classes) for path in classes[label]]
        labels = [number for number, label in enumerate(sorted(classes)) for _ in classes[label]]
        embeddings = model.encode(files[domain], batch_size=batch_size, truncate_dim=truncate_dim)
        retrieval[domain] = RetrievalDomain(embeddings, labels)

    def lookup(domain: str, position: int) -> Any:
        with Image.open(files[domain][position]) as image:
            return image.convert("RGB")

    return retrieval, lookup, lookup


def run(args: argparse.Namespace) -> int:
    """Run ``hf-distill show``."""
    from hf_distill.evaluation.retrieval_grid import draw_retrieval_grid, retrieval_rows

    if args.output.suffix.lower() != ".png":
        raise ValueError(f"--output {args.output} must end with .png")
    model = _load_embedder(args.model, args.truncate_dim).to(args.device).eval()
    if args.images is not None:
        retrieval, query_image, index_image = folder_domains(
            model, args.images, args.batch_size, args.truncate_dim
        )
        if args.domains is not None:
            unknown = [name for name in args.domains if name not in retrieval]
            if unknown:
                raise ValueError(
                    f"--domains {unknown} are not folders of --images {args.images}: {list(retrieval)}"
                )
            retrieval = {name: retrieval[name] for name in args.domains}
    else:
        from hf_distill.data import load_benchmark

        benchmark = load_benchmark(args.benchmark, domains=args.domains)
        retrieval, query_image, index_image = benchmark_domains(
            model, benchmark, args.split, args.domains, args.batch_size, args.truncate_dim
        )
    rows = retrieval_rows(retrieval, args.queries_per_domain, args.k, args.backend)
    draw_retrieval_grid(rows, query_image, index_image, args.output)
    correct = sum(n.correct for row in rows for n in row.neighbors)
    total = sum(len(row.neighbors) for row in rows)
    print(f"wrote {args.output}: {len(rows)} queries, {correct} of {total} neighbours correct")
    return 0


__all__ = ["benchmark_domains", "folder_domains", "folder_layout", "register", "run"]
