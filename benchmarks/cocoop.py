"""CoCoOp training throughput: batch 1 (the reference's limit) vs batch 32 chunked + remat, and
CoOp, on the same small CLIP in the same run.

    python -m benchmarks.cocoop

Each configuration is one jitted SGD step on the prompt parameters (frozen CLIP, image encoder
included); we time ``steps`` steps after a warm-up and report images/s, ratios to CoCoOp at batch
1, and XLA's compiled temporary-buffer size (the activation memory the step needs). Writes
``benchmarks/results/cocoop.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcomp.models.clip import CLIP, CLIPConfig
from jaxcomp.nn.prompts import CoCoOp, CoOp, PromptParam

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOCAB = {w: i + 1 for i, w in enumerate((*DIGITS, "."))}
SOS, EOS = len(VOCAB) + 1, len(VOCAB) + 2


def tokenize(text: str) -> list[int]:
    return [SOS, *(VOCAB[w] for w in text.replace(".", " .").split()), EOS]


def make_step(model, batch_size: int):
    opt = nnx.Optimizer(model, optax.sgd(1e-3, momentum=0.9), wrt=PromptParam)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, PromptParam))(model)
        opt.update(model, grads)
        return loss

    return step, opt


def bench(name, model, batch_size, steps, image_shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch_size, *image_shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, size=batch_size).astype(np.int32))
    step, opt = make_step(model, batch_size)
    # Temporary (activation) memory of the compiled step.
    graphdef, state = nnx.split((model, opt))
    temp = None
    try:
        pure = lambda s, x, y: step(*nnx.merge(graphdef, s), x, y)
        mem = jax.jit(pure).lower(state, x, y).compile().memory_analysis()
        temp = int(mem.temp_size_in_bytes) if mem is not None else None
    except Exception:  # memory_analysis is best-effort on CPU
        temp = None
    jax.block_until_ready(step(model, opt, x, y))  # compile + warm up
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(model, opt, x, y)
    jax.block_until_ready(loss)
    dt = time.perf_counter() - t0
    out = {
        "name": name, "batch_size": batch_size, "steps": steps, "seconds": dt,
        "images_per_s": batch_size * steps / dt, "temp_bytes": temp,
    }  # fmt: skip
    print(f"{name:40s} {out['images_per_s']:9.1f} img/s  temp {temp}")
    return out


def main():
    cfg = CLIPConfig(
        image_size=28, patch_size=7, num_channels=1, vision_width=64, vision_layers=2,
        vision_heads=4, vision_mlp_dim=256, vocab_size=SOS + 2, context_length=16,
        text_width=64, text_layers=2, text_heads=4, text_mlp_dim=256, projection_dim=64,
    )  # fmt: skip
    clip = CLIP(cfg, rngs=nnx.Rngs(0))
    image_shape = (28, 28, 1)
    common = dict(tokenize=tokenize, n_ctx=4, rngs=nnx.Rngs(1))
    runs = [
        bench("cocoop_batch1", CoCoOp(clip, DIGITS, chunk_size=1, **common), 1, 64, image_shape),
        bench("cocoop_batch32_chunk8_remat", CoCoOp(clip, DIGITS, chunk_size=8, **common), 32, 8,
              image_shape),  # fmt: skip
        bench("cocoop_batch32_unchunked_noremat",
              CoCoOp(clip, DIGITS, chunk_size=32, remat=False, **common), 32, 8, image_shape),
        bench("coop_batch32", CoOp(clip, DIGITS, **common), 32, 32, image_shape),
    ]  # fmt: skip
    base = runs[0]["images_per_s"]
    for r in runs:
        r["speedup_vs_cocoop_batch1"] = r["images_per_s"] / base
    unchunked = runs[2]["temp_bytes"]
    if unchunked and runs[1]["temp_bytes"]:
        runs[1]["temp_bytes_ratio_vs_unchunked"] = runs[1]["temp_bytes"] / unchunked
    result = {
        "benchmark": "CoCoOp/CoOp training throughput (prompt-parameter SGD step, frozen CLIP)",
        "model": "CLIP 28x28x1 / patch 7, width 64, 2+2 layers, 10 classes, n_ctx 4",
        "runs": runs,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "note": "shared 2-core CPU with other developers' jobs running; compare ratios only",
    }
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "cocoop.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
