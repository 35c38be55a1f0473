"""EFCP experiment (Modoranu et al., "Error Feedback Can Accurately Compress Preconditioners").

Trains the same model from the same initialisation with SGD, Adam, dense M-FAC, sparse M-FAC
(top-k with error feedback), low-rank M-FAC and dense GGT under the same budget, and reports
final test accuracy, the training-loss curves (PNG), optimizer-state bytes and step time.

    python -m experiments.efcp --config=experiments/configs/efcp.py --workdir=runs/efcp
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from jaxcomp.data import DataStream, batches, load_classification
from jaxcomp.models import build_classifier
from jaxcomp.optim import ggt, lowrank, mfac, state_nbytes, topk
from jaxcomp.pruning import recalibrate_batch_stats
from jaxcomp.train import (
    classification_loss,
    evaluate,
    make_train_step,
    plot_lines,
    split_model,
)

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/efcp.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/efcp", "output directory")

LABELS = {
    "sgd": "SGD (momentum)",
    "adam": "Adam",
    "mfac": "M-FAC dense",
    "mfac_topk": "M-FAC top-k (EF)",
    "mfac_lowrank": "M-FAC low-rank (EF)",
    "ggt": "GGT dense",
    "ggt_topk": "GGT top-k (EF)",
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
            "mfac_lowrank": lowrank(cfg.rank),
        }[name]
        return mfac(
            cfg.mfac_lr,
            num_grads=cfg.num_grads,
            damping=cfg.damping,
            momentum=cfg.mfac_momentum,
            weight_decay=cfg.weight_decay,
            compressor=compressor,
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
    recalibrate_batch_stats(model, images)
    _, eval_gd, params_bn, state_bn = split_model(model)
    return raw, evaluate(eval_gd, params_bn, state_bn, test_batches())["accuracy"]


def train_one(name: str, cfg, train, test) -> dict:
    """Train from the config's seed with optimizer `name`; per-step losses, timings, accuracy."""
    images, labels = train
    model = build_model(cfg, images)
    graphdef, eval_graphdef, params, model_state = split_model(model)
    tx = make_tx(name, cfg)
    opt_state = tx.init(params)
    opt_bytes = state_nbytes(opt_state)
    step = make_train_step(classification_loss(graphdef), tx)
    stream = DataStream(images, labels, cfg.batch_size, seed=cfg.seed)
    per_epoch = stream.steps_per_epoch
    losses, times, test_acc, test_acc_bn = [], [], [], []
    for s in range(cfg.epochs * per_epoch):
        batch = jax.tree.map(jnp.asarray, stream.batch(s))
        start = time.perf_counter()
        params, model_state, opt_state, metrics = step(params, model_state, opt_state, batch)
        loss = float(metrics["loss"])  # waits for the step
        times.append(time.perf_counter() - start)
        losses.append(loss)
        if (s + 1) % per_epoch == 0:
            acc, acc_bn = test_accuracy(eval_graphdef, params, model_state, train, test, cfg)
            test_acc.append(acc)
            test_acc_bn.append(acc_bn)
            print(
                f"{name:13s} epoch {(s + 1) // per_epoch}: "
                f"train loss {np.mean(losses[-per_epoch:]):.4f}  test acc {acc:.4f}  "
                f"(BN re-estimated: {acc_bn:.4f})",
                flush=True,
            )
    return {
        "label": LABELS[name],
        "final_test_accuracy": test_acc[-1],
        "final_test_accuracy_bn": test_acc_bn[-1],
        "test_accuracy_per_epoch": test_acc,
        "test_accuracy_bn_per_epoch": test_acc_bn,
        "final_train_loss": float(np.mean(losses[-per_epoch:])),
        "train_loss": losses,
        "optimizer_state_bytes": opt_bytes,
        "step_ms_median": 1e3 * statistics.median(times[1:]),  # first step compiles
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
        rows.append(
            f"| {r['label']} | {100 * r['final_test_accuracy_bn']:.2f}% "
            f"| {100 * r['final_test_accuracy']:.2f}% | {r['final_train_loss']:.4f} "
            f"| {r['optimizer_state_bytes'] / 2**20:.2f} MiB | {ratio} | {r['step_ms_median']:.0f} |"
        )
    return "\n".join(rows)


def run(cfg, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    train, test = load_data(cfg)
    runs = {}
    for name in cfg.optimizers:
        runs[name] = train_one(name, cfg, train, test)
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
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    window = 10
    series = {}
    for r in runs.values():
        smooth = np.convolve(r["train_loss"], np.ones(window) / window, mode="valid")
        series[r["label"]] = (list(range(window, len(r["train_loss"]) + 1)), list(smooth))
    plot_lines(
        os.path.join(workdir, "loss_curve.png"),
        series,
        xlabel="step",
        ylabel=f"training loss ({window}-step moving average)",
        title=f"{cfg.model} on {cfg.dataset}: EFCP vs baselines (m={cfg.num_grads})",
        logy=True,
    )
    return results


def main(argv):
    del argv
    results = run(_CONFIG.value, _WORKDIR.value)
    print(results["table"])


if __name__ == "__main__":
    app.run(main)
