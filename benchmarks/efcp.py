"""EFCP benchmark: optimizer-state bytes and step time of dense vs compressed M-FAC.

ResNet-20-sized parameters (CIFAR ResNet-20 with identity shortcuts, Flax layouts, ~270k
weights; built directly as a pytree of shapes, no model needed), window m = 1024 (the paper's
CIFAR setting). Side by side in one run: dense M-FAC, sparse M-FAC with 1% top-k and error
feedback, low-rank (rank 4, PowerSGD-style) M-FAC. The window is first filled with `m` distinct
random gradients (a jitted scan of the window update, not timed); every timed step then gets a
fresh gradient, and the JSON records whether the step's solve ran on the Cholesky path or the
rank-deficient fallback (the first version cycled through 3 gradients, so the dense window held
repeated rows and every dense step took the fallback). A second table varies d (2^18..2^22
timed for top-k on an initial window, whose step costs the same as a full one; 2^23
compile-only: XLA's memory analysis of the step).
Writes benchmarks/results/efcp.json.

    python -m benchmarks.efcp [--num_grads 1024] [--repeats 7] [--out benchmarks/results/efcp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from jaxcomp.optim import lowrank, mfac, state_nbytes, topk


def resnet20_shapes(num_classes: int = 10, in_channels: int = 3) -> dict:
    """Parameter shapes of a CIFAR ResNet-20 (He et al. 2016, option-A shortcuts), Flax layout."""
    shapes = {"conv_init": (3, 3, in_channels, 16), "bn_init": {"scale": (16,), "bias": (16,)}}
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            shapes[f"stage{stage}_block{block}"] = {
                "conv1": (3, 3, cin, cout),
                "bn1": {"scale": (cout,), "bias": (cout,)},
                "conv2": (3, 3, cout, cout),
                "bn2": {"scale": (cout,), "bias": (cout,)},
            }
            cin = cout
    shapes["head"] = {"kernel": (64, num_classes), "bias": (num_classes,)}
    return shapes


def _params(shapes: dict) -> dict:
    return jax.tree.map(
        lambda s: jnp.zeros(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )


class _Case(NamedTuple):
    """One M-FAC configuration of the benchmark."""

    tx: optax.GradientTransformationExtraArgs
    num_grads: int
    compressor: Any
    damping: float


def _fill_window(case: _Case, params, seed: int):
    """`tx`'s state after `m` distinct random gradients (window full, Gram and error buffer
    current), through the library's own window update in one jitted scan."""
    from jaxcomp.optim.compress import next_window_fields, push_gradient

    tx, m, compressor = case.tx, case.num_grads, case.compressor
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def body(state, key):
        g = unravel(jax.random.normal(key, flat.shape, jnp.float32))
        new, _, _, _ = push_gradient(compressor, g, state, m)
        return type(state)(**next_window_fields(state, new, state.momentum)), None

    keys = jax.random.split(jax.random.key(seed), m)
    return jax.jit(lambda s: jax.lax.scan(body, s, keys)[0])(jax.jit(tx.init)(params))


def _time_steps(case: _Case, params, repeats: int, seed: int = 0, prefill: bool = True) -> dict:
    """Median wall time (ms) of a jitted, state-donating `tx.update` on a full window, each step
    with a fresh gradient; state and window bytes; which solve ran."""
    from jaxcomp.optim.mfac import uses_cholesky

    tx = case.tx
    state = _fill_window(case, params, seed) if prefill else jax.jit(tx.init)(params)
    nbytes, window_bytes = state_nbytes(state), state_nbytes(state.window)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    keys = jax.random.split(jax.random.key(seed + 1), repeats + 1)
    grads = [jax.block_until_ready(unravel(jax.random.normal(k, flat.shape))) for k in keys]
    update = jax.jit(tx.update, donate_argnums=1)
    upd, state = update(grads[0], state, params)  # compile (+ one step)
    jax.block_until_ready((upd, state))
    times, cholesky = [], []
    check = jax.jit(lambda s: uses_cholesky(s, case.damping))
    for g in grads[1:]:
        cholesky.append(bool(check(state)))
        start = time.perf_counter()
        upd, state = update(g, state, params)
        jax.block_until_ready((upd, state))
        times.append((time.perf_counter() - start) * 1e3)
    del state
    return {
        "ms": statistics.median(times),
        "state_bytes": nbytes,
        "window_bytes": window_bytes,
        "solve": "cholesky" if all(cholesky) else f"fallback in {cholesky.count(False)} steps",
    }


def _topk_vs_d(m: int, fraction: float, repeats: int, max_timed: int, compile_only: int) -> list:
    """Top-k M-FAC step time for flat parameter vectors of size 2^18..2^max_timed, and XLA's
    memory analysis of the step at 2^compile_only (compiled, never run)."""
    rows = []
    for log_d in range(18, compile_only + 1):
        params = jnp.zeros((1 << log_d,), jnp.float32) if log_d <= max_timed else None
        case = _mfac(m, topk(fraction))
        tx = case.tx
        abstract = jax.ShapeDtypeStruct((1 << log_d,), jnp.float32)
        state = jax.eval_shape(tx.init, abstract)
        mem = jax.jit(tx.update, donate_argnums=1).lower(abstract, state, abstract).compile()
        mem = mem.memory_analysis()
        row = {
            "d": 1 << log_d,
            "state_bytes": state_nbytes(state),
            "xla_temp_bytes": int(mem.temp_size_in_bytes),
        }
        if params is not None:
            # not prefilled (1024 top-k compressions of a 4M vector take minutes on a CPU): the
            # step's cost does not depend on the window's content, only on its shape
            t = _time_steps(case, params, repeats, prefill=False)
            row.update(step_ms=round(t["ms"], 2), solve=t["solve"])
        print(f"topk d=2^{log_d}: {row}", flush=True)
        rows.append(row)
    return rows


def _mfac(m: int, compressor) -> _Case:
    return _Case(mfac(1e-3, num_grads=m, damping=1e-4, compressor=compressor), m, compressor, 1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_grads", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--max_timed_log_d", type=int, default=22)
    parser.add_argument("--compile_only_log_d", type=int, default=23)
    parser.add_argument("--out", default="benchmarks/results/efcp.json")
    args = parser.parse_args()

    params = _params(resnet20_shapes())
    d = sum(x.size for x in jax.tree.leaves(params))
    m = args.num_grads
    load_before = os.getloadavg()
    results = {}
    for name, comp in (
        ("dense", None),
        ("topk", topk(args.fraction)),
        ("lowrank", lowrank(args.rank)),
    ):
        t = _time_steps(_mfac(m, comp), params, args.repeats)
        results[f"{name}_step_ms"] = round(t["ms"], 2)
        results[f"{name}_state_bytes"] = t["state_bytes"]
        results[f"{name}_window_bytes"] = t["window_bytes"]
        results[f"{name}_solve"] = t["solve"]
        print(f"{name:8s} state {t['state_bytes'] / 2**20:9.2f} MiB   step {t['ms']:8.1f} ms "
              f"({t['solve']})", flush=True)  # fmt: skip
    vs_d = _topk_vs_d(m, args.fraction, args.repeats, args.max_timed_log_d, args.compile_only_log_d)
    load_after = os.getloadavg()

    out = {
        **results,
        "topk_state_ratio": round(results["dense_state_bytes"] / results["topk_state_bytes"], 1),
        "lowrank_state_ratio": round(
            results["dense_state_bytes"] / results["lowrank_state_bytes"], 1
        ),
        "topk_window_ratio": round(results["dense_window_bytes"] / results["topk_window_bytes"], 1),
        "state_note": (
            "state = window + (m, m) Gram matrix + (d,) error-feedback buffer (compressed only); "
            "the top-k window stores float32 values + block-local uint16 indices"
        ),
        "topk_step_speedup": round(results["dense_step_ms"] / results["topk_step_ms"], 2),
        "lowrank_step_speedup": round(results["dense_step_ms"] / results["lowrank_step_ms"], 2),
        "topk_vs_d": vs_d,
        "num_params": int(d),
        "num_grads": m,
        "topk_fraction": args.fraction,
        "lowrank_rank": args.rank,
        "damping": 1e-4,
        "repeats": args.repeats,
        "timing": (
            "median wall time of a jitted update with donated state on a full window of m "
            "distinct gradients, a fresh gradient every step, after compilation"
        ),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "note": os.environ.get("JAXCOMP_BENCH_NOTE", ""),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
