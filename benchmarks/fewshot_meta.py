"""MAML meta-batch: one jitted, vmapped meta-gradient step vs a sequential per-task loop.

A meta-batch of 4 tasks (5-way 1-shot, 15 queries per class, 28x28x1 inputs) for MAML on
Conv32F (``width=32``) with 5 second-order inner steps of lr 1e-2 (FewSAR's maml.yaml), from
the same parameters and the same deterministic episodes:

- "vmapped": ``jax.grad`` of ``MAML.meta_batch_loss`` (the tasks ``vmap``ped) and the Adam
  update, one jitted program per step;
- "sequential": a Python loop over the tasks, each task's meta-gradient
  (``jax.grad`` of ``episode_loss``) jitted, then their mean and the same Adam update jitted,
  the way a per-episode loop (LibFewShot's ``for i in range(episode_size)``) runs a meta-batch.

Both are compiled first (warm-up); then, alternating, ``--repeats`` timed steps each; the JSON
has the medians, their ratio, the largest difference between the two meta-gradients, the load
average before and after, and the device.

    python -m benchmarks.fewshot_meta [--repeats 7] [--out benchmarks/results/fewshot_meta.json]
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
import optax
from flax import nnx

from jaxcomp.fewshot import EpisodeSampler, EpisodeStream
from jaxcomp.fewshot.meta import MAML
from jaxcomp.train.step import split_model

WAY, SHOT, QUERY, SIZE, WIDTH = 5, 1, 15, 28, 32
TASKS, INNER_STEPS, INNER_LR = 4, 5, 1e-2


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (>= 1)")
    parser.add_argument("--out", default="benchmarks/results/fewshot_meta.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    load_before = os.getloadavg()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40 * 20, SIZE, SIZE, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(40), 20)
    stream = EpisodeStream(images, EpisodeSampler(labels, WAY, SHOT, QUERY, seed=0))
    episodes = [stream.batch(i) for i in range(TASKS)]
    support = jnp.asarray(np.stack([e["support"] for e in episodes]))  # (T, way, shot, H, W, 1)
    query = jnp.asarray(np.stack([e["query"] for e in episodes]))  # (T, way, query, H, W, 1)

    feat_dim = WIDTH  # 28 -> 14 -> 7 -> 3 -> 1 after four 2x2 max-pools
    model = MAML(
        1,
        feat_dim=feat_dim,
        width=WIDTH,
        way=WAY,
        inner_steps=INNER_STEPS,
        inner_lr=INNER_LR,
        rngs=nnx.Rngs(0),
    )
    graphdef, _, params, state = split_model(model)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def batch_loss(p, s, q):
        return nnx.merge(graphdef, p, state).meta_batch_loss(s, q)[0]

    def task_loss(p, s, q):
        return nnx.merge(graphdef, p, state).episode_loss(s, q)[0]

    @jax.jit
    def vmapped_step(p, o, s, q):
        g = jax.grad(batch_loss)(p, s, q)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, g

    task_grad = jax.jit(jax.grad(task_loss))

    @jax.jit
    def mean_update(p, o, grads):
        g = jax.tree.map(lambda *x: jnp.mean(jnp.stack(x), axis=0), *grads)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, g

    def sequential_step(p, o, s, q):
        grads = tuple(task_grad(p, s[t], q[t]) for t in range(TASKS))
        return mean_update(p, o, grads)

    runners = {"vmapped_step": vmapped_step, "sequential_loop": sequential_step}
    compile_s, grads = {}, {}
    for k, f in runners.items():  # warm-up: compilation
        t0 = time.perf_counter()
        out = jax.block_until_ready(f(params, opt_state, support, query))
        compile_s[k] = time.perf_counter() - t0
        grads[k] = out[2]
    diff = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), grads["vmapped_step"], grads["sequential_loop"]
    )
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["vmapped_step"]))

    times = {k: [] for k in runners}
    for _ in range(args.repeats):
        for k, f in runners.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(params, opt_state, support, query))
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    device = jax.devices()[0]
    result = {
        "benchmark": "MAML meta-gradient step on a meta-batch of 4 tasks (5-way 1-shot, 15 "
        "queries, Conv32F, 28x28x1, 5 second-order inner steps): jitted vmapped step vs a "
        "Python loop of per-task jitted meta-gradients, averaged",
        "tasks": TASKS,
        "way": WAY,
        "shot": SHOT,
        "query": QUERY,
        "image": [SIZE, SIZE, 1],
        "width": WIDTH,
        "inner_steps": INNER_STEPS,
        "inner_lr": INNER_LR,
        "repeats": args.repeats,
        "median_seconds_per_step": med,
        "seconds_per_step": times,
        "first_call_seconds_incl_compile": compile_s,
        "speedup_vmapped_over_sequential": med["sequential_loop"] / med["vmapped_step"],
        "max_abs_grad_difference": max(jax.tree.leaves(diff)),
        "max_abs_grad": scale,
        "note": os.environ.get("JAXCOMP_BENCH_NOTE", "no note: check load_average"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),  # 1/5/15-minute
        "device": f"{device.platform}: {device.device_kind}",
        "devices": str(jax.devices()),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
    }
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "seconds_per_step"}, indent=1))
    return result


if __name__ == "__main__":
    main()
