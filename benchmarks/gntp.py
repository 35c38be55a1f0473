"""GNTP (k = 10) vs exhaustive NTP: seconds per training batch and peak memory vs KB size.

Synthetic KBs of 10^3, 10^4, 10^5 facts, the same templates and batch for both provers, one run.
Each (prover, size) runs in its own subprocess so its peak RSS is its own; the XLA buffer
estimate (``compiled.memory_analysis()``) is recorded too, and is how we decide to skip an
exhaustive run that would not fit (its estimate is still reported).

  python -m benchmarks.gntp            # writes benchmarks/results/gntp.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = (1_000, 10_000, 100_000)
TEMPLATES = "p(X, Y) :- q(Y, X) <1>\np(X, Y) :- q(X, Z), r(Z, Y) <1>\n"
DIM = 32
BATCH = 2  # goals per batch: 1 positive + 1 corruption (exhaustive NTP needs B * N^2 floats)
MAX_BYTES = 4e9  # skip running when the XLA buffer estimate exceeds this (shared machine)


def worker(n_facts: int, method: str, repeats: int) -> dict:
    import jax
    import numpy as np
    import optax

    from jaxcomp.prover.gntp import ProverConfig, corrupt_triples, make_train_step
    from jaxcomp.prover.kb import KnowledgeBase, init_params
    from jaxcomp.prover.templates import parse_templates

    rng = np.random.default_rng(0)
    n_const, n_pred = max(n_facts // 5, 10), 20
    trip = set()
    while len(trip) < n_facts:
        p, s, o = rng.integers(n_pred), rng.integers(n_const), rng.integers(n_const)
        trip.add((f"c{s}", f"r{p}", f"c{o}"))
    kb = KnowledgeBase.from_triples(sorted(trip))
    tpl = parse_templates(TEMPLATES)
    cfg = ProverConfig(depth=1, k_facts=10 if method == "gntp" else None, k_rules=None)
    params = init_params(jax.random.key(0), kb, tpl, DIM)
    tx = optax.adam(1e-3)
    opt = tx.init(params)
    step = make_train_step(tpl, cfg, tx)
    arr = kb.arrays()
    known = set(map(tuple, kb.facts.tolist()))

    def batch(i):
        ix = rng.integers(n_facts, size=BATCH // 2)
        pos = kb.facts[ix]
        neg = corrupt_triples(rng, pos, len(kb.constants), known, 1)[: BATCH - len(pos)]
        goals = np.concatenate([pos, neg])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.float32)
        mask = np.r_[ix, -np.ones(len(neg))].astype(np.int32)
        return goals, y, mask

    g, y, m = batch(0)
    compiled = step.lower(params, opt, arr, g, y, m).compile()
    ma = compiled.memory_analysis()
    est = int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)
    out = {"n_facts": n_facts, "method": method, "xla_buffer_bytes": est}
    if est > MAX_BYTES:
        out["skipped"] = f"XLA buffer estimate {est / 1e9:.1f} GB > {MAX_BYTES / 1e9:.0f} GB"
        return out
    params, opt, loss = step(params, opt, arr, g, y, m)  # warm-up
    jax.block_until_ready(loss)
    times = []
    for i in range(repeats):
        g, y, m = batch(i)
        t0 = time.perf_counter()
        params, opt, loss = step(params, opt, arr, g, y, m)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    out["sec_per_batch"] = float(np.median(times))
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=2, metavar=("N_FACTS", "METHOD"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/gntp.json")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(int(a.worker[0]), a.worker[1], a.repeats)))
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    rows = []
    load_before = os.getloadavg()
    for n in SIZES:
        for method in ("gntp", "ntp"):
            cmd = [sys.executable, "-m", "benchmarks.gntp", "--worker", str(n), method]
            cmd += ["--repeats", str(a.repeats)]
            t0 = time.time()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                row = {"n_facts": n, "method": method, "error": res.stderr[-2000:]}
            else:
                row = json.loads(res.stdout.strip().splitlines()[-1])
            row["wall_seconds_incl_compile"] = time.time() - t0
            print(row, flush=True)
            rows.append(row)
    ratios = {}
    for n in SIZES:
        r = {x["method"]: x for x in rows if x["n_facts"] == n}
        if "sec_per_batch" in r.get("ntp", {}) and "sec_per_batch" in r.get("gntp", {}):
            ratios[str(n)] = {
                "speedup": r["ntp"]["sec_per_batch"] / r["gntp"]["sec_per_batch"],
                "memory_ratio_xla": r["ntp"]["xla_buffer_bytes"] / r["gntp"]["xla_buffer_bytes"],
                "memory_ratio_rss": r["ntp"]["peak_rss_bytes"] / r["gntp"]["peak_rss_bytes"],
            }
    result = {
        "benchmark": "GNTP (k_facts=10, all rules) vs exhaustive NTP, one training step "
        "(forward + backward + Adam)",
        "setup": {
            "templates": TEMPLATES.strip().splitlines(),
            "dim": DIM,
            "batch_goals": BATCH,
            "depth": 1,
            "unification": "classic",
            "predicates": 20,
            "constants": "n_facts / 5",
            "repeats": a.repeats,
            "statistic": "median seconds per batch after one warm-up step",
            "memory": "peak_rss_bytes = child-process max RSS (includes the JAX runtime, "
            "~constant); xla_buffer_bytes = compiled.memory_analysis() temp + args + outputs",
            "skip_rule": f"not run when xla_buffer_bytes > {MAX_BYTES:.0e}",
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "shared": "yes: a 2-core machine shared with 5 other developers running jobs; "
            f"load average before the run {load_before}, after {os.getloadavg()}",
        },
        "rows": rows,
        "ntp_over_gntp": ratios,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
