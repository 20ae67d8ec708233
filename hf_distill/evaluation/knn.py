"""Exact cosine k-nearest-neighbour search with a deterministic order.

Two backends give the same neighbours: faiss ``IndexFlatIP`` (when faiss is installed) and a chunked torch
matrix product that keeps a running top-k, so memory stays bounded by ``memory_budget_mb`` whatever the
index size. Both return neighbours sorted by decreasing similarity, **ties broken by increasing index
position**; this order is enforced on top of each backend (neither faiss' heaps nor ``torch.topk`` promise
an order among equal scores), so results do not depend on the backend, the chunk size or the thread count.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

Backend = Literal["auto", "faiss", "torch"]

# Rows of queries searched at once; the index chunk then follows from the memory budget.
_QUERY_BLOCK = 1024
# The score block plus the temporaries of top-k take about this many float32 copies of it.
_SCORE_COPIES = 2
# faiss' usual default for when its exhaustive search switches to matrix products.
_FAISS_BLAS_THRESHOLD = 20
# Rows whose norm is this close to 1 count as normalised already.
_UNIT_TOLERANCE = 1e-5


def faiss_available() -> bool:
    """Whether the ``faiss`` package can be imported."""
    return importlib.util.find_spec("faiss") is not None


def as_unit_float32(embeddings: np.ndarray | torch.Tensor, name: str = "embeddings") -> torch.Tensor:
    """Return a contiguous float32 CPU tensor of L2-normalised rows.

    Args:
        embeddings: a 2-D array or tensor, one vector per row.
        name: how to call the input in error messages.

    Rows that are already unit vectors are used as they are, without a copy (an index of millions of
    vectors is not duplicated). A zero row stays zero (its cosine similarity to everything is 0); a
    non-finite value is an error.
    """
    tensor = torch.as_tensor(embeddings).detach().to("cpu", torch.float32)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (items x dims), got shape {tuple(tensor.shape)}")
    norms = torch.linalg.vector_norm(tensor, dim=1)
    if not torch.isfinite(norms).all():
        bad = int((~torch.isfinite(norms)).nonzero()[0])
        raise ValueError(f"{name} contains NaN or infinite values (first bad row: {bad})")
    if len(norms) and bool(((norms - 1).abs() <= _UNIT_TOLERANCE).all()):
        return tensor.contiguous()
    return torch.nn.functional.normalize(tensor, dim=1).contiguous()


def _lexicographic(scores: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by decreasing score, then increasing id."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    return scores.gather(1, by_score), ids.gather(1, by_score)


def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of each row of ``scores`` in (score desc, column asc) order.

    ``torch.topk`` is asked for one extra column: when the k-th and the (k+1)-th scores differ, the k
    largest are determined and only their order needs fixing. Rows where they are equal (a tie across the
    cut) fall back to a stable full sort of that row, which picks the lowest columns among the tied ones.
    """
    n_cols = scores.shape[1]
    take = min(k + 1, n_cols)
    values, columns = torch.topk(scores, take, dim=1)
    values, columns = _lexicographic(values, columns)
    if take > k:
        tied = (values[:, k - 1] == values[:, k]).nonzero().flatten()
        values, columns = values[:, :k].clone(), columns[:, :k].clone()
        if len(tied):
            order = torch.argsort(scores[tied], dim=1, descending=True, stable=True)[:, :k]
            values[tied] = scores[tied].gather(1, order)
            columns[tied] = order
    return values, columns


def _torch_search(
    queries: torch.Tensor, index: torch.Tensor, k: int, memory_budget_mb: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked exact search keeping a running top-k per query (see ``knn_search``)."""
    n_queries, n_index = len(queries), len(index)
    query_block = max(1, min(n_queries, _QUERY_BLOCK))
    budget_floats = int(memory_budget_mb * 2**20 / 4 / _SCORE_COPIES)
    index_block = max(1, min(n_index, budget_floats // query_block))
    all_scores = torch.empty((n_queries, k), dtype=torch.float32)
    all_ids = torch.empty((n_queries, k), dtype=torch.int64)
    for q_start in range(0, n_queries, query_block):
        block = queries[q_start : q_start + query_block]
        best_scores = torch.empty((len(block), 0), dtype=torch.float32)
        best_ids = torch.empty((len(block), 0), dtype=torch.int64)
        for i_start in range(0, n_index, index_block):
            chunk = index[i_start : i_start + index_block]
            scores, columns = _chunk_topk(block @ chunk.T, k)
            # The running best holds only ids below ``i_start``, so a stable sort by score of
            # [running, chunk] keeps ties in increasing id order.
            merged_scores = torch.cat([best_scores, scores], dim=1)
            merged_ids = torch.cat([best_ids, columns + i_start], dim=1)
            order = torch.argsort(merged_scores, dim=1, descending=True, stable=True)[:, :k]
            best_scores, best_ids = merged_scores.gather(1, order), merged_ids.gather(1, order)
        all_scores[q_start : q_start + len(block)] = best_scores
        all_ids[q_start : q_start + len(block)] = best_ids
    return all_scores, all_ids


def _faiss_search(
    queries: torch.Tensor, index: torch.Tensor, k: int, memory_budget_mb: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss ``IndexFlatIP`` search re-ordered to (score desc, id asc); cut ties are redone exactly."""
    import faiss

    flat = faiss.IndexFlatIP(index.shape[1])
    flat.add(index.numpy())
    take = min(k + 1, len(index))
    # Below this many queries faiss compares vectors pair by pair instead of calling BLAS; some builds set
    # it to 128000, about 10x slower here. The BLAS path works on fixed-size blocks, so memory stays bounded.
    threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = _FAISS_BLAS_THRESHOLD
    try:
        raw_scores, raw_ids = flat.search(queries.numpy(), take)
    finally:
        faiss.cvar.distance_compute_blas_threshold = threshold
    scores, ids = _lexicographic(torch.from_numpy(raw_scores), torch.from_numpy(raw_ids))
    if take == k:
        return scores, ids
    tied = (scores[:, k - 1] == scores[:, k]).nonzero().flatten()
    scores, ids = scores[:, :k].clone(), ids[:, :k].clone()
    if len(tied):
        # faiss returned an arbitrary subset of the items tied at the cut; only an exhaustive pass over
        # the index can find the lowest ids among them.
        scores[tied], ids[tied] = _torch_search(queries[tied], index, k, memory_budget_mb)
    return scores, ids


def knn_search(
    queries: np.ndarray | torch.Tensor,
    index: np.ndarray | torch.Tensor,
    k: int,
    exclude: np.ndarray | torch.Tensor | None = None,
    backend: Backend = "auto",
    memory_budget_mb: float = 256.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN of every query among the index rows.

    Args:
        queries: ``(n_queries, dim)`` vectors; L2-normalised here.
        index: ``(n_index, dim)`` vectors; L2-normalised here.
        k: number of neighbours to return per query.
        exclude: optional ``(n_queries,)`` integer array: the index position that each query must not get
            as a neighbour (the query itself when the query set is the index set), or -1 for none. The
            item is removed by identity, not by rank, so a duplicate image that ties with the query cannot
            be removed in its place. (UnED's released code drops the first neighbour, which assumes the
            query ranks first; the two agree whenever it does.)
        backend: ``"faiss"``, ``"torch"`` or ``"auto"`` (faiss when installed, else torch).
        memory_budget_mb: bound on the score block of the torch backend (and of the exact pass that
            resolves ties for faiss).

    Returns:
        ``(scores, ids)``, both ``(n_queries, k)``: cosine similarities (float32) and index positions
        (int64), sorted by decreasing similarity then increasing position. When fewer than ``k`` items
        are available the missing entries have id -1 and score ``-inf``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "faiss" and not faiss_available():
        raise ImportError("backend='faiss' needs the faiss package: pip install 'hf_distill[faiss]'")
    use_faiss = backend == "faiss" or (backend == "auto" and faiss_available())
    query_vectors = as_unit_float32(queries, "queries")
    index_vectors = as_unit_float32(index, "index")
    if query_vectors.shape[1] != index_vectors.shape[1]:
        raise ValueError(
            f"queries have dimension {query_vectors.shape[1]} but the index has {index_vectors.shape[1]}"
        )
    n_queries, n_index = len(query_vectors), len(index_vectors)
    excluded = None
    if exclude is not None:
        excluded = torch.as_tensor(exclude, dtype=torch.int64).flatten()
        if len(excluded) != n_queries:
            raise ValueError(f"exclude has {len(excluded)} entries for {n_queries} queries")
    # One extra neighbour when an item may be excluded, so k remain after removing it.
    search_k = min(k + (excluded is not None), n_index)
    scores = torch.full((n_queries, k), float("-inf"), dtype=torch.float32)
    ids = torch.full((n_queries, k), -1, dtype=torch.int64)
    if n_queries == 0 or n_index == 0:
        return scores.numpy(), ids.numpy()
    search = _faiss_search if use_faiss else _torch_search
    found_scores, found_ids = search(query_vectors, index_vectors, search_k, memory_budget_mb)
    if excluded is not None:
        # Drop the excluded id where it was found; elsewhere drop the last (extra) neighbour.
        drop = found_ids == excluded[:, None]
        no_hit = ~drop.any(dim=1)
        drop[no_hit, -1] = search_k > k
        keep = ~drop
        rows = torch.arange(n_queries)[:, None].expand_as(keep)[keep]
        cols = (keep.cumsum(dim=1) - 1)[keep]
        scores[rows, cols] = found_scores[keep]
        ids[rows, cols] = found_ids[keep]
    else:
        scores[:, :search_k] = found_scores
        ids[:, :search_k] = found_ids
    return scores.numpy(), ids.numpy()
