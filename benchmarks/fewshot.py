"""Episodes per second: the jitted ProtoNet training step vs a plain per-episode Python loop.

Both train the same Conv64F ProtoNet (5-way 1-shot, 15 queries, 28x28 glyph-sized inputs) with
Adam from the same initialisation on the same deterministic episodes, alternating in one
process after warm-up. "Jitted": ``make_train_step`` (one XLA program per step, buffers
donated). "Python loop": the same loss, gradient and optax update run op by op
(``jax.disable_jit``), the way a per-episode PyTorch-style loop dispatches each operation.

    python -m benchmarks.fewshot   # writes benchmarks/results/fewshot.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx

from jaxcomp.fewshot import EpisodeSampler, EpisodeStream, build_method
from jaxcomp.fewshot.protocol import episodic_loss
from jaxcomp.train.step import make_train_step, split_model

WAY, SHOT, QUERY, SIZE = 5, 1, 15, 28
EPISODES, ROUNDS = 3, 3


def main() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40 * 20, SIZE, SIZE, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(40), 20)
    stream = EpisodeStream(images, EpisodeSampler(labels, WAY, SHOT, QUERY, seed=0))
    model = build_method(
        "protonet", in_channels=1, image_hw=(SIZE, SIZE), num_base_classes=40, rngs=nnx.Rngs(0)
    )
    graphdef, _, params, state = split_model(model)
    tx = optax.adam(1e-3)
    loss_fn = episodic_loss(graphdef)
    jitted = make_train_step(loss_fn, tx, donate=False)

    def plain(params, state, opt_state, batch):
        with jax.disable_jit():
            (loss, (new_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, state, batch
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_state, opt_state, {"loss": loss}

    runners = {"jitted_step": jitted, "python_loop": plain}
    carry = {k: (params, state, tx.init(params)) for k in runners}
    for k, f in runners.items():  # warm-up (compilation / op caches)
        out = f(*carry[k], stream.batch(0))
        jax.block_until_ready(out)
    times = {k: [] for k in runners}
    step = 1
    for _ in range(ROUNDS):
        for k, f in runners.items():
            t0 = time.perf_counter()
            p, s, o = carry[k]
            for i in range(EPISODES):
                p, s, o, m = f(p, s, o, stream.batch(step + i))
            jax.block_until_ready(m["loss"])
            times[k].append((time.perf_counter() - t0) / EPISODES)
            carry[k] = (p, s, o)
        step += EPISODES
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "ProtoNet Conv64F training, 5-way 1-shot 15-query 28x28: jitted step vs "
        "op-by-op per-episode Python loop",
        "episodes_per_round": EPISODES,
        "rounds": ROUNDS,
        "median_seconds_per_episode": med,
        "episodes_per_second": {k: 1.0 / v for k, v in med.items()},
        "speedup_jitted_over_loop": med["python_loop"] / med["jitted_step"],
        "note": os.environ.get("JAXCOMP_BENCH_NOTE", "no note: check load_average"),
        "load_average": os.getloadavg(),  # 1/5/15-minute, at the end of the run
        "platform": platform.platform(),
        "jax": jax.__version__,
        "devices": str(jax.devices()),
    }
    os.makedirs("benchmarks/results", exist_ok=True)
    path = "benchmarks/results/fewshot.json"
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
