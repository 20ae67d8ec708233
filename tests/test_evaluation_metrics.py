"""UnED retrieval metrics against values computed by hand (SPEC.md section 2)."""

import numpy as np
import pytest

from hf_distill.evaluation import RetrievalDomain, evaluate_retrieval, label_matrix, query_metrics
from hf_distill.evaluation.knn import faiss_available

BACKENDS = [
    "torch",
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="no faiss")),
]


def unit(*degrees: float) -> np.ndarray:
    """Points on the unit circle: the cosine similarity of two of them is cos(angle difference)."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


# Domain "a": the query set is the index set (test/test), so every query is removed from its neighbours.
#   a0 0° label 0 | a1 0° label 0 (an exact duplicate of a0) | a2 30° label 0 | a3 50° label 1 | a4 180° label 2
# Domain "b": queries bq0 38° label 5, bq1 75° labels {5, 6}, bq2 200° label 9 (absent from the index);
#   index bi0 35° label 5, bi1 70° label 6, bi2 170° label 5.
# Merged index order: a0..a4 (ids 0-4), then bi0..bi2 (ids 5-7).
DOMAIN_A = RetrievalDomain(unit(0, 0, 30, 50, 180), [0, 0, 0, 1, 2])
DOMAIN_B = RetrievalDomain(unit(38, 75, 200), [5, [5, 6], 9], unit(35, 70, 170), [5, 6, 5])

# Per query, neighbours ordered by angle difference, then relevance, n_q, R@1 / mP@5 / AP@5.
# a0 (n_q = 2: a1, a2). merged [a1 0°, a2 30°, bi0 35°, a3 50°, bi1 70°] -> rel 1 1 0 0 0: 1 / 1 / 1.
#    The tie a0-a1 at 0° is resolved by identity: a0 itself goes, its duplicate a1 stays.
#    separate [a1, a2, a3, a4] -> rel 1 1 0 0: 1 / 1 / 1.
# a1 (n_q = 2): the same with a0 as first neighbour: 1 / 1 / 1 in both protocols.
# a2 (n_q = 2: a0, a1). merged [bi0 Δ5, a3 Δ20, a0 Δ30, a1 Δ30, bi1 Δ40] -> rel 0 0 1 1 0:
#    R@1 0; mP@5 looks at the first min(5, 2) = 2 only -> 0; AP = (1/3 + 2/4) / 2 = 5/12.
#    separate [a3, a0, a1, a4] -> rel 0 1 1 0: R@1 0; mP@5 = 1/2; AP = (1/2 + 2/3) / 2 = 7/12.
# a3 (label 1) and a4 (label 2) are their class's only image: n_q = 0 once they are removed -> 0 / 0 / 0.
# Domain a, merged: R@1 2/5, mP@5 2/5, mAP@5 (1 + 1 + 5/12) / 5 = 29/60.
#           separate: R@1 2/5, mP@5 (1 + 1 + 1/2) / 5 = 1/2, mAP@5 (1 + 1 + 7/12) / 5 = 31/60.
# bq0 (38°, n_q = 2: bi0, bi2). merged [bi0 Δ3, a2 Δ8, a3 Δ12, bi1 Δ32, a0 Δ38] -> rel 1 0 0 0 0:
#    R@1 1; mP@5 = 1/2 (first 2); AP = 1 / 2. The a-items are cross-domain misses.
#    separate [bi0, bi1, bi2] -> rel 1 0 1: R@1 1; mP@5 1/2; AP = (1 + 2/3) / 2 = 5/6.
# bq1 (75°, labels {5, 6}: n_q = 2 + 1 = 3). merged [bi1 Δ5, a3 Δ25, bi0 Δ40, a2 Δ45, a0 Δ75] -> rel 1 0 1 0 0:
#    R@1 1; mP@5 = 2/3 (first 3); AP = (1 + 2/3) / 3 = 5/9.
#    separate [bi1, bi0, bi2] -> rel 1 1 1: 1 / 1 / 1.
# bq2 (label 9, not in the index): n_q = 0 -> 0 / 0 / 0.
# Domain b, merged: R@1 2/3, mP@5 (1/2 + 2/3) / 3 = 7/18, mAP@5 (1/2 + 5/9) / 3 = 19/54.
#           separate: R@1 2/3, mP@5 (1/2 + 1) / 3 = 1/2, mAP@5 (5/6 + 1) / 3 = 11/18.
EXPECTED = {
    "merged/a/R@1": 2 / 5,
    "merged/a/mP@5": 2 / 5,
    "merged/a/mAP@5": 29 / 60,
    "merged/b/R@1": 2 / 3,
    "merged/b/mP@5": 7 / 18,
    "merged/b/mAP@5": 19 / 54,
    "separate/a/R@1": 2 / 5,
    "separate/a/mP@5": 1 / 2,
    "separate/a/mAP@5": 31 / 60,
    "separate/b/R@1": 2 / 3,
    "separate/b/mP@5": 1 / 2,
    "separate/b/mAP@5": 11 / 18,
}
# Means are unweighted over the two domains (a query-weighted R@1 would be 4/8 = 0.5, not 8/15).
for _protocol in ("merged", "separate"):
    for _metric in ("R@1", "mP@5", "mAP@5"):
        EXPECTED[f"{_protocol}/mean/{_metric}"] = (
            EXPECTED[f"{_protocol}/a/{_metric}"] + EXPECTED[f"{_protocol}/b/{_metric}"]
        ) / 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_merged_and_separate(backend):
    results = evaluate_retrieval({"a": DOMAIN_A, "b": DOMAIN_B}, backend=backend)
    assert set(results) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert results[key] == pytest.approx(value, abs=1e-12), key
    # Cross-domain neighbours make the protocols differ.
    assert results["merged/mean/mP@5"] < results["separate/mean/mP@5"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_merged_with_the_query_is_index_domain_at_a_nonzero_offset(backend):
    # Domain "b" first: the merged index is bi0..bi2 (ids 0-2), then a0..a4 (ids 3-7), so each query of "a" must
    # be removed as id 3 + i, not i. The neighbour lists above do not depend on the order (no tie across
    # domains changes relevance), so the hand-computed values are the same.
    results = evaluate_retrieval({"b": DOMAIN_B, "a": DOMAIN_A}, protocols=["merged"], backend=backend)
    expected = {key: value for key, value in EXPECTED.items() if key.startswith("merged/")}
    assert set(results) == set(expected)
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-12), key


def test_protocol_subset_and_small_memory_budget():
    results = evaluate_retrieval(
        {"a": DOMAIN_A, "b": DOMAIN_B}, protocols=["separate"], backend="torch", memory_budget_mb=1e-5
    )
    assert set(results) == {key for key in EXPECTED if key.startswith("separate/")}
    assert results["separate/mean/mAP@5"] == pytest.approx(EXPECTED["separate/mean/mAP@5"])


def test_query_metrics_formulas():
    # Index of one domain (0) plus item 12 from domain 1. Label counts in domain 0: 0:2, 1:3, 2:1, 3:6.
    index_labels = label_matrix([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 3, 1])
    index_domains = np.array([0] * 12 + [1])
    queries = [
        # (labels, neighbours, n_q, expected R@1, mP@5, AP@5)
        # positives at ranks 3 and 4 with n_q = 2: mP@5 = 0 (SPEC's example); AP = (1/3 + 2/4) / 2
        (0, [5, 6, 0, 1, 7], 2, 0.0, 0.0, (1 / 3 + 2 / 4) / 2),
        # rel 1 1 0 1 1, n_q = 6: mP@5 = 4/5; AP = (1 + 1 + 3/4 + 4/5) / 5
        (3, [6, 7, 0, 8, 9], 6, 1.0, 4 / 5, (1 + 1 + 3 / 4 + 4 / 5) / 5),
        # labels {1, 2}: n_q = 3 + 1; rel 1 0 1 1 0: mP@5 = 3/4 (first 4); AP = (1 + 2/3 + 3/4) / 4
        ([1, 2], [5, 0, 2, 3, 6], 4, 1.0, 3 / 4, (1 + 2 / 3 + 3 / 4) / 4),
        # label absent from the index: n_q = 0 scores 0 even with neighbours
        (7, [0, 1, 2, 3, 4], 0, 0.0, 0.0, 0.0),
        # single-image class found first: 1 / 1 / 1; found second: R@1 0, mP@5 0, AP = (1/2) / 1
        (2, [5, 0, 1, 2, 3], 1, 1.0, 1.0, 1.0),
        (2, [0, 5, 1, 2, 3], 1, 0.0, 0.0, 1 / 2),
        # item 12 has label 1 but another domain: not relevant. rel 0 1 1 1 0, n_q = 3: mP@5 = 2/3
        (1, [12, 2, 3, 4, 0], 3, 0.0, 2 / 3, (1 / 2 + 2 / 3 + 3 / 4) / 3),
        # fewer neighbours than 5 (-1 = none): rel 1 0, n_q = 2 -> mP@5 = 1/2, AP = 1/2
        (0, [0, 6, -1, -1, -1], 2, 1.0, 1 / 2, 1 / 2),
    ]
    scores = query_metrics(
        np.array([q[1] for q in queries]),
        label_matrix([q[0] for q in queries]),
        np.zeros(len(queries), dtype=np.int64),
        index_labels,
        index_domains,
        np.array([q[2] for q in queries]),
    )
    for metric, column in (("R@1", 3), ("mP@5", 4), ("mAP@5", 5)):
        np.testing.assert_allclose(scores[metric], [q[column] for q in queries], atol=1e-12, err_msg=metric)


def test_multi_label_index_items_and_padded_arrays():
    # Labels given as padded arrays. Queries: q0 at 0° with labels {1, 2}, q1 at 10° with label {3}.
    # Index: x0 at 0° labels {1}, x1 at 10° labels {2, 3}, x2 at 5° label {4}.
    # q0 at 0°, labels {1, 2}: n_q = count(1) + count(2) = 1 + 1 = 2; neighbours x0, x2, x1 -> rel 1 0 1:
    #   R@1 1, mP@5 = 1/2, AP = (1 + 2/3) / 2 = 5/6.
    # q1 at 10°, label {3}: n_q = 1; neighbours x1, x2, x0 -> rel 1 0 0: 1 / 1 / 1.
    domain = RetrievalDomain(
        unit(0, 10),
        np.array([[1, 2], [3, -1]]),
        unit(0, 10, 5),
        np.array([[1, -1], [2, 3], [4, -1]]),
    )
    results = evaluate_retrieval({"x": domain}, protocols=["separate"], backend="torch")
    assert results["separate/x/R@1"] == pytest.approx(1.0)
    assert results["separate/x/mP@5"] == pytest.approx((1 / 2 + 1) / 2)
    assert results["separate/x/mAP@5"] == pytest.approx((5 / 6 + 1) / 2)


def test_label_matrix_forms():
    np.testing.assert_array_equal(label_matrix([3, [2, 1, 2]]), [[3, -1], [1, 2]])
    np.testing.assert_array_equal(label_matrix(np.array([4, 0])), [[4], [0]])
    with pytest.raises(ValueError, match="item 1 has a negative label"):
        label_matrix(np.array([1, -3]), "cars query labels")
    with pytest.raises(ValueError, match="cars query labels: item 0 has no label"):
        label_matrix([[]], "cars query labels")
    with pytest.raises(ValueError, match="labels must be ints"):
        label_matrix([1.5], "x")


def test_bad_inputs_name_the_domain():
    with pytest.raises(
        ValueError, match="domain 'b'.*3 query / 3 index embeddings but 2 query / 3 index labels"
    ):
        evaluate_retrieval({"b": RetrievalDomain(unit(1, 2, 3), [0, 1], unit(1, 2, 3), [0, 1, 2])})
    with pytest.raises(ValueError, match="domain 'b' query embeddings have dimension 3, expected 2"):
        evaluate_retrieval({"a": DOMAIN_A, "b": RetrievalDomain(np.ones((2, 3), np.float32), [0, 1])})
    with pytest.raises(ValueError, match="cannot be called 'mean'"):
        evaluate_retrieval({"mean": DOMAIN_A})
    with pytest.raises(ValueError, match="domain 'a': give both index embeddings and index labels"):
        evaluate_retrieval({"a": RetrievalDomain(unit(0), [0], unit(0), None)})
    with pytest.raises(ValueError, match="domain 'b' index contains NaN or infinite values"):
        evaluate_retrieval({"a": DOMAIN_A, "b": RetrievalDomain(unit(0), [0], np.full((1, 2), np.inf), [0])})
    with pytest.raises(ValueError, match="protocols"):
        evaluate_retrieval({"a": DOMAIN_A}, protocols=["oracle"])
