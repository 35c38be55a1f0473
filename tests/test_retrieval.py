"""Exact retrieval metrics (jaxcomp.distill.retrieval) against scikit-learn and a numpy
transcription of the InDistill reference's ``Database.get_metrics``."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.neighbors import NearestNeighbors

from jaxcomp.distill.retrieval import closest_recall_counts, retrieval_metrics


def _data(n=600, m=40, d=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    dbl = rng.integers(0, classes, n)
    ql = rng.integers(0, classes, m)
    db = rng.normal(size=(n, d)) + 0.4 * dbl[:, None]
    q = rng.normal(size=(m, d)) + 0.4 * ql[:, None]
    return db.astype(np.float32), dbl, q.astype(np.float32), ql


def _sklearn_ranking(db, q, metric):
    nn = NearestNeighbors(n_neighbors=len(db), algorithm="brute", metric=metric).fit(db)
    return nn.kneighbors(q)


def _reference_metrics(relevant, num_relevant):
    """The reference's get_metrics (utils/retrieval_evaluation.py), with its interpolation loop
    running over every rank (the reference's loop stops after the query-batch size)."""
    n = relevant.shape[1]
    precision = np.cumsum(relevant, axis=1) / np.arange(1, n + 1)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    recall = np.cumsum(relevant, axis=1) / num_relevant[:, None]
    levels = np.arange(0, 1.01, 0.1)
    at = np.zeros((len(relevant), len(levels)))
    for i, level in enumerate(levels):
        idx = np.argmin(np.abs(recall - level), axis=1)
        at[:, i] = precision[np.arange(len(relevant)), idx]
    return at.mean(axis=1)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_map_matches_sklearn_and_reference(metric):
    db, dbl, q, ql = _data()
    r = retrieval_metrics(db, dbl, q, ql, metric=metric, k=25, chunk_size=16, per_query=True)
    dist, idx = _sklearn_ranking(db.astype(np.float64), q.astype(np.float64), metric)
    relevant = (dbl[idx] == ql[:, None]).astype(np.int64)
    ap = []
    for i in range(len(q)):
        scores = np.empty(len(db))
        scores[idx[i]] = -dist[i]
        ap.append(average_precision_score(dbl == ql[i], scores))
    # float32 distances vs sklearn's float64: a near-tie may swap two neighbours (~1e-5 in AP).
    np.testing.assert_allclose(r["ap"], ap, atol=1e-4)
    np.testing.assert_allclose(r["map"], np.mean(ap), atol=1e-6)
    num_rel = np.bincount(dbl)[ql]
    np.testing.assert_allclose(r["ap_11pt"], _reference_metrics(relevant, num_rel), atol=1e-4)
    np.testing.assert_allclose(r["p_at_k"], relevant[:, :25].mean(axis=1), atol=1e-7)
    assert r["num_queries"] == 40 and r["num_database"] == 600
    assert len(r["precision_curve"]) == 21 and r["precision_curve"][0] >= r["precision_curve"][-1]


def test_exact_ties_follow_sklearn():
    rng = np.random.default_rng(1)
    dbl, ql = rng.integers(0, 3, 400), rng.integers(0, 3, 30)
    db = rng.integers(0, 3, (400, 2)).astype(np.float32)  # many equal distances
    q = rng.integers(0, 3, (30, 2)).astype(np.float32)
    r = retrieval_metrics(db, dbl, q, ql, per_query=True, k=50)
    d2 = ((q[:, None, :] - db[None]) ** 2).sum(-1)
    ap = [average_precision_score(dbl == ql[i], -d2[i]) for i in range(len(q))]
    np.testing.assert_allclose(r["ap"], ap, atol=1e-7)
    # P@k takes irrelevant items first among equal distances (pessimistic).
    pk = []
    for i in range(len(q)):
        order = np.lexsort(((dbl == ql[i]).astype(int), d2[i]))
        pk.append(np.mean(dbl[order[:50]] == ql[i]))
    np.testing.assert_allclose(r["p_at_k"], pk)


def test_device_and_host_ranking_agree():
    db, dbl, q, ql = _data(n=500, m=30, seed=3)
    a = retrieval_metrics(db, dbl, q, ql, sort="device", per_query=True, chunk_size=8)
    b = retrieval_metrics(db, dbl, q, ql, sort="host", per_query=True, chunk_size=7)
    for key in ("ap", "ap_11pt", "p_at_k"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_closest_recall_counts_matches_argmin():
    for r in (1, 2, 5, 10, 37, 6000):
        got = closest_recall_counts(np.array([r]))[0]
        js = np.arange(r + 1)
        for lv in range(21):
            if (lv * r) % 20 == 10:  # exact half-way: the smaller count (first argmin);
                assert got[lv] == (lv * r) // 20  # float argmin would depend on rounding noise
            else:
                assert got[lv] == int(np.argmin(np.abs(js / r - lv / 20)))


def test_bad_inputs_raise():
    db, dbl, q, ql = _data(n=50, m=5)
    with pytest.raises(ValueError, match="same d"):
        retrieval_metrics(db, dbl, q[:, :3], ql)
    with pytest.raises(ValueError, match="labels must match"):
        retrieval_metrics(db, dbl[:10], q, ql)
    with pytest.raises(ValueError, match=r"query labels \[9\]"):
        retrieval_metrics(db, dbl, q, np.full(5, 9), k=10)
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(db, dbl, q, ql, metric="manhattan")
    with pytest.raises(ValueError, match="k must be"):
        retrieval_metrics(db, dbl, q, ql, k=51)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full_like(db, np.nan), dbl, q, ql, k=10)


@pytest.mark.slow
def test_real_fashion_mnist_pixels_match_sklearn():
    """Raw-pixel retrieval on real Fashion-MNIST (2000 database, 100 queries) vs scikit-learn."""
    from jaxcomp.data import load_fashion_mnist

    try:
        x, y = load_fashion_mnist("train")
        xt, yt = load_fashion_mnist("test")
    except (FileNotFoundError, ValueError) as e:  # pragma: no cover - data not installed
        pytest.skip(f"Fashion-MNIST not available: {e}")
    db = x[:2000].reshape(2000, -1).astype(np.float32) / 255
    q = xt[:100].reshape(100, -1).astype(np.float32) / 255
    r = retrieval_metrics(db, y[:2000], q, yt[:100], metric="cosine", per_query=True)
    dist, idx = _sklearn_ranking(db.astype(np.float64), q.astype(np.float64), "cosine")
    ap = []
    for i in range(100):
        scores = np.empty(2000)
        scores[idx[i]] = -dist[i]
        ap.append(average_precision_score(y[:2000] == yt[i], scores))
    np.testing.assert_allclose(r["map"], np.mean(ap), atol=1e-4)
    assert 0.3 < r["map"] < 0.8  # raw pixels retrieve far above chance (0.1)
