"""Retrieval metrics of the UnED protocol (SPEC.md section 2): R@1, mP@5 and mAP@k.

A neighbour is *relevant* to a query when it comes from the query's domain and carries (one of) the
query's label(s). For each query ``n_q`` is the number of relevant items in the index: for a multi-label
query it is the sum, over its distinct labels, of the number of index items of its domain with that label
(as in UnED's released code). When the query set is also the index set the query itself is excluded from
its neighbours and from ``n_q``. Scores are averaged over the queries of a domain, then without weights
over domains.

Protocols: **merged** (the UnED standard) searches every domain's queries in the union of all domains'
index sets, so neighbours from other domains can take the first ranks and count as misses; **separate**
(oracle) searches each domain's queries in its own index only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hf_distill.evaluation.knn import Backend, as_unit_float32, knn_search

PROTOCOLS = ("merged", "separate")
# One label, several labels, or a padded label matrix.
Labels = Sequence[int | Sequence[int]] | np.ndarray | torch.Tensor


def label_matrix(labels: Labels, name: str = "labels") -> np.ndarray:
    """Turn labels into an ``(n, L)`` int64 matrix padded with -1 (distinct labels per row).

    Args:
        labels: a 1-D sequence of ints, a sequence of int lists (multi-label items), or a 2-D integer
            array already padded with -1.
        name: how to call the labels in error messages (e.g. ``"cars query labels"``).
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.numpy()
    if not isinstance(labels, np.ndarray) and all(isinstance(v, (int, np.integer)) for v in labels):
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu" or labels.ndim not in (1, 2):
            raise ValueError(
                f"{name}: expected a 1-D or 2-D integer array, got {labels.dtype} {labels.shape}"
            )
        if labels.ndim == 1:
            # The common single-label case, kept vectorised for indexes of millions of items.
            if (labels < 0).any():
                raise ValueError(f"{name}: item {int(np.argmax(labels < 0))} has a negative label")
            return labels.astype(np.int64).reshape(-1, 1)
        rows = [[int(v) for v in row if v >= 0] for row in labels]
    else:
        rows = []
        for position, label in enumerate(labels):
            values = list(label) if isinstance(label, (list, tuple, np.ndarray)) else [label]
            if any(not isinstance(v, (int, np.integer)) or v < 0 for v in values):
                raise ValueError(f"{name}: item {position} has label {label!r}; labels must be ints >= 0")
            rows.append([int(v) for v in values])
    rows = [sorted(set(row)) for row in rows]
    empty = next((position for position, row in enumerate(rows) if not row), None)
    if empty is not None:
        raise ValueError(f"{name}: item {empty} has no label")
    width = max((len(row) for row in rows), default=1)
    matrix = np.full((len(rows), width), -1, dtype=np.int64)
    for position, row in enumerate(rows):
        matrix[position, : len(row)] = row
    return matrix


@dataclass
class RetrievalDomain:
    """Embeddings and labels of one domain's query set and index set.

    Args:
        query_embeddings: ``(n_queries, dim)`` array or tensor.
        query_labels: one label per query (an int, or a list of ints for multi-label queries).
        index_embeddings: ``(n_index, dim)``; ``None`` when the query set is also the index set, in
            which case each query is excluded from its own neighbours and from ``n_q``.
        index_labels: labels of the index items; ``None`` exactly when ``index_embeddings`` is.
    """

    query_embeddings: np.ndarray | torch.Tensor
    query_labels: Labels
    index_embeddings: np.ndarray | torch.Tensor | None = None
    index_labels: Labels | None = None

    @property
    def query_is_index(self) -> bool:
        return self.index_embeddings is None


def _relevant_counts(query_labels: np.ndarray, index_labels: np.ndarray, query_is_index: bool) -> np.ndarray:
    """``n_q`` for each query of one domain (see the module docstring)."""
    valid = index_labels[index_labels >= 0]
    counts = np.bincount(valid, minlength=int(query_labels.max(initial=0)) + 1)
    has_label = query_labels >= 0
    n_relevant = np.where(has_label, counts[np.where(has_label, query_labels, 0)], 0).sum(axis=1)
    if query_is_index:
        # The query itself was counted once under each of its labels.
        n_relevant -= has_label.sum(axis=1)
    return n_relevant


def relevant_neighbors(
    neighbor_ids: np.ndarray,
    query_labels: np.ndarray,
    query_domains: np.ndarray,
    index_labels: np.ndarray,
    index_domains: np.ndarray,
) -> np.ndarray:
    """Which ranked neighbours are relevant: same domain as the query and (one of) its label(s).

    Args:
        neighbor_ids: ``(n_queries, k)`` index positions, best first, -1 for none (never relevant).
        query_labels / index_labels: label matrices (``label_matrix``).
        query_domains / index_domains: domain ids of the queries and of the index items.

    Returns:
        ``(n_queries, k)`` bool array.
    """
    found = neighbor_ids >= 0
    safe = np.where(found, neighbor_ids, 0)
    same_domain = index_domains[safe] == query_domains[:, None]
    neighbor_labels = index_labels[safe]  # (n_queries, k, Li)
    label_hit = (neighbor_labels[:, :, :, None] == query_labels[:, None, None, :]) & (
        query_labels[:, None, None, :] >= 0
    )
    return found & same_domain & label_hit.any(axis=(2, 3))


def query_metrics(
    neighbor_ids: np.ndarray,
    query_labels: np.ndarray,
    query_domains: np.ndarray,
    index_labels: np.ndarray,
    index_domains: np.ndarray,
    n_relevant: np.ndarray,
    map_k: int = 5,
) -> dict[str, np.ndarray]:
    """Per-query R@1, mP@5 and mAP@k from ranked neighbours.

    Args:
        neighbor_ids: ``(n_queries, >= max(5, map_k))`` index positions, best first, -1 for none.
        query_labels: ``(n_queries, Lq)`` label matrix (``label_matrix``).
        query_domains: ``(n_queries,)`` domain ids.
        index_labels: ``(n_index, Li)`` label matrix.
        index_domains: ``(n_index,)`` domain ids.
        n_relevant: ``(n_queries,)`` number of relevant index items ``n_q``.
        map_k: cut-off of mAP@k.

    Returns:
        ``{"R@1": ..., "mP@5": ..., f"mAP@{map_k}": ...}``, each a float64 array over the queries.
        R@1 is 1 when the first neighbour is relevant. mP@5 looks at the first ``m = min(5, n_q)``
        neighbours only and is (relevant among them) / m. AP@k sums precision@i at each relevant rank
        i <= k and divides by ``min(k, n_q)``. A query with ``n_q = 0`` scores 0 everywhere.
    """
    depth = max(5, map_k)
    if neighbor_ids.shape[1] < depth:
        raise ValueError(f"need at least {depth} neighbours per query, got {neighbor_ids.shape[1]}")
    ids = neighbor_ids[:, :depth]
    relevant = relevant_neighbors(ids, query_labels, query_domains, index_labels, index_domains)
    hits = np.cumsum(relevant, axis=1)
    rows = np.arange(len(ids))

    window = np.minimum(5, n_relevant)
    precision_at_window = hits[rows, np.maximum(window, 1) - 1] / np.maximum(window, 1)
    map_window = np.minimum(map_k, n_relevant)
    ranks = np.arange(1, depth + 1)
    precision_sum = (relevant[:, :map_k] * hits[:, :map_k] / ranks[:map_k]).sum(axis=1)
    return {
        "R@1": relevant[:, 0].astype(np.float64),
        "mP@5": np.where(window > 0, precision_at_window, 0.0),
        f"mAP@{map_k}": np.where(map_window > 0, precision_sum / np.maximum(map_window, 1), 0.0),
    }


def _check_domains(domains: Mapping[str, RetrievalDomain]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validate sizes and dimensions; return each domain's (query, index) label matrices."""
    if not domains:
        raise ValueError("no domain to evaluate")
    labels, dims = {}, {}
    for name, domain in domains.items():
        if name == "mean":
            raise ValueError(
                "a domain cannot be called 'mean': the name is taken by the average over domains"
            )
        if (domain.index_embeddings is None) != (domain.index_labels is None):
            raise ValueError(f"domain {name!r}: give both index embeddings and index labels, or neither")
        query = label_matrix(domain.query_labels, f"domain {name!r} query labels")
        index = (
            query
            if domain.query_is_index
            else label_matrix(domain.index_labels, f"domain {name!r} index labels")
        )
        n_query = len(domain.query_embeddings)
        n_index = n_query if domain.query_is_index else len(domain.index_embeddings)
        if n_query == 0:
            raise ValueError(f"domain {name!r} has no query")
        if len(query) != n_query or len(index) != n_index:
            raise ValueError(
                f"domain {name!r}: {n_query} query / {n_index} index embeddings but "
                f"{len(query)} query / {len(index)} index labels"
            )
        for part in ("query", "index"):
            array = (
                domain.query_embeddings
                if part == "query" or domain.query_is_index
                else domain.index_embeddings
            )
            dims[(name, part)] = array.shape[1] if array.ndim == 2 else None
        labels[name] = (query, index)
    expected = next(iter(dims.values()))
    for (name, part), dim in dims.items():
        if dim is None or dim != expected:
            raise ValueError(f"domain {name!r} {part} embeddings have dimension {dim}, expected {expected}")
    return labels


def _pad(matrices: Sequence[np.ndarray]) -> np.ndarray:
    width = max(matrix.shape[1] for matrix in matrices)
    return np.concatenate(
        [np.pad(m, ((0, 0), (0, width - m.shape[1])), constant_values=-1) for m in matrices]
    )


def _index_embeddings(domain: RetrievalDomain) -> np.ndarray | torch.Tensor:
    return domain.query_embeddings if domain.query_is_index else domain.index_embeddings


def _concat_unit(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
    """Normalised rows of all arrays in one tensor (normalising first lets ``knn_search`` skip its copy).

    Args:
        arrays: how to call each array in error messages -> the array.
    """
    return torch.cat([as_unit_float32(array, name) for name, array in arrays.items()])


@dataclass
class MergedSearch:
    """The merged protocol's k-NN: every domain's queries searched in the union of all domains' index sets.

    Rows follow the domains in order, then their queries; index positions likewise (domain ``d``'s items start
    at ``index_offsets[d]``).

    Args:
        names: the domain names, in order (domain id = position).
        neighbor_ids / scores: ``(n_queries, k)`` merged-index positions and cosine similarities, best first.
        query_labels / index_labels: padded label matrices of all queries / index items.
        query_domains / index_domains: domain ids of all queries / index items.
        query_offsets / index_offsets: first row of each domain among the queries / the index items.
    """

    names: list[str]
    neighbor_ids: np.ndarray
    scores: np.ndarray
    query_labels: np.ndarray
    index_labels: np.ndarray
    query_domains: np.ndarray
    index_domains: np.ndarray
    query_offsets: np.ndarray
    index_offsets: np.ndarray

    def relevant(self) -> np.ndarray:
        """``(n_queries, k)``: whether each neighbour is relevant (see ``relevant_neighbors``)."""
        return relevant_neighbors(
            self.neighbor_ids, self.query_labels, self.query_domains, self.index_labels, self.index_domains
        )


def merged_search(
    domains: Mapping[str, RetrievalDomain],
    k: int,
    backend: Backend = "auto",
    memory_budget_mb: float = 256.0,
    labels: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> MergedSearch:
    """Search every domain's queries in the merged index (a query is excluded from its own neighbours when
    its domain's query set is its index set).

    Args:
        domains: domain name -> ``RetrievalDomain``.
        k: neighbours per query.
        backend / memory_budget_mb: see ``knn_search``.
        labels: the label matrices of ``_check_domains`` when already computed.
    """
    labels = labels if labels is not None else _check_domains(domains)
    names = list(domains)
    index_sizes = [len(labels[name][1]) for name in names]
    query_sizes = [len(labels[name][0]) for name in names]
    index_offsets = np.concatenate([[0], np.cumsum(index_sizes)[:-1]]).astype(np.int64)
    excludes = []
    for offset, name in zip(index_offsets, names):
        n_query = len(labels[name][0])
        excludes.append(offset + np.arange(n_query) if domains[name].query_is_index else np.full(n_query, -1))
    scores, neighbors = knn_search(
        _concat_unit({f"domain {name!r} queries": domains[name].query_embeddings for name in names}),
        _concat_unit({f"domain {name!r} index": _index_embeddings(domains[name]) for name in names}),
        k,
        exclude=np.concatenate(excludes),
        backend=backend,
        memory_budget_mb=memory_budget_mb,
    )
    return MergedSearch(
        names=names,
        neighbor_ids=neighbors,
        scores=scores,
        query_labels=_pad([labels[name][0] for name in names]),
        index_labels=_pad([labels[name][1] for name in names]),
        query_domains=np.repeat(np.arange(len(names)), query_sizes),
        index_domains=np.repeat(np.arange(len(names)), index_sizes),
        query_offsets=np.concatenate([[0], np.cumsum(query_sizes)[:-1]]).astype(np.int64),
        index_offsets=index_offsets,
    )


def evaluate_retrieval(
    domains: Mapping[str, RetrievalDomain],
    protocols: Sequence[str] = PROTOCOLS,
    map_k: int = 5,
    backend: Backend = "auto",
    memory_budget_mb: float = 256.0,
) -> dict[str, float]:
    """Score retrieval for every domain under each protocol.

    Args:
        domains: domain name -> ``RetrievalDomain``; all embeddings share one dimension.
        protocols: any of ``"merged"`` and ``"separate"``.
        map_k: cut-off of the extra mAP@k metric.
        backend: k-NN backend (see ``knn_search``).
        memory_budget_mb: memory bound of the torch k-NN backend.

    Returns:
        ``{"<protocol>/<domain>/<metric>": value, "<protocol>/mean/<metric>": value}`` with metrics
        ``R@1``, ``mP@5`` and ``mAP@<map_k>``; a domain's value is the mean over its queries and ``mean`` is
        the unweighted mean over domains.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown or not protocols:
        raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {list(protocols)}")
    if map_k < 1:
        raise ValueError(f"map_k must be >= 1, got {map_k}")
    labels = _check_domains(domains)
    names = list(domains)
    depth = max(5, map_k)
    n_relevant = {name: _relevant_counts(*labels[name], domains[name].query_is_index) for name in names}
    per_query: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    if "merged" in protocols:
        merged = merged_search(domains, depth, backend, memory_budget_mb, labels)
        query_sizes = [len(labels[name][0]) for name in names]
        scores = query_metrics(
            merged.neighbor_ids,
            merged.query_labels,
            merged.query_domains,
            merged.index_labels,
            merged.index_domains,
            np.concatenate([n_relevant[name] for name in names]),
            map_k,
        )
        bounds = np.concatenate([[0], np.cumsum(query_sizes)])
        per_query["merged"] = {
            name: {metric: values[bounds[i] : bounds[i + 1]] for metric, values in scores.items()}
            for i, name in enumerate(names)
        }
    if "separate" in protocols:
        per_query["separate"] = {}
        for name in names:
            domain = domains[name]
            query, index = labels[name]
            n_query = len(query)
            _, neighbors = knn_search(
                domain.query_embeddings,
                _index_embeddings(domain),
                depth,
                exclude=np.arange(n_query) if domain.query_is_index else None,
                backend=backend,
                memory_budget_mb=memory_budget_mb,
            )
            per_query["separate"][name] = query_metrics(
                neighbors,
                query,
                np.zeros(n_query, np.int64),
                index,
                np.zeros(len(index), np.int64),
                n_relevant[name],
                map_k,
            )
    results: dict[str, float] = {}
    for protocol in protocols:
        metric_names = list(next(iter(per_query[protocol].values())))
        for metric in metric_names:
            domain_means = {name: float(per_query[protocol][name][metric].mean()) for name in names}
            for name, value in domain_means.items():
                results[f"{protocol}/{name}/{metric}"] = value
            results[f"{protocol}/mean/{metric}"] = float(np.mean(list(domain_means.values())))
    return results
