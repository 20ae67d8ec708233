"""Time and memory of UnED retrieval evaluation: the library against raw faiss (its limit) and a naive matrix.

Default size: 10k queries against a 200k x 64 index (the issue's figure: ``--index-size 1000000``) of random
unit vectors (scattered around random class centroids, so that R@1 is not zero) split over 4 domains of
unequal size. Each method runs in its own
worker process, so that its peak resident memory (``ru_maxrss`` from ``resource.getrusage``, which counts
torch and faiss allocations alike) is its own. The "above data" column subtracts the resident size
measured once the embeddings exist, i.e. what the search itself costs.

Methods:
- ``faiss-knn``: raw ``faiss.knn`` of all queries against the whole index (the merged protocol's search, top 5,
  no metric), with ``faiss.cvar.distance_compute_blas_threshold`` lowered to 0 so that faiss takes its BLAS
  path (this faiss build's default, 128000, sends fewer queries down a 2-3x slower pair-by-pair path): the limit;
- ``faiss-flatip``: the same search as ``IndexFlatIP.add`` + ``.search`` (BLAS forced too);
- ``library-faiss`` / ``library-separate`` / ``library-torch``:
  ``hf_distill.evaluation.evaluate_retrieval`` with the merged protocol (faiss or torch k-NN backend, the torch
  one chunked under ``--memory-budget-mb``) or the separate protocol (faiss), metrics included;
- ``naive``: ``queries @ index.T`` as one matrix, ``topk``, then the same metric code. Skipped (and said so)
  when the matrix does not fit in the available memory.

Prints ``ROW`` lines for ``benchmarks/run_all.py``: library merged / raw ``faiss.knn`` (target <= 1.1) and the
others against the same limit, with each method's peak memory. The ratios come from one more worker process
that times the faiss methods in turns (``--rounds`` rounds after a warm-up, medians), since methods timed one
after the other in separate processes see different machine loads.

Usage: ``python benchmarks/bench_retrieval.py [--queries 10000] [--index-size 200000] [--threads 2]
[--methods faiss-knn faiss-flatip library-faiss library-separate library-torch naive]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from table import emit_row, interleaved_medians

from hf_distill.evaluation.knn import faiss_available
from hf_distill.evaluation.metrics import RetrievalDomain, evaluate_retrieval, label_matrix, query_metrics

METHODS = ("faiss-knn", "faiss-flatip", "library-faiss", "library-separate", "library-torch", "naive")
DEFAULT_METHODS = ("faiss-knn", "faiss-flatip", "library-faiss", "library-separate")
FAISS_METHODS = ("faiss-knn", "faiss-flatip", "library-faiss", "library-separate")
DOMAIN_SHARES = (0.4, 0.3, 0.2, 0.1)


def _rss_mib() -> float:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _clustered_unit_vectors(
    labels: np.ndarray, centroids: torch.Tensor, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """Unit vectors around their class centroid, made in blocks so generation does not set the peak memory."""
    out = torch.empty((len(labels), centroids.shape[1]), dtype=torch.float32)
    for start in range(0, len(labels), 100_000):
        rows = torch.from_numpy(labels[start : start + 100_000])
        block = centroids[rows] + noise * torch.randn(len(rows), centroids.shape[1], generator=generator)
        out[start : start + len(rows)] = torch.nn.functional.normalize(block, dim=1)
    return out


def _split_sizes(total: int, domains: int) -> list[int]:
    shares = np.asarray(DOMAIN_SHARES[:domains] if domains <= len(DOMAIN_SHARES) else [1.0] * domains)
    sizes = np.floor(shares / shares.sum() * total).astype(int)
    sizes[0] += total - sizes.sum()
    return sizes.tolist()


def make_domains(args: argparse.Namespace) -> dict[str, RetrievalDomain]:
    """Query and index sets of ``args.domains`` domains: random unit vectors scattered (``args.noise`` per
    dimension) around random class centroids, ``args.classes`` classes per domain."""
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    domains = {}
    sizes = zip(_split_sizes(args.queries, args.domains), _split_sizes(args.index_size, args.domains))
    for number, (n_query, n_index) in enumerate(sizes):
        centroids = torch.nn.functional.normalize(
            torch.randn(args.classes, args.dim, generator=generator), dim=1
        )
        query_labels = rng.integers(0, args.classes, n_query)
        index_labels = rng.integers(0, args.classes, n_index)
        domains[f"domain{number}"] = RetrievalDomain(
            _clustered_unit_vectors(query_labels, centroids, args.noise, generator),
            query_labels,
            _clustered_unit_vectors(index_labels, centroids, args.noise, generator),
            index_labels,
        )
    return domains


def naive_merged(domains: dict[str, RetrievalDomain]) -> dict[str, float]:
    """Merged protocol with the whole similarity matrix in memory (what the library avoids)."""
    names = list(domains)
    queries = torch.cat([torch.as_tensor(domains[name].query_embeddings) for name in names])
    index = torch.cat([torch.as_tensor(domains[name].index_embeddings) for name in names])
    _, neighbors = (queries @ index.T).topk(5, dim=1)
    query_labels = [label_matrix(domains[name].query_labels) for name in names]
    index_labels = [label_matrix(domains[name].index_labels) for name in names]
    query_domains = np.repeat(np.arange(len(names)), [len(labels) for labels in query_labels])
    index_domains = np.repeat(np.arange(len(names)), [len(labels) for labels in index_labels])
    all_index_labels = np.concatenate(index_labels)
    all_query_labels = np.concatenate(query_labels)
    n_relevant = np.zeros(len(all_query_labels), dtype=np.int64)
    for number in range(len(names)):
        counts = np.bincount(all_index_labels[index_domains == number, 0])
        rows = query_domains == number
        labels = all_query_labels[rows, 0]
        n_relevant[rows] = np.where(labels < len(counts), counts[np.minimum(labels, len(counts) - 1)], 0)
    scores = query_metrics(
        neighbors.numpy(), all_query_labels, query_domains, all_index_labels, index_domains, n_relevant
    )
    return {
        "merged/mean/R@1": float(
            np.mean([scores["R@1"][query_domains == n].mean() for n in range(len(names))])
        )
    }


def raw_faiss(domains: dict[str, RetrievalDomain], method: str, k: int = 5) -> None:
    """The merged protocol's search alone, with faiss's BLAS path forced on."""
    import faiss

    queries = np.ascontiguousarray(torch.cat([d.query_embeddings for d in domains.values()]).numpy())
    index = np.ascontiguousarray(torch.cat([d.index_embeddings for d in domains.values()]).numpy())
    faiss.cvar.distance_compute_blas_threshold = 0
    if method == "faiss-knn":
        faiss.knn(queries, index, k, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        flat = faiss.IndexFlatIP(index.shape[1])
        flat.add(index)
        flat.search(queries, k)


def interleaved_worker(args: argparse.Namespace) -> None:
    """Time the faiss methods in turns on the same data; print their median seconds as one JSON line."""
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    domains = make_domains(args)

    def library(protocol: str):
        return lambda: evaluate_retrieval(domains, protocols=[protocol], backend="faiss")

    functions = {
        "faiss-knn": lambda: raw_faiss(domains, "faiss-knn"),
        "faiss-flatip": lambda: raw_faiss(domains, "faiss-flatip"),
        "library-faiss": library("merged"),
        "library-separate": library("separate"),
    }
    print(json.dumps(interleaved_medians(functions, args.rounds)))


def worker(args: argparse.Namespace) -> None:
    """Run one method and print one JSON line of figures."""
    if args.method == "interleaved":
        interleaved_worker(args)
        return
    torch.set_num_threads(args.threads)
    if args.method in FAISS_METHODS:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    domains = make_domains(args)
    data_rss = _rss_mib()
    start = time.perf_counter()
    r_at_1 = float("nan")
    if args.method == "naive":
        r_at_1 = naive_merged(domains)["merged/mean/R@1"]
    elif args.method.startswith("faiss-"):
        raw_faiss(domains, args.method)
    else:
        protocol = "separate" if args.method == "library-separate" else "merged"
        metrics = evaluate_retrieval(
            domains,
            protocols=[protocol],
            backend="torch" if args.method == "library-torch" else "faiss",
            memory_budget_mb=args.memory_budget_mb,
        )
        r_at_1 = metrics[f"{protocol}/mean/R@1"]
    seconds = time.perf_counter() - start
    peak = _peak_rss_mib()
    figures = {"seconds": seconds, "peak_rss_mib": peak, "data_rss_mib": data_rss, "R@1": r_at_1}
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--index-size", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--domains", type=int, default=4)
    parser.add_argument("--classes", type=int, default=1000, help="labels per domain")
    parser.add_argument(
        "--noise", type=float, default=0.15, help="per-dimension spread around class centroids"
    )
    parser.add_argument("--memory-budget-mb", type=float, default=256.0, help="torch backend score block")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of the interleaved timing (after a warm-up)"
    )
    parser.add_argument("--method", choices=(*METHODS, "interleaved"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method is not None:
        worker(args)
        return

    print(
        f"retrieval: {args.queries} queries x {args.index_size} index x {args.dim}-d, "
        f"{args.domains} domains, {args.threads} threads, torch budget {args.memory_budget_mb:g} MB"
    )
    print("memory: peak RSS = resource.getrusage(RUSAGE_SELF).ru_maxrss of a worker process per method")
    print(f"{'method':<16} {'seconds':>9} {'peak RSS MiB':>13} {'above data MiB':>15} {'mean R@1':>9}")
    worker_argv = [arg for arg in sys.argv[1:]]
    results = {}
    for method in args.methods:
        if method in FAISS_METHODS and not faiss_available():
            print(f"{method:<16} skipped: faiss is not installed")
            continue
        if method == "naive":
            needed = args.queries * args.index_size * 4 / 2**20
            available = _available_mib()
            if needed > 0.8 * available:
                print(
                    f"{method:<16} skipped: the {args.queries} x {args.index_size} float32 score matrix needs "
                    f"{needed / 1024:.1f} GiB, {available / 1024:.1f} GiB available"
                )
                continue
        completed = subprocess.run(
            [sys.executable, __file__, *worker_argv, "--method", method],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
        results[method] = figures
        print(
            f"{method:<16} {figures['seconds']:>9.2f} {figures['peak_rss_mib']:>13.0f} "
            f"{figures['peak_rss_mib'] - figures['data_rss_mib']:>15.0f} {figures['R@1']:>9.4f}"
        )
    merged = {
        round(figures["R@1"], 12)
        for method, figures in results.items()
        if method in ("library-faiss", "library-torch", "naive")
    }
    if len(merged) > 1:
        print("warning: the methods disagree on merged R@1", file=sys.stderr)
    limit = results.get("faiss-knn")
    if limit is None:
        return
    completed = subprocess.run(
        [sys.executable, __file__, *worker_argv, "--method", "interleaved"],
        check=True,
        capture_output=True,
        text=True,
    )
    medians = json.loads(completed.stdout.strip().splitlines()[-1])
    print(
        f"interleaved, median of {args.rounds} rounds (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in medians.items())
    )
    size = f"{args.queries:,} q x {args.index_size:,} x {args.dim}-d"
    labels = {
        "library-faiss": f"retrieval merged, library (faiss), {size}",
        "library-separate": f"retrieval separate, library (faiss), {size}",
        "library-torch": f"retrieval merged, library (torch), {size}",
        "faiss-flatip": f"IndexFlatIP.search, BLAS forced, {size}",
        "naive": f"retrieval merged, naive full matrix, {size}",
    }
    for method, label in labels.items():
        if method in results:
            figures = results[method]
            emit_row(
                label,
                medians.get(method, figures["seconds"]),
                "raw faiss.knn, BLAS forced",
                medians["faiss-knn"],
                "s",
                1.1 if method == "library-faiss" else None,
                note=f"peak RSS above data: {figures['peak_rss_mib'] - figures['data_rss_mib']:,.0f} MiB "
                f"(faiss.knn: {limit['peak_rss_mib'] - limit['data_rss_mib']:,.0f} MiB); {args.threads} threads; "
                + ("interleaved medians" if method in medians else "separate process"),
            )


if __name__ == "__main__":
    main()
