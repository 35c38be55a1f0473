"""Global top-k mask on ResNet-50-sized params (25.6M) vs one ResNet-20 forward/backward on a
CIFAR batch of 128, in one run on this machine. Writes benchmarks/results/masks.json.

CrAM computes a mask every step, so the mask must cost well under a training step.

    python benchmarks/masks.py [--batch 128] [--repeats 5]
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
from flax import nnx

from jaxcomp.models import ResNet20, ResNet50
from jaxcomp.pruning import nm_mask, nm_where, topk_mask
from jaxcomp.train import classification_loss, split_model


def median_ms(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "masks.json")
    )
    args = ap.parse_args()

    # ResNet-50 params (real shapes, random values): 25.6M entries, 54 prunable kernels.
    abstract = nnx.eval_shape(lambda: ResNet50(rngs=nnx.Rngs(0)))
    shapes = nnx.as_pure(nnx.state(abstract, nnx.Param))
    key = iter(jax.random.split(jax.random.PRNGKey(0), 400))
    r50 = jax.tree.map(lambda s: jax.random.normal(next(key), s.shape, s.dtype), shapes)
    n50 = sum(x.size for x in jax.tree.leaves(r50))
    mask_fn = jax.jit(lambda p, s: topk_mask(p, s))
    layer_fn = jax.jit(lambda p, s: topk_mask(p, s, scope="layer"))
    nm_fn = jax.jit(lambda p: nm_mask(p, 2, 4, where=nm_where(4)))
    sparsity = jnp.float32(0.9)

    # ResNet-20 forward/backward on a CIFAR-shaped batch.
    graphdef, _, params, state = split_model(ResNet20(rngs=nnx.Rngs(0)))
    loss_fn = classification_loss(graphdef)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.random((args.batch, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32),
    }
    fwd_bwd = jax.jit(jax.grad(lambda p, s, b: loss_fn(p, s, b)[0]))
    r20_mask = jax.jit(lambda p, s: topk_mask(p, s))

    res = {
        "resnet50_params": int(n50),
        "global_topk_resnet50_ms": median_ms(mask_fn, r50, sparsity, repeats=args.repeats),
        "layer_topk_resnet50_ms": median_ms(layer_fn, r50, sparsity, repeats=args.repeats),
        "nm24_resnet50_ms": median_ms(nm_fn, r50, repeats=args.repeats),
        "resnet20_fwd_bwd_ms": median_ms(fwd_bwd, params, state, batch, repeats=args.repeats),
        "global_topk_resnet20_ms": median_ms(r20_mask, params, sparsity, repeats=args.repeats),
        "batch": args.batch,
    }
    res["ratio_resnet50_mask_to_resnet20_step"] = (
        res["global_topk_resnet50_ms"] / res["resnet20_fwd_bwd_ms"]
    )
    res["ratio_resnet20_mask_to_resnet20_step"] = (
        res["global_topk_resnet20_ms"] / res["resnet20_fwd_bwd_ms"]
    )
    res["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, backend {jax.default_backend()}"
    )
    res["note"] = "medians over repeats; ratios are what to compare (same run, same machine)"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
