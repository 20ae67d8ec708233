"""Exact k-NN search, UnED retrieval metrics and evaluators (SPEC.md section 2)."""

from hf_distill.evaluation.evaluator import (
    KNNClassificationEvaluator,
    RetrievalEvaluator,
    embed_dataset,
    knn_classify,
)
from hf_distill.evaluation.knn import faiss_available, knn_search
from hf_distill.evaluation.metrics import (
    PROTOCOLS,
    MergedSearch,
    RetrievalDomain,
    evaluate_retrieval,
    label_matrix,
    merged_search,
    query_metrics,
    relevant_neighbors,
)

__all__ = [
    "PROTOCOLS",
    "KNNClassificationEvaluator",
    "MergedSearch",
    "RetrievalDomain",
    "RetrievalEvaluator",
    "embed_dataset",
    "evaluate_retrieval",
    "faiss_available",
    "knn_classify",
    "knn_search",
    "label_matrix",
    "merged_search",
    "query_metrics",
    "relevant_neighbors",
]
