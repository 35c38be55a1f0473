"""A resumable training loop: step-indexed data, periodic atomic checkpoints, JSONL metrics."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxcomp.data.pipeline import DataStream
from jaxcomp.train.checkpoint import Checkpointer
from jaxcomp.train.mesh import shard_batch
from jaxcomp.train.metrics import MetricsWriter, Progress, to_float


def fit(
    step_fn: Callable,
    params: Any,
    model_state: Any,
    opt_state: Any,
    stream: DataStream,
    num_steps: int,
    *,
    mesh: Mesh | None = None,
    workdir: str | None = None,
    ckpt_every: int = 0,
    max_to_keep: int = 2,
    log_every: int = 50,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Any, Any, Any, list[dict[str, float]]]:
    """Run ``step_fn`` (from ``make_train_step``) until global step ``num_steps``.

    With ``workdir`` and ``ckpt_every > 0``, checkpoints go to ``workdir/checkpoints`` every
    ``ckpt_every`` steps and at the end; if one exists already the run resumes from it and
    continues exactly (the batch for each step is a pure function of the step). Metrics every
    ``log_every`` steps go to ``workdir/metrics.jsonl`` and are returned.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    ckpt = None
    start = 0
    if workdir is not None and ckpt_every > 0:
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
        if ckpt.latest_step() is not None:
            target = {"params": params, "model_state": model_state, "opt_state": opt_state}
            state, meta = ckpt.restore(target)
            if meta.get("data_seed", stream.seed) != stream.seed:
                raise ValueError(
                    f"checkpoint was written with data seed {meta['data_seed']}, "
                    f"this run uses {stream.seed}"
                )
            params, model_state, opt_state = (
                state["params"],
                state["model_state"],
                state["opt_state"],
            )
            start = int(meta["step"])
    writer = MetricsWriter(workdir) if workdir is not None else None
    bar = (
        Progress(num_steps, initial=start, desc=desc, batch_size=stream.batch_size)
        if progress
        else None
    )
    history: list[dict[str, float]] = []
    place = (
        (lambda b: shard_batch(b, mesh))
        if mesh is not None
        else (lambda b: jax.tree.map(jnp.asarray, b))
    )
    # XLA:CPU runs each fake device's share of a collective on a shared thread pool; with many
    # multi-device steps in flight it can deadlock in the all-reduce rendezvous. Accelerators
    # keep async dispatch; on CPU each step is awaited.
    sync = jax.default_backend() == "cpu" and len(jax.devices()) > 1
    for step in range(start, num_steps):
        params, model_state, opt_state, metrics = step_fn(
            params, model_state, opt_state, place(stream.batch(step))
        )
        if sync:
            jax.block_until_ready(metrics)
        done = step + 1
        shown = None
        if log_every and (done % log_every == 0 or done == num_steps):
            shown = to_float(metrics)
            history.append({"step": done, **shown})
            if writer is not None:
                writer.write(done, shown)
        if bar is not None:
            bar.update(1, shown)
        if ckpt is not None and (done % ckpt_every == 0 or done == num_steps):
            ckpt.save(
                done,
                {"params": params, "model_state": model_state, "opt_state": opt_state},
                {"data_seed": stream.seed},
            )
    if bar is not None:
        bar.close()
    if ckpt is not None:
        ckpt.close()
    return params, model_state, opt_state, history
