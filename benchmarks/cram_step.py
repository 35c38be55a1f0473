"""Time per train step of CrAM+-Multi vs plain SGD: same ResNet-20, same CIFAR-shaped batch
(128 x 32 x 32 x 3), same run, steps interleaved so both see the same machine load.
Writes {"sgd_ms", "cram_ms", "ratio"} (median ms per step) to benchmarks/results/cram_step.json.

Two forward/backward passes make 2.0 the floor; the target is <= 2.1.

    python benchmarks/cram_step.py [--batch 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcomp.models import ResNet20
from jaxcomp.optim import cram
from jaxcomp.train import classification_loss, make_train_step, split_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "cram_step.json")
    )
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.random((args.batch, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32),
    }
    base = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    txs = {
        "sgd": base,
        "cram": cram(
            base, rho=0.15, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95), plus=True, sparse_grad=True
        ),
    }
    runs = {}
    for name, tx in txs.items():
        graphdef, _, params, state = split_model(ResNet20(rngs=nnx.Rngs(0)))
        step = make_train_step(classification_loss(graphdef), tx)
        carry = (params, state, tx.init(params))
        carry = step(*carry, batch)[:3]  # compile
        jax.block_until_ready(carry)
        runs[name] = [step, carry, []]
    for _ in range(args.steps):  # interleave: both optimizers see the same load
        for run in runs.values():
            step, carry, times = run
            t = time.perf_counter()
            out = step(*carry, batch)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - t) * 1e3)
            run[1] = out[:3]
    res = {
        "sgd_ms": float(np.median(runs["sgd"][2])),
        "cram_ms": float(np.median(runs["cram"][2])),
        "batch": args.batch,
        "steps": args.steps,
    }
    res["ratio"] = res["cram_ms"] / res["sgd_ms"]
    res["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"backend {jax.default_backend()}"
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
