"""Exact retrieval evaluation (InDistill Sec. 4.1; the reference's ``utils/retrieval_evaluation.py``).

Every query is ranked against the *whole* database by Euclidean or cosine distance (brute force,
chunked over queries so that e.g. 10k x 60k distances never live in memory at once). A database
item is relevant when it has the query's label. Per query we report

* **average precision** -- ``AP = (1/R) sum_{relevant i} P(d_i)``, with ``P(t)`` the precision of the
  set ``{d <= t}`` and ``R`` the number of relevant items. Exact distance ties are handled like
  ``sklearn.metrics.average_precision_score`` (a tie group counts as one threshold), so the result
  does not depend on how a sort orders equal distances;
* the reference's **11-point interpolated AP** -- the interpolated precision
  ``max_{r' >= r} p(r')`` at the ranks whose recall is closest to 0, 0.1, ..., 1.0, averaged; plus
  the 21-point curve (0, 0.05, ..., 1.0) for precision-recall plots;
* **precision@k** -- the fraction of relevant items among the ``k`` nearest (equal distances:
  irrelevant items first, i.e. the pessimistic order).

Ranking encodes each distance and its relevance bit in one ``uint32`` sort key: a non-negative
float32's bit pattern is monotone in its value and fits in 31 bits, so ``bits << 1 | relevant`` sorts
by distance exactly, then irrelevant before relevant. One single-operand sort per query replaces an
argsort plus gather. Distances and keys are computed on device. XLA:CPU's sort and cumulative scans are slow (seconds
per 256 x 60k chunk), so on the CPU backend the sort and the scans over the ranked list run in numpy
(``sort="host"``, the same arithmetic, tested equal); on accelerators everything stays on device.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

#: The 21 recall levels of the precision-recall curve (0, 0.05, ..., 1); every other one gives the
#: reference's 11-point interpolated AP.
RECALL_LEVELS = np.arange(21) / 20.0


def closest_recall_counts(num_relevant: np.ndarray, num_levels: int = 21) -> np.ndarray:
    """``j*(R, l)``: the number of retrieved relevant items whose recall ``j / R`` is closest to the
    level ``l / (num_levels - 1)`` (ties to the smaller ``j``, i.e. the reference's first
    ``argmin``), in exact integer arithmetic. Shape ``(len(num_relevant), num_levels)``."""
    r = np.asarray(num_relevant, np.int64)[:, None]
    m = num_levels - 1
    num = 2 * np.arange(num_levels, dtype=np.int64)[None, :] * r - m  # j* = ceil((2lR - m) / 2m)
    j = -((-num) // (2 * m))
    return np.clip(j, 0, r).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("metric",))
def _chunk_keys(q, q_labels, db, db_labels, db_sq, *, metric):
    """Sort keys ``bits(distance) << 1 | relevant`` of one chunk of queries, shape ``(c, n)``."""
    if metric == "cosine":
        qn = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        dist = 1.0 - qn @ db.T  # db is normalised by the caller
    else:
        q_sq = jnp.sum(q * q, axis=1, keepdims=True)
        dist = q_sq + db_sq[None, :] - 2.0 * (q @ db.T)
    dist = jnp.where(dist > 0, dist, 0.0)  # also maps -0.0 to +0.0 so the bit order holds
    rel = (db_labels[None, :] == q_labels[:, None]).astype(jnp.uint32)
    bits = jax.lax.bitcast_convert_type(dist.astype(jnp.float32), jnp.uint32)
    return (bits << 1) | rel


@functools.partial(jax.jit, static_argnames=("k",))
def _ranked_stats_device(keys, jstar, num_rel, *, k):
    """AP, interpolated precision at the recall levels and P@k from unsorted keys (on device)."""
    keys = jax.lax.sort(keys, dimension=1, is_stable=False)
    rel = (keys & 1).astype(jnp.int32)
    dbits = keys >> 1
    n = keys.shape[1]
    pos = jnp.arange(n, dtype=jnp.int32)[None, :]
    cumrel = jnp.cumsum(rel, axis=1, dtype=jnp.int32)
    # Tie groups: precision is taken at the end of each group of equal distances.
    is_end = jnp.concatenate(
        [dbits[:, 1:] != dbits[:, :-1], jnp.ones((keys.shape[0], 1), bool)], axis=1
    )
    big = jnp.int32(np.iinfo(np.int32).max)
    end_pos = jax.lax.cummin(jnp.where(is_end, pos, big), axis=1, reverse=True)
    end_rel = jax.lax.cummin(jnp.where(is_end, cumrel, big), axis=1, reverse=True)
    prec_at_group = end_rel.astype(jnp.float32) / (end_pos + 1).astype(jnp.float32)
    ap = jnp.sum(rel * prec_at_group, axis=1) / num_rel.astype(jnp.float32)
    # Interpolated precision max_{i' >= i} p_i' at the first rank with cumrel >= j* (the rank
    # whose recall is closest to the level; rank 0 when j* = 0).
    prec = cumrel.astype(jnp.float32) / (pos + 1).astype(jnp.float32)
    interp = jax.lax.cummax(prec, axis=1, reverse=True)
    idx = jax.vmap(lambda c, j: jnp.searchsorted(c, j, side="left"))(cumrel, jstar)
    at_levels = jnp.take_along_axis(interp, jnp.minimum(idx, n - 1), axis=1)
    p_at_k = jnp.sum(rel[:, :k], axis=1).astype(jnp.float32) / k
    return ap, at_levels, p_at_k


def _ranked_stats_host(keys, jstar, num_rel, *, k):
    """The same statistics as ``_ranked_stats_device`` in numpy, touching only the ``R`` relevant
    ranks of each query after the sort (a full-length scan is the slow part on CPU)."""
    keys = np.sort(np.asarray(keys), axis=1)
    c = keys.shape[0]
    ap = np.empty(c)
    at_levels = np.empty((c, jstar.shape[1]))
    p_at_k = np.empty(c)
    for i in range(c):
        row = keys[i]
        pos = np.flatnonzero(row & 1)  # ranks of the relevant items, ascending
        j = np.arange(1, pos.size + 1, dtype=np.float64)
        # Exact ties: precision at the end of the group of equal distances (sklearn's AP).
        dbits = row >> 1
        end = np.searchsorted(dbits, dbits[pos], side="right")  # 1 + last rank of the group
        rel_to_end = np.searchsorted(pos, end - 1, side="right")  # relevant ranks <= group end
        ap[i] = np.sum(rel_to_end / end) / num_rel[i]
        # Interpolated precision max_{j' >= j} j' / (pos_j' + 1) at the j*-th relevant item
        # (between relevant ranks precision only falls, so relevant ranks hold the maxima).
        interp = np.maximum.accumulate((j / (pos + 1.0))[::-1])[::-1]
        at_levels[i] = interp[np.maximum(jstar[i], 1) - 1]
        p_at_k[i] = np.count_nonzero(pos < k) / k
    return ap, at_levels, p_at_k


def retrieval_metrics(
    database: np.ndarray | jax.Array,
    database_labels: np.ndarray | jax.Array,
    queries: np.ndarray | jax.Array,
    query_labels: np.ndarray | jax.Array,
    *,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    k: int = 100,
    chunk_size: int = 256,
    sort: Literal["auto", "device", "host"] = "auto",
    per_query: bool = False,
) -> dict:
    """Exact retrieval metrics of ``queries`` against ``database`` (InDistill Sec. 4.1).

    Returns ``{"map", "map_11pt", "precision_at_k", "k", "metric", "num_queries",
    "num_database", "recall_levels", "precision_curve"}`` (``map`` = mean exact AP, see the module
    docstring); with ``per_query`` also ``"ap"``, ``"ap_11pt"`` and ``"p_at_k"`` arrays.
    """
    db = np.asarray(database, np.float32)
    qs = np.asarray(queries, np.float32)
    dbl = np.asarray(database_labels).astype(np.int32).reshape(-1)
    ql = np.asarray(query_labels).astype(np.int32).reshape(-1)
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if sort not in ("auto", "device", "host"):
        raise ValueError(f"sort must be 'auto', 'device' or 'host', got {sort!r}")
    if db.ndim != 2 or qs.ndim != 2 or db.shape[1] != qs.shape[1]:
        raise ValueError(
            "database and queries must be (n, d) arrays of the same d, got shapes "
            f"{db.shape} and {qs.shape}"
        )
    if len(dbl) != len(db) or len(ql) != len(qs):
        raise ValueError(
            f"labels must match the features: database {len(db)} vs {len(dbl)} labels, "
            f"queries {len(qs)} vs {len(ql)} labels"
        )
    if not 1 <= k <= len(db):
        raise ValueError(f"k must be in [1, {len(db)}], got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not (np.isfinite(db).all() and np.isfinite(qs).all()):
        raise ValueError("features contain NaN or inf")
    if len(db) >= 2**31:
        raise ValueError(f"database too large for int32 ranks: {len(db)}")
    if dbl.min() < 0 or ql.min() < 0:
        raise ValueError("labels must be non-negative integers")
    counts = np.bincount(dbl, minlength=int(ql.max()) + 1)
    num_rel = counts[ql]
    if (num_rel == 0).any():
        bad = sorted(set(ql[num_rel == 0].tolist()))
        raise ValueError(f"query labels {bad} have no relevant item in the database")
    jstar = closest_recall_counts(num_rel, len(RECALL_LEVELS))
    host_sort = sort == "host" or (sort == "auto" and jax.default_backend() == "cpu")

    if metric == "cosine":
        db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    db_j = jnp.asarray(db)
    dbl_j = jnp.asarray(dbl)
    db_sq = jnp.sum(db_j * db_j, axis=1)
    m = len(qs)
    c = min(chunk_size, m)
    pad = (-m) % c
    if pad:  # pad the last chunk with copies of the first query, dropped below
        qs = np.concatenate([qs, np.repeat(qs[:1], pad, 0)])
        ql = np.concatenate([ql, np.repeat(ql[:1], pad)])
        num_rel = np.concatenate([num_rel, np.repeat(num_rel[:1], pad)])
        jstar = np.concatenate([jstar, np.repeat(jstar[:1], pad, 0)])
    aps, levels, pks = [], [], []
    for s in range(0, len(qs), c):
        keys = _chunk_keys(
            jnp.asarray(qs[s : s + c]),
            jnp.asarray(ql[s : s + c]),
            db_j,
            dbl_j,
            db_sq,
            metric=metric,
        )
        if host_sort:
            ap, lev, pk = _ranked_stats_host(keys, jstar[s : s + c], num_rel[s : s + c], k=int(k))
        else:
            ap, lev, pk = _ranked_stats_device(
                keys, jnp.asarray(jstar[s : s + c]), jnp.asarray(num_rel[s : s + c]), k=int(k)
            )
        aps.append(np.asarray(ap))
        levels.append(np.asarray(lev))
        pks.append(np.asarray(pk))
    ap = np.concatenate(aps)[:m].astype(np.float64)
    lev = np.concatenate(levels)[:m].astype(np.float64)
    pk = np.concatenate(pks)[:m].astype(np.float64)
    ap11 = lev[:, ::2].mean(axis=1)
    out = {
        "metric": metric,
        "map": float(ap.mean()),
        "map_11pt": float(ap11.mean()),
        "precision_at_k": float(pk.mean()),
        "k": int(k),
        "num_queries": int(m),
        "num_database": int(len(db)),
        "recall_levels": RECALL_LEVELS.tolist(),
        "precision_curve": lev.mean(axis=0).tolist(),
    }
    if per_query:
        out.update(ap=ap, ap_11pt=ap11, p_at_k=pk)
    return out
