"""CoCoOp / CoOp prompt-training step: throughput and activation memory vs batch size.

    python -m benchmarks.cocoop            # writes benchmarks/results/cocoop.json

The step is the one the experiment trains (``experiments/cocoop.py``): the CLIP is frozen and the
image features are computed once, so one SGD step on the prompt parameters runs
``logits_from_features`` (CoCoOp: one text pass over all classes *per image*, chunked with
``lax.map`` + remat; CoOp: one text pass over all classes per step) and its backward pass.

Two text towers, 10 classes, 4 context tokens, random weights:

* ``demo``: the offline demo's CLIP text tower (width 64, 2 layers, 16 positions). Timed: after a
  warm-up, ``--repeats`` windows of ``--steps`` steps each; images/s is the median over windows
  (min/max kept), for batch 1 / 32 / 128.
* ``vit_b16``: OpenAI ViT-B/16's text tower (width 512, 12 layers, 8 heads, 77 positions,
  projection 512). XLA's compiled temporary bytes for batch 1 / 32 / 128 for every variant; timed
  (``--vit-steps`` per window, 0 = not timed): every row on an accelerator; on a CPU the rows it
  can run, CoOp at every batch (one text pass per step) and CoCoOp at batch 1 (CoCoOp at batch
  32 / 128 runs 32 / 128 text passes per step, seconds to a minute each on a CPU).

The prompts are padded to the longest prompt, not to the 77 positions (``jaxcomp.nn.prompts``:
the causal mask makes the two equal); here that is 8 tokens (SOS, 4 context tokens, the class
name, ".", EOS), so the text passes are ~10x cheaper than the reference's full-length ones.
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

from jaxcomp.models.clip import CLIP, CLIPConfig
from jaxcomp.nn.prompts import CoCoOp, CoOp, PromptParam

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOCAB = {w: i + 1 for i, w in enumerate((*DIGITS, "."))}
SOS, EOS = len(VOCAB) + 1, len(VOCAB) + 2  # EOS is the largest id: CLIP pools there

TOWERS = {
    "demo": dict(text_width=64, text_layers=2, text_heads=4, text_mlp_dim=256,
                 context_length=16, projection_dim=64),
    "vit_b16": dict(text_width=512, text_layers=12, text_heads=8, text_mlp_dim=2048,
                    context_length=77, projection_dim=512),
}  # fmt: skip
BATCHES = (1, 32, 128)


def tokenize(text: str) -> list[int]:
    return [SOS, *(VOCAB[w] for w in text.replace(".", " .").split()), EOS]


def make_clip(tower: str) -> CLIP:
    """A random CLIP with ``tower``'s text transformer (the image tower is tiny: it is frozen and
    not part of the step, which starts from precomputed image features)."""
    cfg = CLIPConfig(
        image_size=32, patch_size=16, num_channels=3, vision_width=32, vision_layers=1,
        vision_heads=2, vision_mlp_dim=64, vocab_size=49408, **TOWERS[tower],
    )  # fmt: skip
    return CLIP(cfg, rngs=nnx.Rngs(0))


def learner(clip: CLIP, kind: str, batch: int):
    common = dict(tokenize=tokenize, n_ctx=4, rngs=nnx.Rngs(1))
    if kind == "coop":
        return CoOp(clip, DIGITS, **common)
    if kind == "cocoop_chunk4_remat":
        return CoCoOp(clip, DIGITS, chunk_size=min(4, batch), **common)
    if kind == "cocoop_unchunked":
        return CoCoOp(clip, DIGITS, chunk_size=batch, remat=False, **common)
    raise ValueError(f"unknown learner {kind!r}")


def make_step(model):
    opt = nnx.Optimizer(model, optax.sgd(1e-3, momentum=0.9), wrt=PromptParam)

    @nnx.jit
    def step(model, opt, f, y):
        def loss_fn(m):
            logits = m.logits_from_features(f)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, PromptParam))(model)
        opt.update(model, grads)
        return loss

    return step, opt


def inputs(clip: CLIP, batch: int):
    rng = np.random.default_rng(0)
    dim = clip.config.projection_dim
    f = jnp.asarray(rng.normal(size=(batch, dim)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, len(DIGITS), size=batch).astype(np.int32))
    return f, y


def temp_bytes(model, step, opt, f, y) -> int:
    graphdef, state = nnx.split((model, opt))
    pure = lambda s, f, y: step(*nnx.merge(graphdef, s), f, y)
    return int(jax.jit(pure).lower(state, f, y).compile().memory_analysis().temp_size_in_bytes)


def timed(model, step, opt, f, y, steps: int, repeats: int) -> dict:
    jax.block_until_ready(step(model, opt, f, y))  # compile + warm up
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step(model, opt, f, y)
        jax.block_until_ready(loss)
        windows.append(len(f) * steps / (time.perf_counter() - t0))
    return {
        "images_per_s": float(np.median(windows)),
        "images_per_s_windows": windows,
        "steps_per_window": steps,
        "windows": repeats,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="steps per timed window (demo tower)")
    ap.add_argument("--repeats", type=int, default=5, help="timed windows per row")
    ap.add_argument(
        "--vit-steps",
        type=int,
        default=0,
        help="ViT-B/16 tower: steps per timed window (CPU: CoOp and CoCoOp batch 1; "
        "accelerator: every row); 0 = not timed",
    )
    ap.add_argument("--out", default="benchmarks/results/cocoop.json")
    a = ap.parse_args()
    load_before = os.getloadavg()
    # on a GPU/TPU every ViT-B/16 row is timed; on a CPU only the rows it can run in minutes
    on_accelerator = jax.default_backend() != "cpu"
    rows = []
    for tower in ("demo", "vit_b16"):
        clip = make_clip(tower)
        for kind in ("cocoop_chunk4_remat", "cocoop_unchunked", "coop"):
            for batch in BATCHES:
                model = learner(clip, kind, batch)
                step, opt = make_step(model)
                f, y = inputs(clip, batch)
                row = {"tower": tower, "learner": kind, "batch_size": batch}
                row["temp_bytes"] = temp_bytes(model, step, opt, f, y)
                if tower == "demo":
                    row.update(timed(model, step, opt, f, y, a.steps, a.repeats))
                elif a.vit_steps and (kind == "coop" or batch == 1 or on_accelerator):
                    row.update(timed(model, step, opt, f, y, a.vit_steps, a.repeats))
                print(row, flush=True)
                rows.append(row)
    ref = {(r["tower"], r["learner"], r["batch_size"]): r for r in rows}
    for r in rows:
        b1 = ref[(r["tower"], "cocoop_chunk4_remat", 1)]
        if "images_per_s" in r and "images_per_s" in b1:
            r["speed_vs_cocoop_batch1"] = r["images_per_s"] / b1["images_per_s"]
        un = ref[(r["tower"], "cocoop_unchunked", r["batch_size"])]
        if r["learner"] == "cocoop_chunk4_remat":
            r["temp_bytes_vs_unchunked"] = r["temp_bytes"] / un["temp_bytes"]
    result = {
        "benchmark": "CoCoOp/CoOp prompt-training step from precomputed image features "
        "(frozen CLIP): images/s and XLA temporary bytes vs batch size",
        "towers": TOWERS,
        "classes": len(DIGITS),
        "n_ctx": 4,
        "statistic": f"median images/s over {a.repeats} windows of {a.steps} (demo tower) / "
        f"{a.vit_steps} (ViT-B/16 tower) steps after a warm-up step; temp_bytes = "
        "compiled.memory_analysis().temp_size_in_bytes",
        "prompt_tokens": len(tokenize("zero.")) + 4,  # SOS, 4 context, name, ".", EOS
        "rows": rows,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
