"""EFCP benchmark: optimizer-state bytes and step time of dense vs compressed M-FAC.

ResNet-20-sized parameters (CIFAR ResNet-20 with identity shortcuts, Flax layouts, ~270k
weights; built directly as a pytree of shapes, no model needed), window m = 1024 (the paper's
CIFAR setting). Side by side in one run: dense M-FAC, sparse M-FAC with 1% top-k and error
feedback, low-rank (rank 4, PowerSGD-style) M-FAC. Writes benchmarks/results/efcp.json.

    python -m benchmarks.efcp [--num_grads 1024] [--steps 8] [--out benchmarks/results/efcp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

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


def _time_steps(tx, params, steps: int, seed: int = 0) -> tuple[float, int, int]:
    """Median wall time (ms) of a jitted, state-donating `tx.update`; state and window bytes."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(params)
    grads = [
        jax.tree.unflatten(
            treedef, [jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in leaves]
        )
        for _ in range(3)
    ]
    state = jax.jit(tx.init)(params)
    nbytes, window_bytes = state_nbytes(state), state_nbytes(state.window)
    update = jax.jit(tx.update, donate_argnums=1)
    upd, state = update(grads[0], state, params)  # compile
    jax.block_until_ready((upd, state))
    times = []
    for i in range(steps):
        start = time.perf_counter()
        upd, state = update(grads[i % 3], state, params)
        jax.block_until_ready((upd, state))
        times.append((time.perf_counter() - start) * 1e3)
    del state
    return statistics.median(times), nbytes, window_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_grads", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--rank", type=int, default=4)
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
        tx = mfac(1e-3, num_grads=m, damping=1e-4, compressor=comp)
        ms, nbytes, window_bytes = _time_steps(tx, params, args.steps)
        results[f"{name}_step_ms"] = round(ms, 2)
        results[f"{name}_state_bytes"] = nbytes
        results[f"{name}_window_bytes"] = window_bytes
        print(f"{name:8s} state {nbytes / 2**20:9.2f} MiB   step {ms:8.1f} ms", flush=True)
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
        "num_params": int(d),
        "num_grads": m,
        "topk_fraction": args.fraction,
        "lowrank_rank": args.rank,
        "damping": 1e-4,
        "steps_timed": args.steps,
        "timing": "median wall time of a jitted update with donated state, after compilation",
        "machine": (
            f"{platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}; SHARED with "
            f"other developers' processes (load average {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after), so compare ratios, not absolute times"
        ),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
