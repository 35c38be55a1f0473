"""MAML meta-batch: one jitted, vmapped meta-gradient step vs a sequential per-task loop.

A meta-batch of 4 tasks (5-way 1-shot, 15 queries per class, 28x28x1 inputs) for MAML on
Conv32F (``width=32``) with 5 second-order inner steps of lr 1e-2 (FewSAR's maml.yaml), from
the same parameters and the same deterministic episodes:

- "vmapped": ``jax.grad`` of ``MAML.meta_batch_loss`` (the tasks ``vmap``ped) and the Adam
  update, one jitted program per step;
- "sequential": a Python loop over the tasks, each task's meta-gradient
  (``jax.grad`` of ``episode_loss``) jitted, then their mean and the same Adam update jitted,
  the way a per-episode loop (LibFewShot's ``for i in range(episode_size)``) runs a meta-batch.

Both run with the inner loop's ``lax.scan`` unrolled (the default) and rolled (``unroll=1``),
and one test-time adaptation of a single episode (5 steps on the support set, then the query
forward, jitted) is timed both ways: XLA:CPU runs the convolutions inside a rolled loop several
times slower. All are compiled first (warm-up); then, alternating, ``--repeats`` timed calls
each; the JSON has the medians, their ratios, the largest difference between the meta-gradients,
the load average before and after, and the device.

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
from jaxcomp.fewshot.meta import MAML, inner_loop, meta_batch_loss, meta_loss
from jaxcomp.fewshot.meta.maml import episode_ce
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

    # The MAML module's objective as pure functions of its Param tree (``MAML._outer``), with the
    # inner loop's scan unrolled or not.
    apply, _ = nnx.merge(graphdef, params, state).functional()
    loss_fn = episode_ce(apply)
    kw = dict(inner_steps=INNER_STEPS, inner_lr=INNER_LR, has_aux=True)

    def make(unroll):
        def batch_loss(p, s, q):
            return meta_batch_loss(loss_fn, p, s, q, unroll=unroll, **kw)[0]

        def task_loss(p, s, q):
            return meta_loss(loss_fn, p, s, q, unroll=unroll, **kw)[0]

        @jax.jit
        def vmapped_step(p, o, s, q):
            g = jax.grad(batch_loss)(p, s, q)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, g

        task_grad = jax.jit(jax.grad(task_loss))

        def sequential_step(p, o, s, q):
            grads = tuple(task_grad(p, s[t], q[t]) for t in range(TASKS))
            return mean_update(p, o, grads)

        @jax.jit
        def adapt(p, o, s, q):  # one test episode: adapt on the support set, score the queries
            adapted = inner_loop(loss_fn, p, s[0], unroll=unroll, **kw)
            return apply(adapted, q[0].reshape(-1, *q.shape[3:]))

        return vmapped_step, sequential_step, adapt

    @jax.jit
    def mean_update(p, o, grads):
        g = jax.tree.map(lambda *x: jnp.mean(jnp.stack(x), axis=0), *grads)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, g

    runners = {}
    for suffix, unroll in (("", True), ("_rolled", 1)):
        v, q, a = make(unroll)
        runners.update(
            {f"vmapped_step{suffix}": v, f"sequential_loop{suffix}": q, f"test_adapt{suffix}": a}
        )
    compile_s, grads = {}, {}
    for k, f in runners.items():  # warm-up: compilation
        t0 = time.perf_counter()
        out = jax.block_until_ready(f(params, opt_state, support, query))
        compile_s[k] = time.perf_counter() - t0
        grads[k] = out[2] if not k.startswith("test_adapt") else out
    ref = grads["vmapped_step"]
    diff = {
        k: max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref, g)))
        for k, g in grads.items()
        if not k.startswith("test_adapt")
    }
    adapt_diff = float(jnp.max(jnp.abs(grads["test_adapt"] - grads["test_adapt_rolled"])))
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref))

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
        "Python loop of per-task jitted meta-gradients, averaged; each with the inner scan "
        "unrolled (default) and rolled; and one test episode's adaptation both ways",
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
        "speedup_unrolled_over_rolled": {
            k: med[f"{k}_rolled"] / med[k]
            for k in ("vmapped_step", "sequential_loop", "test_adapt")
        },
        "max_abs_grad_difference_to_vmapped_step": diff,
        "max_abs_logit_difference_test_adapt_rolled": adapt_diff,
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
