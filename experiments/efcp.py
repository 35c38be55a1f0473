"""EFCP experiment (Modoranu et al., "Error Feedback Can Accurately Compress Preconditioners").

Trains the same model from the same initialisation with SGD, Adam, dense M-FAC, sparse M-FAC
(top-k with error feedback), low-rank M-FAC and dense GGT under the same budget, and reports
final test accuracy, the training-loss curves (PNG), optimizer-state bytes and step time.

    python -m experiments.efcp --config=experiments/configs/efcp.py --workdir=runs/efcp

Each optimizer is one stage (``workdir/<optimizer>``) trained by ``jaxcomp.train.fit`` one epoch
at a time, with a checkpoint and a test evaluation (``evals.json``) after every epoch, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
import optax
from etils import epath
from flax import nnx

from experiments._harness import (
    announce,
    check_config,
    cli,
    each,
    fit_stage,
    read_json,
    workdir_path,
    write_json_atomic,
    write_line_plot,
    write_text_atomic,
)
from jaxcomp.data import DataStream, batches, load_classification
from jaxcomp.models import SmallCNN, build_classifier
from jaxcomp.optim import ggt, lowrank, mfac, state_nbytes, topk
from jaxcomp.pruning import recalibrate_batch_stats
from jaxcomp.train import (
    classification_loss,
    evaluate,
    make_train_step,
    split_model,
)

DEFAULT_CONFIG = "experiments/configs/efcp.py"
DEFAULT_WORKDIR = "runs/efcp"

LABELS = {
    "sgd": "SGD (momentum)",
    "adam": "Adam",
    "mfac": "M-FAC dense",
    "mfac_topk": "M-FAC top-k (EF)",
    "mfac_topk_noef": "M-FAC top-k (no EF)",
    "mfac_lowrank": "M-FAC low-rank (EF)",
    "ggt": "GGT dense",
    "ggt_topk": "GGT top-k (EF)",
}

# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "dataset": ("mnist5k", "digits", "fashion_mnist"),  # the bundled sets (no data_dir here)
    "model": ("smallcnn", "resnet20", "resnet18", "resnet50"),
    "num_classes": "int>=1",
    "epochs": "int>=1",
    "batch_size": "int>=1",
    "seed": "int>=0",
    "bn_images": "int>=1",
    "optimizers": each(tuple(LABELS)),
    "sgd_lr": ">0",
    "sgd_momentum": "[0,1)",
    "adam_lr": ">0",
    "weight_decay": ">=0",
    "num_grads": "int>=1",
    "mfac_lr": ">0",
    "damping": ">0",
    "mfac_momentum": "[0,1)",
    "topk_fraction": "(0,1]",
    "rank": "int>=1",
    "ggt_lr": ">0",
    "ggt_eps": ">0",
    "ggt_num_grads": "int>=1",
    "ggt_beta1": "[0,1)",
}


def make_tx(name: str, cfg) -> optax.GradientTransformation:
    """The optimizer called `name`, with the config's hyperparameters."""
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.sgd(cfg.sgd_lr, momentum=cfg.sgd_momentum),
        )
    if name == "adam":
        return optax.adamw(cfg.adam_lr, weight_decay=cfg.weight_decay)
    if name.startswith("mfac"):
        compressor = {
            "mfac": None,
            "mfac_topk": topk(cfg.topk_fraction),
            "mfac_topk_noef": topk(cfg.topk_fraction),
            "mfac_lowrank": lowrank(cfg.rank),
        }[name]
        return mfac(
            cfg.mfac_lr,
            num_grads=cfg.num_grads,
            damping=cfg.damping,
            momentum=cfg.mfac_momentum,
            weight_decay=cfg.weight_decay,
            compressor=compressor,
            error_feedback=not name.endswith("_noef"),
        )
    if name.startswith("ggt"):
        compressor = {"ggt": None, "ggt_topk": topk(cfg.topk_fraction)}[name]
        return ggt(
            cfg.ggt_lr,
            num_grads=cfg.ggt_num_grads,
            eps=cfg.ggt_eps,
            beta1=cfg.ggt_beta1,
            compressor=compressor,
        )
    raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(LABELS)}")


def load_data(cfg):
    return (
        load_classification(cfg.dataset, "train", seed=cfg.seed),
        load_classification(cfg.dataset, "test", seed=cfg.seed),
    )


def build_model(cfg, images: np.ndarray) -> nnx.Module:
    if cfg.model == "smallcnn" and "widths" in cfg:  # a SmallCNN of the config's size
        return SmallCNN(
            cfg.num_classes,
            in_channels=images.shape[-1],
            widths=tuple(cfg.widths),
            hidden=cfg.hidden,
            input_hw=images.shape[1:3],
            rngs=nnx.Rngs(cfg.seed),
        )
    return build_classifier(
        cfg.model,
        cfg.num_classes,
        in_channels=images.shape[-1],
        input_hw=images.shape[1:3],
        rngs=nnx.Rngs(cfg.seed),
    )


def test_accuracy(eval_graphdef, params, model_state, train, test, cfg) -> tuple[float, float]:
    """Test accuracy with the running BatchNorm statistics, and after re-estimating them.

    With few steps and large preconditioned updates, BatchNorm's running averages (momentum
    0.99) lag the weights, so the raw number is noisy; re-estimating the statistics on
    `cfg.bn_images` training images (CrAM's "BN reset") measures the weights themselves.
    """
    test_batches = lambda: batches(*test, 500, shuffle=False)
    raw = evaluate(eval_graphdef, params, model_state, test_batches())["accuracy"]
    model = nnx.merge(eval_graphdef, params, model_state)
    calib = batches(*train, cfg.batch_size, seed=cfg.seed, epoch=10_000)
    images = (b["image"] for _, b in zip(range(cfg.bn_images // cfg.batch_size), calib))
    recalibrate_batch_stats(model, images, mode="average")
    _, eval_gd, params_bn, state_bn = split_model(model)
    return raw, evaluate(eval_gd, params_bn, state_bn, test_batches())["accuracy"]


def timed(step_fn, times: list[float]):
    """``step_fn`` that waits for its result and appends its wall time to ``times``."""

    def step(*args):
        start = time.perf_counter()
        out = jax.block_until_ready(step_fn(*args))
        times.append(time.perf_counter() - start)
        return out

    return step


def train_one(
    name: str, cfg, train, test, workdir: epath.Path, tx: optax.GradientTransformation | None = None
) -> dict:
    """Train from the config's seed with optimizer `name` in ``workdir/name``, one ``fit`` call
    per epoch followed by a test evaluation; per-step losses, timings, accuracy."""
    images, labels = train
    announce(f"{name}: building {cfg.model} and the optimizer state")
    model = build_model(cfg, images)
    graphdef, eval_graphdef, params, model_state = split_model(model)
    tx = make_tx(name, cfg) if tx is None else tx
    opt_state = tx.init(params)
    opt_bytes = state_nbytes(opt_state)
    times: list[float] = []
    step = timed(make_train_step(classification_loss(graphdef), tx), times)
    stream = DataStream(images, labels, cfg.batch_size, seed=cfg.seed)
    per_epoch = stream.steps_per_epoch
    evals_file = workdir_path(workdir / name) / "evals.json"
    config = json.loads(json.dumps(cfg.to_dict()))
    saved = read_json(evals_file) or {"config": config, "epochs": []}
    if saved["config"] != config:
        changed = sorted(k for k in config.keys() | saved["config"].keys()
                         if config.get(k) != saved["config"].get(k))  # fmt: skip
        raise ValueError(
            f"{evals_file} was written with a different config (fields {changed}); "
            "use another workdir"
        )
    evals = saved["epochs"]  # one row per finished epoch (resume skips them)
    history = []
    for epoch in range(len(evals), cfg.epochs):
        times.clear()
        params, model_state, opt_state, history = fit_stage(
            step,
            params,
            model_state,
            opt_state,
            stream,
            (epoch + 1) * per_epoch,
            workdir=workdir,
            stage=name,
            ckpt_every=per_epoch,
            log_every=1,
            desc=f"{name} epoch {epoch + 1}/{cfg.epochs}",
            quiet=epoch > len(evals),
            config=cfg,
        )
        announce(f"{name}: evaluating epoch {epoch + 1} (and after re-estimating BatchNorm)")
        acc, acc_bn = test_accuracy(eval_graphdef, params, model_state, train, test, cfg)
        losses = [h["loss"] for h in history]
        evals.append(
            {"epoch": epoch + 1, "accuracy": acc, "accuracy_bn": acc_bn, "step_seconds": times[:]}
        )
        write_json_atomic(evals_file, {"config": config, "epochs": evals})
        print(
            f"{name:13s} epoch {epoch + 1}: "
            f"train loss {np.mean(losses[-per_epoch:]):.4f}  test acc {acc:.4f}  "
            f"(BN re-estimated: {acc_bn:.4f})",
            flush=True,
        )
    if not history:  # everything was done by an earlier run: read its history back
        *_, history = fit_stage(
            step, params, model_state, opt_state, stream, cfg.epochs * per_epoch,
            workdir=workdir, stage=name, ckpt_every=per_epoch, log_every=1, quiet=True,
            progress=False, config=cfg,
        )  # fmt: skip
    losses = [h["loss"] for h in history]
    step_seconds = [t for e in evals for t in e["step_seconds"][1:]]  # first: compile/restore
    return {
        "label": LABELS[name],
        "final_test_accuracy": evals[-1]["accuracy"],
        "final_test_accuracy_bn": evals[-1]["accuracy_bn"],
        "test_accuracy_per_epoch": [e["accuracy"] for e in evals],
        "test_accuracy_bn_per_epoch": [e["accuracy_bn"] for e in evals],
        "final_train_loss": float(np.mean(losses[-per_epoch:])),
        "train_loss": losses,
        "optimizer_state_bytes": opt_bytes,
        "step_ms_median": 1e3 * statistics.median(step_seconds) if step_seconds else None,
        "finite": bool(np.all(np.isfinite(losses))),
    }


def to_markdown(runs: dict) -> str:
    rows = [
        "| optimizer | test acc. (BN re-estimated) | test acc. (running BN) | final train loss "
        "| optimizer state | state vs dense M-FAC | step time (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    dense = runs.get("mfac", {}).get("optimizer_state_bytes")
    for r in runs.values():
        ratio = f"{dense / r['optimizer_state_bytes']:.1f}x smaller" if dense else "-"
        if r["optimizer_state_bytes"] == dense:
            ratio = "1x"
        step_ms = "-" if r["step_ms_median"] is None else f"{r['step_ms_median']:.0f}"
        rows.append(
            f"| {r['label']} | {100 * r['final_test_accuracy_bn']:.2f}% "
            f"| {100 * r['final_test_accuracy']:.2f}% | {r['final_train_loss']:.4f} "
            f"| {r['optimizer_state_bytes'] / 2**20:.2f} MiB | {ratio} | {step_ms} |"
        )
    return "\n".join(rows)


def run(cfg, workdir: str) -> dict:
    """Train every optimizer of ``cfg.optimizers``; results in ``workdir`` (results.json,
    results.md, loss_curve.png) and one stage directory per optimizer."""
    check_config(cfg, CONFIG_RULES)
    if cfg.bn_images < cfg.batch_size:
        raise ValueError(
            f"config.bn_images must be >= config.batch_size ({cfg.batch_size}) to re-estimate "
            f"BatchNorm on at least one batch, got {cfg.bn_images}"
        )
    # Every optimizer first: a bad hyperparameter fails before any data or training.
    txs = {name: make_tx(name, cfg) for name in cfg.optimizers}
    workdir = workdir_path(workdir)
    announce(f"loading {cfg.dataset}")
    train, test = load_data(cfg)
    runs = {}
    for name, tx in txs.items():
        runs[name] = train_one(name, cfg, train, test, workdir, tx)
    table = to_markdown(runs)
    load = os.getloadavg()
    results = {
        "config": cfg.to_dict(),
        "num_params": None,
        "machine": f"{os.cpu_count()}-core CPU shared with other processes (load {load[0]:.1f})",
        "runs": runs,
        "table": table,
    }
    model = build_model(cfg, train[0])
    results["num_params"] = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    write_json_atomic(workdir / "results.json", results)
    write_text_atomic(workdir / "results.md", table + "\n")
    window = min(10, min(len(r["train_loss"]) for r in runs.values()))
    series = {}
    for r in runs.values():
        smooth = np.convolve(r["train_loss"], np.ones(window) / window, mode="valid")
        series[r["label"]] = (list(range(window, len(r["train_loss"]) + 1)), list(smooth))
    write_line_plot(
        workdir / "loss_curve.png",
        series,
        xlabel="step",
        ylabel=f"training loss ({window}-step moving average)",
        title=f"{cfg.model} on {cfg.dataset}: EFCP vs baselines (m={cfg.num_grads})",
        logy=True,
    )
    print(table)
    return results


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
