"""Exact cosine k-NN: tie order, self-match removal by identity, backends and chunking agree."""

import numpy as np
import pytest
import torch

from hf_distill.evaluation import knn_search
from hf_distill.evaluation.knn import as_unit_float32, faiss_available

BACKENDS = [
    "torch",
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="no faiss")),
]


def basis_copies(copies: int) -> np.ndarray:
    """Item ``i`` is the basis vector ``e_(i // copies)`` of R^4: groups of exactly tied items."""
    return np.repeat(np.eye(4, dtype=np.float32), copies, axis=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budget_mb", [256.0, 1e-5])
def test_ties_are_ordered_by_index_position(backend, budget_mb):
    # 20 items: ids 0-4 equal e0, 5-9 equal e1, ... Query e1 ties with ids 5..9 at 1 and with all the
    # others at 0, so its 3 neighbours are 5, 6, 7 (lowest ids first) whatever the chunk size
    # (budget 1e-5 MB = one index row per chunk, so every tie crosses a chunk boundary).
    scores, ids = knn_search(
        np.eye(4, dtype=np.float32)[[1, 3]], basis_copies(5), k=3, backend=backend, memory_budget_mb=budget_mb
    )
    np.testing.assert_array_equal(ids, [[5, 6, 7], [15, 16, 17]])
    np.testing.assert_array_equal(scores, np.ones((2, 3)))
    # k = 7 goes past the tied group: after ids 5..9 (score 1) come ids 0, 1 (score 0, lowest ids).
    scores, ids = knn_search(
        np.eye(4, dtype=np.float32)[[1]], basis_copies(5), k=7, backend=backend, memory_budget_mb=budget_mb
    )
    np.testing.assert_array_equal(ids, [[5, 6, 7, 8, 9, 0, 1]])
    np.testing.assert_array_equal(scores, [[1, 1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_match_removed_by_identity_not_rank(backend):
    # Index = queries = three copies of e0 then one e1. Query 1 ties at similarity 1 with items 0, 1, 2;
    # the tie order puts item 0 first, so dropping rank 1 (UnED's released code) would remove item 0 and
    # keep the query itself. Removal by identity gives [0, 2, 3] for query 1.
    vectors = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    _, ids = knn_search(vectors, vectors, k=3, exclude=np.arange(4), backend=backend)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    # -1 excludes nothing: query 3's first neighbour is then itself.
    _, ids = knn_search(vectors, vectors, k=2, exclude=np.array([0, 1, 2, -1]), backend=backend)
    np.testing.assert_array_equal(ids[3], [3, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_items_than_k_are_padded(backend):
    vectors = np.array([[1, 0], [0.6, 0.8]], dtype=np.float32)
    scores, ids = knn_search(vectors, vectors, k=3, exclude=np.arange(2), backend=backend)
    np.testing.assert_array_equal(ids, [[1, -1, -1], [0, -1, -1]])
    np.testing.assert_allclose(scores[:, 0], [0.6, 0.6], rtol=1e-6)
    assert np.isneginf(scores[:, 1:]).all()


def test_cosine_ignores_vector_length():
    # Unnormalised inputs: cos((3,4), (1,0)) = 0.6, cos((3,4), (0,2)) = 0.8.
    scores, ids = knn_search(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]), k=2, backend="torch")
    np.testing.assert_array_equal(ids, [[1, 0]])
    np.testing.assert_allclose(scores, [[0.8, 0.6]], rtol=1e-6)


@pytest.mark.skipif(not faiss_available(), reason="no faiss")
def test_faiss_torch_and_chunked_search_agree_on_random_data():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(200, 16, generator=generator)
    index = torch.randn(3000, 16, generator=generator)
    exclude = torch.randint(-1, 3000, (200,), generator=generator)
    full_scores, full_ids = knn_search(queries, index, k=10, exclude=exclude, backend="torch")
    faiss_scores, faiss_ids = knn_search(queries, index, k=10, exclude=exclude, backend="faiss")
    # 0.05 MB: 12 index rows per chunk for a 1024-query block -> 250 chunks.
    chunk_scores, chunk_ids = knn_search(
        queries, index, k=10, exclude=exclude, backend="torch", memory_budget_mb=0.05
    )
    np.testing.assert_array_equal(full_ids, faiss_ids)
    np.testing.assert_array_equal(full_ids, chunk_ids)
    np.testing.assert_allclose(full_scores, faiss_scores, atol=1e-5)
    np.testing.assert_allclose(full_scores, chunk_scores, atol=1e-5)
    # Brute force reference: argsort of the full similarity matrix with the excluded item masked out.
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(index, dim=1).T
    rows = (exclude >= 0).nonzero().flatten()
    similarity[rows, exclude[rows]] = -torch.inf
    np.testing.assert_array_equal(full_ids, similarity.argsort(dim=1, descending=True, stable=True)[:, :10])
    assert not (full_ids == exclude.numpy()[:, None]).any()


def test_unit_rows_are_not_copied():
    unit_rows = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    assert as_unit_float32(unit_rows).data_ptr() == unit_rows.data_ptr()
    other = torch.randn(50, 8)
    normalised = as_unit_float32(other)
    assert normalised.data_ptr() != other.data_ptr()
    torch.testing.assert_close(normalised.norm(dim=1), torch.ones(50))
    # A zero row stays zero rather than becoming NaN.
    assert as_unit_float32(torch.zeros(1, 3)).abs().sum() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="queries contains NaN"):
        knn_search(np.array([[np.nan, 1.0]]), np.eye(2), k=1)
    with pytest.raises(ValueError, match="queries have dimension 3 but the index has 2"):
        knn_search(np.ones((1, 3)), np.eye(2), k=1)
    with pytest.raises(ValueError, match="backend must be"):
        knn_search(np.eye(2), np.eye(2), k=1, backend="annoy")
    with pytest.raises(ValueError, match="exclude has 1 entries for 2 queries"):
        knn_search(np.eye(2), np.eye(2), k=1, exclude=np.array([0]))
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_search(np.eye(2), np.eye(2), k=0)
