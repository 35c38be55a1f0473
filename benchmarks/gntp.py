"""GNTP (k = 10) vs exhaustive NTP: seconds per training batch and peak memory vs KB size.

Synthetic KBs of 10^3 .. 10^6 facts, the same templates, depth and rules for both provers, two
batches: the recipe's (10 positives + 40 corruptions = 50 goals) and a 2-goal batch (1 + 1) at
which exhaustive NTP still fits at 10^4 facts. Each (prover, size, batch) runs in its own
subprocess so its peak RSS is its own; inside it, after a warm-up step, ``--repeats`` windows
of a few steps each are timed and the row reports the median over windows (and their min/max).
The XLA buffer estimate (``compiled.memory_analysis()``) is recorded too, and is how we decide
to skip a run that would not fit (its estimate is still reported). A log-log plot of seconds per
batch against facts goes next to the JSON.

  python -m benchmarks.gntp            # writes benchmarks/results/gntp.json and gntp.png
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

SIZES = (1_000, 10_000, 100_000, 1_000_000)
TEMPLATES = "p(X, Y) :- q(Y, X) <1>\np(X, Y) :- q(X, Z), r(Z, Y) <1>\n"
DIM = 32
# goals per batch: the recipe's 10 positives + 40 corruptions, and 1 + 1 (exhaustive NTP's
# 2-hop proof needs B * N^2 floats, so only the small batch fits it at 10^4 facts)
BATCHES = (50, 2)
MAX_BYTES = 4e9  # skip running when the XLA buffer estimate exceeds this (2-core, 8 GB machine)
WINDOW_SECONDS = 2.0  # each timed window holds max(1, min(10, 2 s / step)) steps


def worker(n_facts: int, method: str, repeats: int, batch_goals: int) -> dict:
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

    n_pos = max(batch_goals // 5, 1)

    def batch(i):
        ix = rng.integers(n_facts, size=n_pos)
        pos = kb.facts[ix]
        neg = corrupt_triples(rng, pos, len(kb.constants), known, 1, both=True)
        neg = neg[: batch_goals - len(pos)]
        goals = np.concatenate([pos, neg])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.float32)
        mask = np.r_[ix, -np.ones(len(neg))].astype(np.int32)
        return goals, y, mask

    g, y, m = batch(0)
    compiled = step.lower(params, opt, arr, g, y, m).compile()
    ma = compiled.memory_analysis()
    est = int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)
    out = {"n_facts": n_facts, "method": method, "batch_goals": batch_goals}
    out["xla_buffer_bytes"] = est
    if est > MAX_BYTES:
        out["skipped"] = f"XLA buffer estimate {est / 1e9:.1f} GB > {MAX_BYTES / 1e9:.0f} GB"
        return out
    params, opt, loss = step(params, opt, arr, g, y, m)  # warm-up (compile + first run)
    jax.block_until_ready(loss)
    batches = [batch(i) for i in range(10)]
    t0 = time.perf_counter()
    params, opt, loss = step(params, opt, arr, *batches[0])
    jax.block_until_ready(loss)
    per_window = max(1, min(10, int(WINDOW_SECONDS / (time.perf_counter() - t0))))
    windows = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(per_window):
            params, opt, loss = step(params, opt, arr, *batches[(r * per_window + i) % 10])
        jax.block_until_ready(loss)
        windows.append((time.perf_counter() - t0) / per_window)
    out["sec_per_batch"] = float(np.median(windows))
    out["sec_per_batch_windows"] = [float(w) for w in windows]
    out["steps_per_window"] = per_window
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=3, metavar=("N_FACTS", "METHOD", "BATCH"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/gntp.json")
    a = ap.parse_args()
    if a.worker:
        n, method, b = a.worker
        print(json.dumps(worker(int(n), method, a.repeats, int(b))))
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    rows = []
    load_before = os.getloadavg()
    for b in BATCHES:
        for n in SIZES:
            for method in ("gntp", "ntp"):
                cmd = [sys.executable, "-m", "benchmarks.gntp", "--worker", str(n), method, str(b)]
                cmd += ["--repeats", str(a.repeats)]
                t0 = time.time()
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    row = {"n_facts": n, "method": method, "batch_goals": b}
                    row["error"] = res.stderr[-2000:]
                else:
                    row = json.loads(res.stdout.strip().splitlines()[-1])
                row["wall_seconds_incl_compile"] = time.time() - t0
                print(row, flush=True)
                rows.append(row)
    ratios = {}
    for b in BATCHES:
        for n in SIZES:
            r = {x["method"]: x for x in rows if x["n_facts"] == n and x["batch_goals"] == b}
            if "sec_per_batch" in r.get("ntp", {}) and "sec_per_batch" in r.get("gntp", {}):
                g, e = r["gntp"], r["ntp"]
                ratios[f"{n} facts, batch {b}"] = {
                    "speedup": e["sec_per_batch"] / g["sec_per_batch"],
                    # window-to-window spread: slowest NTP over fastest GNTP and the reverse
                    "speedup_range": [
                        min(e["sec_per_batch_windows"]) / max(g["sec_per_batch_windows"]),
                        max(e["sec_per_batch_windows"]) / min(g["sec_per_batch_windows"]),
                    ],
                    "memory_ratio_xla": e["xla_buffer_bytes"] / g["xla_buffer_bytes"],
                    "memory_ratio_rss": e["peak_rss_bytes"] / g["peak_rss_bytes"],
                }
    result = {
        "benchmark": "GNTP (k_facts=10, all rules) vs exhaustive NTP, one training step "
        "(forward + backward + Adam)",
        "setup": {
            "templates": TEMPLATES.strip().splitlines(),
            "dim": DIM,
            "batch_goals": list(BATCHES),
            "corruptions": "1/5 positives; the rest subject, object and both corruptions",
            "depth": 1,
            "unification": "classic",
            "predicates": 20,
            "constants": "n_facts / 5",
            "repeats": a.repeats,
            "statistic": "median over `repeats` timed windows (each max(1, min(10, 2 s / "
            "step)) steps) of seconds per batch, after a warm-up step",
            "memory": "peak_rss_bytes = child-process max RSS (includes the JAX runtime, "
            "~constant); xla_buffer_bytes = compiled.memory_analysis() temp + args + outputs",
            "skip_rule": f"not run when xla_buffer_bytes > {MAX_BYTES:.0e}",
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "rows": rows,
        "ntp_over_gntp": ratios,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    plot(rows, Path(a.out).with_suffix(".png"))
    print(json.dumps(ratios, indent=2))


def plot(rows: list[dict], path: Path) -> None:
    """Log-log seconds per batch vs facts, one line per (prover, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for b, ls in zip(BATCHES, ("-", "--")):
        for method, color in (("gntp", "C0"), ("ntp", "C3")):
            pts = [
                (r["n_facts"], r["sec_per_batch"], r["sec_per_batch_windows"])
                for r in rows
                if r["method"] == method and r["batch_goals"] == b and "sec_per_batch" in r
            ]
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            err = [[p[1] - min(p[2]) for p in pts], [max(p[2]) - p[1] for p in pts]]
            label = f"{'GNTP (k=10)' if method == 'gntp' else 'exhaustive NTP'}, {b} goals"
            ax.errorbar(
                x, y, yerr=err, color=color, ls=ls, marker="o", ms=4, capsize=2, label=label
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("facts in the KB")
    ax.set_ylabel("seconds per training batch")
    ax.set_title("GNTP vs exhaustive NTP: training-step cost (CPU)")
    ax.legend(fontsize=7)
    ax.text(0.01, 0.01, "median of windows; bars: min-max", transform=ax.transAxes, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
