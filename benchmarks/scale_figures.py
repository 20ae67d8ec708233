"""Figures for docs/scale.md: UnED-size cache sizes (arithmetic) and exact faiss retrieval measured on a generated
index of UnED's size, extrapolated linearly in the number of queries.

    HF_HUB_OFFLINE=1 python benchmarks/scale_figures.py [--index 1400000] [--dim 64] [--queries 2000]

Exact inner-product search (``faiss.IndexFlatIP``) costs queries × index × dim multiply-adds whatever the data, so
a measured slice of the queries gives the whole search time at the same thread count.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from table import load_average

UNED_TRAIN_IMAGES = 2_800_000
UNED_QUERIES = 241_000
UNED_INDEX = 1_400_000


def cache_sizes() -> None:
    for dim, label in ((1280, "EfficientNet pooled / ViT-H width"), (768, "ViT-B"), (64, "UDON embedding")):
        for name, bytes_per in (("fp16", 2), ("fp32", 4)):
            gib = UNED_TRAIN_IMAGES * dim * bytes_per / 2**30
            print(f"cache {UNED_TRAIN_IMAGES:,} x {dim} ({label}) in {name}: {gib:,.1f} GiB")


def exact_search(index_size: int, dim: int, queries: int, threads: int) -> float:
    import faiss

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    index = faiss.IndexFlatIP(dim)
    for start in range(0, index_size, 200_000):
        block = rng.standard_normal((min(200_000, index_size - start), dim), dtype=np.float32)
        faiss.normalize_L2(block)
        index.add(block)
    query = rng.standard_normal((queries, dim), dtype=np.float32)
    faiss.normalize_L2(query)
    index.search(query[:100], 10)  # warm-up
    start = time.perf_counter()
    index.search(query, 100)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=int, default=UNED_INDEX)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"load average before: {load_average():.1f}")
    cache_sizes()
    seconds = exact_search(args.index, args.dim, args.queries, args.threads)
    whole = seconds * UNED_QUERIES / args.queries
    print(
        f"exact faiss IndexFlatIP, {args.index:,} x {args.dim} index, top-100, {args.threads} thread(s): "
        f"{args.queries:,} queries in {seconds:.2f} s ({args.queries / seconds:,.0f} queries/s) -> "
        f"{UNED_QUERIES:,} queries in {whole / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
