"""Exact retrieval mAP: jaxcomp.distill.retrieval_metrics vs scikit-learn brute force, same data.

Data: real Fashion-MNIST pixels, projected to 64 dimensions by a fixed Gaussian matrix (the size
of the InDistill embeddings); database = the training images, queries = the test images. The
scikit-learn side is the reference's recipe: ``NearestNeighbors(algorithm="brute")`` ranking the
whole database for a batch of 128 queries at a time, then ``average_precision_score`` per query.
Both sides compute the same exact mAP (checked); the ratio of wall times is what to compare.
Side by side on the full 60k database and ``--ref-queries`` queries (scikit-learn's per-query AP
takes ~0.1 s, so all 10k queries would take a quarter of an hour per repeat), then ours alone on
the full 60k x 10k; medians of ``--repeats`` runs each.

    python benchmarks/retrieval.py [--database 60000] [--queries 10000] [--ref-queries 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.neighbors import NearestNeighbors

from jaxcomp.data import load_fashion_mnist
from jaxcomp.distill.retrieval import retrieval_metrics


def sklearn_map(db, dbl, q, ql, metric, batch=128):
    nn = NearestNeighbors(n_neighbors=len(db), algorithm="brute", metric=metric).fit(db)
    aps = []
    for s in range(0, len(q), batch):
        dist, idx = nn.kneighbors(q[s : s + batch])
        for i in range(len(dist)):
            scores = np.empty(len(db))
            scores[idx[i]] = -dist[i]
            aps.append(average_precision_score(dbl == ql[s + i], scores))
    return float(np.mean(aps))


def _median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--database", type=int, default=60000)
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--ref-queries", type=int, default=500, help="queries of the side-by-side run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    ap.add_argument("--note", default="quiet machine: nothing else running")
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "retrieval.json")
    )
    args = ap.parse_args()

    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    proj = np.random.default_rng(0).normal(size=(784, 64)).astype(np.float32) / 28.0
    db = (x[: args.database].reshape(-1, 784).astype(np.float32) / 255) @ proj
    q = (xt[: args.queries].reshape(-1, 784).astype(np.float32) / 255) @ proj
    dbl, ql = y[: args.database], yt[: args.queries]
    r = args.ref_queries
    load_before = os.getloadavg()

    retrieval_metrics(db[:2000], dbl[:2000], q[:256], ql[:256], metric=args.metric)  # compile
    # Side by side on the same 60k x r problem, then ours alone on the full 60k x 10k.
    t_ours, ours_times, ours = _median_time(
        lambda: retrieval_metrics(db, dbl, q[:r], ql[:r], metric=args.metric), args.repeats
    )
    t_ref, ref_times, ref = _median_time(
        lambda: sklearn_map(
            db.astype(np.float64), dbl, q[:r].astype(np.float64), ql[:r], args.metric
        ),
        args.repeats,
    )
    t_full, full_times, full = _median_time(
        lambda: retrieval_metrics(db, dbl, q, ql, metric=args.metric), args.repeats
    )
    result = {
        "database": len(db),
        "dim": 64,
        "metric": args.metric,
        "side_by_side_queries": r,
        "map_jaxcomp": ours["map"],
        "map_sklearn": ref,
        "abs_diff": abs(ours["map"] - ref),
        "jaxcomp_s_median": t_ours,
        "sklearn_s_median": t_ref,
        "speedup_sklearn_over_jaxcomp": t_ref / t_ours,
        "jaxcomp_s_all": ours_times,
        "sklearn_s_all": ref_times,
        "full_queries": len(q),
        "full_map_jaxcomp": full["map"],
        "full_jaxcomp_s_median": t_full,
        "full_jaxcomp_s_all": full_times,
        "sklearn_full_s_extrapolated": t_ref * len(q) / r,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"backend {jax.default_backend()}",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": args.note,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
