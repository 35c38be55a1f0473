"""Does an error-feedback compressed window precondition like the dense one? (EFCP's claim)

Modoranu et al. claim that M-FAC with a top-k or low-rank window plus error feedback matches
dense M-FAC, and that without error feedback top-k falls behind. This experiment tests that on
the real Fashion-MNIST with a network small enough (a SmallCNN of ~27k parameters) that the
window of m = 128 gradients turns over more than ten times:

1. **tune**: for every optimizer, a learning-rate x damping grid trained from seed 0 on 55000
   training images and scored on the 5000 held-out ones (BatchNorm re-estimated);
2. **seeds**: every optimizer with its tuned values from ``config.seeds`` seeds; seed s gives
   every optimizer the same initialisation and the same batches, so differences to dense M-FAC
   are paired (mean, std and a Student-t 95% CI over seeds), on the 10000 test images, with the
   running BatchNorm statistics and after re-estimating them;
3. **directions**: along one dense M-FAC trajectory (seed 0, tuned values), the compressed
   preconditioners see the same gradient stream with the same damping; per step, the cosine
   between each one's direction and the dense direction, and the error-feedback norm.

    python -m experiments.efcp_fidelity --config=experiments/configs/efcp_fidelity.py \\
        --workdir=runs/efcp_fidelity

Every training run is a ``jaxcomp.train.fit`` stage (``workdir/<phase>/<run>/<optimizer>``) with
a checkpoint per epoch, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from scipy import stats

from experiments import efcp
from experiments._harness import (
    announce,
    check_config,
    cli,
    each,
    read_json,
    workdir_path,
    write_json_atomic,
    write_line_plot,
    write_text_atomic,
)
from jaxcomp.data import batches, load_classification
from jaxcomp.optim import lowrank, scale_by_mfac, topk
from jaxcomp.optim.utils import ravel_f32
from jaxcomp.train import classification_loss, split_model

DEFAULT_CONFIG = "experiments/configs/efcp_fidelity.py"
DEFAULT_WORKDIR = "runs/efcp_fidelity"

OPTIMIZERS = ("adam", "mfac", "mfac_topk", "mfac_topk_noef", "mfac_lowrank")
COMPRESSED = ("mfac_topk", "mfac_topk_noef", "mfac_lowrank")

CONFIG_RULES = {
    "dataset": ("fashion_mnist", "mnist5k", "digits"),
    "model": ("smallcnn",),
    "widths": each("int>=1"),
    "hidden": "int>=1",
    "num_classes": "int>=1",
    "val_size": "int>=1",
    "train_limit": "int>=0",
    "test_limit": "int>=0",
    "epochs": "int>=1",
    "tune_epochs": "int>=1",
    "batch_size": "int>=1",
    "seeds": "int>=1",
    "bn_images": "int>=1",
    "optimizers": each(OPTIMIZERS),
    "weight_decay": ">=0",
    "num_grads": "int>=1",
    "topk_fraction": "(0,1]",
    "rank": "int>=1",
    "adam_lr_grid": each(">0"),
    "mfac_lr_grid": each(">0"),
    "damping_grid": each(">0"),
    "trace_every": "int>=1",
}


def split_data(cfg):
    """``(train, validation, test)``: the validation images are a fixed random subset of the
    official training split (the same for every seed), disjoint from the training images."""
    images, labels = load_classification(cfg.dataset, "train", seed=0)
    test = load_classification(cfg.dataset, "test", seed=0)
    if cfg.val_size >= len(labels):
        raise ValueError(
            f"config.val_size must be below the {len(labels)} training images, got {cfg.val_size}"
        )
    perm = np.random.default_rng(0).permutation(len(labels))
    val, train = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.train_limit:
        train = train[: cfg.train_limit]
    if cfg.test_limit:
        test = (test[0][: cfg.test_limit], test[1][: cfg.test_limit])
    return (images[train], labels[train]), (images[val], labels[val]), test


def run_config(cfg, name: str, seed: int, lr: float, damping: float, epochs: int):
    """The flat config of one training run (``experiments.efcp.train_one`` reads it)."""
    c = ml_collections.ConfigDict(
        {
            "force_resume": False,
            "dataset": cfg.dataset,
            "model": cfg.model,
            "widths": tuple(cfg.widths),
            "hidden": cfg.hidden,
            "num_classes": cfg.num_classes,
            "epochs": epochs,
            "batch_size": cfg.batch_size,
            "seed": seed,
            "bn_images": cfg.bn_images,
            "optimizers": (name,),
            "weight_decay": cfg.weight_decay,
            "adam_lr": lr,
            "sgd_lr": 0.1,
            "sgd_momentum": 0.9,
            "num_grads": cfg.num_grads,
            "mfac_lr": lr,
            "damping": damping,
            "mfac_momentum": 0.0,
            "topk_fraction": cfg.topk_fraction,
            "rank": cfg.rank,
            "ggt_lr": 0.3,
            "ggt_eps": 1e-5,
            "ggt_num_grads": cfg.num_grads,
            "ggt_beta1": 0.0,
        }
    )
    return c


def grid(cfg, name: str) -> list[tuple[float, float]]:
    """(learning rate, damping) pairs tried for ``name`` (Adam has no damping: 0)."""
    if name == "adam":
        return [(lr, 0.0) for lr in cfg.adam_lr_grid]
    return list(itertools.product(cfg.mfac_lr_grid, cfg.damping_grid))


def train(cfg, name, seed, lr, damping, epochs, data, score_on, workdir: epath.Path) -> dict:
    rc = run_config(cfg, name, seed, lr, damping if damping else 1e-4, epochs)
    out = efcp.train_one(name, rc, data, score_on, workdir, efcp.make_tx(name, rc))
    keep = ("final_test_accuracy", "final_test_accuracy_bn", "final_train_loss", "finite")
    return {k: out[k] for k in keep} | {
        "optimizer_state_bytes": out["optimizer_state_bytes"],
        "step_ms_median": out["step_ms_median"],
    }


def tune(cfg, train_data, val, workdir: epath.Path) -> dict:
    """Every optimizer's grid from seed 0; the best point by BN-re-estimated validation
    accuracy (non-finite runs never win)."""
    out = {}
    for name in cfg.optimizers:
        rows = []
        for lr, damping in grid(cfg, name):
            tag = f"lr{lr:g}_damping{damping:g}"
            announce(f"tune {name}: {tag}")
            r = train(cfg, name, 0, lr, damping, cfg.tune_epochs, train_data, val,
                      workdir / "tune" / tag)  # fmt: skip
            rows.append({"lr": lr, "damping": damping, "val_accuracy_bn": r["final_test_accuracy_bn"],
                         "val_accuracy": r["final_test_accuracy"], "finite": r["finite"]})  # fmt: skip
        best = max(rows, key=lambda r: (r["finite"], r["val_accuracy_bn"]))
        out[name] = {"grid": rows, "best": {"lr": best["lr"], "damping": best["damping"]}}
    return out


def paired(diffs: list[float]) -> dict:
    """Mean, std and Student-t 95% CI of paired differences (in accuracy points)."""
    d = 100 * np.asarray(diffs, np.float64)
    n = len(d)
    std = float(d.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else float("nan")
    mean = float(d.mean())
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def direction_trace(cfg, best: dict, train_data, workdir: epath.Path) -> dict:
    """Cosine between each compressed preconditioner's direction and dense M-FAC's on the same
    gradients, along the dense trajectory (seed 0); error-feedback norms relative to ``|g|``."""
    path = workdir / "directions.json"
    saved = read_json(path)
    identity = {"config": cfg.to_dict(), "best": best}
    if saved is not None and saved.get("identity") == json.loads(json.dumps(identity)):
        return saved["trace"]
    dense_lr, damping = best["mfac"]["best"]["lr"], best["mfac"]["best"]["damping"]
    rc = run_config(cfg, "mfac", 0, dense_lr, damping, cfg.epochs)
    model = efcp.build_model(rc, train_data[0])
    graphdef, _, params, model_state = split_model(model)
    loss_fn = classification_loss(graphdef)
    compressors = {
        "mfac_topk": (topk(cfg.topk_fraction), True),
        "mfac_topk_noef": (topk(cfg.topk_fraction), False),
        "mfac_lowrank": (lowrank(cfg.rank), True),
    }
    txs = {"mfac": scale_by_mfac(num_grads=cfg.num_grads, damping=damping)}
    for name, (comp, ef) in compressors.items():
        txs[name] = scale_by_mfac(
            num_grads=cfg.num_grads, damping=damping, compressor=comp, error_feedback=ef
        )
    states = {k: t.init(params) for k, t in txs.items()}

    @jax.jit
    def step(params, model_state, states, batch):
        (loss, (model_state, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, batch
        )
        new, flat = {}, {}
        for k, t in txs.items():
            u, new[k] = t.update(g, states[k])
            flat[k] = ravel_f32(u)[0]
            if k == "mfac":
                dense_u = u
        gnorm = jnp.linalg.norm(ravel_f32(g)[0])
        row = {"loss": loss, "grad_norm": gnorm}
        for k in compressors:
            cos = jnp.vdot(flat[k], flat["mfac"]) / (
                jnp.linalg.norm(flat[k]) * jnp.linalg.norm(flat["mfac"])
            )
            row[f"cos_{k}"] = cos
            if isinstance(new[k].error, jax.Array):
                row[f"ef_norm_{k}"] = jnp.linalg.norm(new[k].error) / gnorm
        # The dense trajectory: the step `mfac` takes (decoupled weight decay, no momentum).
        params = jax.tree.map(
            lambda p, u: p - dense_lr * u.astype(p.dtype) - cfg.weight_decay * p, params, dense_u
        )
        return params, model_state, new, row

    per_epoch = len(train_data[1]) // cfg.batch_size
    rows = []
    for epoch in range(cfg.epochs):
        for i, b in enumerate(batches(*train_data, cfg.batch_size, seed=0, epoch=epoch)):
            if i >= per_epoch:
                break
            params, model_state, states, row = step(params, model_state, states, b)
            rows.append({k: float(v) for k, v in row.items()})
    m = cfg.num_grads
    trace = {"steps": len(rows), "window": m, "every": cfg.trace_every, "summary": {}}
    for k in compressors:
        after = [r[f"cos_{k}"] for r in rows[m:]] or [r[f"cos_{k}"] for r in rows]
        trace["summary"][k] = {
            "cosine_mean_after_fill": float(np.mean(after)),
            "cosine_min_after_fill": float(np.min(after)),
            "cosine_first_window": float(np.mean([r[f"cos_{k}"] for r in rows[:m]])),
        }
        if f"ef_norm_{k}" in rows[0]:
            ef = [r[f"ef_norm_{k}"] for r in rows]
            trace["summary"][k]["ef_norm_over_grad_final"] = float(np.mean(ef[-m:]))
    trace["series"] = {
        k: [rows[i][k] for i in range(0, len(rows), cfg.trace_every)]
        for k in rows[0]
    }  # fmt: skip
    write_json_atomic(path, {"identity": identity, "trace": trace})
    return trace


def to_markdown(summary: dict, trace: dict) -> str:
    lines = [
        "| optimizer | tuned lr | tuned damping | test acc. % (BN re-est.) | test acc. % (running BN) "
        "| diff. to dense, BN re-est. (95% CI) | cosine to dense direction | state (KiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        diff = s.get("diff_to_dense_bn")
        diff_s = (
            f"{diff['mean']:+.2f} ({diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f})" if diff else "-"
        )
        cos = trace["summary"].get(name, {}).get("cosine_mean_after_fill")
        lines.append(
            f"| {efcp.LABELS[name]} | {s['lr']:g} | {s['damping']:g} "
            f"| {s['acc_bn_mean']:.2f} ± {s['acc_bn_std']:.2f} "
            f"| {s['acc_mean']:.2f} ± {s['acc_std']:.2f} | {diff_s} "
            f"| {'-' if cos is None else f'{cos:.3f}'} | {s['state_bytes'] / 1024:.0f} |"
        )
    return "\n".join(lines)


def run(cfg, workdir: str) -> dict:
    check_config(cfg, CONFIG_RULES)
    if "mfac" not in cfg.optimizers:
        raise ValueError(
            f"config.optimizers must include 'mfac' (the reference), got {cfg.optimizers}"
        )
    if cfg.bn_images < cfg.batch_size:
        raise ValueError(
            f"config.bn_images must be >= config.batch_size ({cfg.batch_size}), got {cfg.bn_images}"
        )
    workdir = workdir_path(workdir)
    announce(f"loading {cfg.dataset}")
    train_data, val, test = split_data(cfg)
    tuned = tune(cfg, train_data, val, workdir)
    per_seed: dict[str, list[dict]] = {name: [] for name in cfg.optimizers}
    for seed in range(cfg.seeds):
        for name in cfg.optimizers:
            b = tuned[name]["best"]
            announce(f"seed {seed}: {name} (lr {b['lr']:g}, damping {b['damping']:g})")
            per_seed[name].append(
                train(
                    cfg,
                    name,
                    seed,
                    b["lr"],
                    b["damping"],
                    cfg.epochs,
                    train_data,
                    test,
                    workdir / "seeds" / f"seed{seed}",
                )  # fmt: skip
            )
    summary = {}
    dense = per_seed["mfac"]
    for name, rows in per_seed.items():
        acc = 100 * np.array([r["final_test_accuracy"] for r in rows])
        acc_bn = 100 * np.array([r["final_test_accuracy_bn"] for r in rows])
        s = {
            **tuned[name]["best"],
            "acc_mean": float(acc.mean()),
            "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "acc_bn_mean": float(acc_bn.mean()),
            "acc_bn_std": float(acc_bn.std(ddof=1)) if len(acc_bn) > 1 else 0.0,
            "acc_per_seed": acc.tolist(),
            "acc_bn_per_seed": acc_bn.tolist(),
            "state_bytes": rows[0]["optimizer_state_bytes"],
            "step_ms_median": rows[0]["step_ms_median"],
            "all_finite": all(r["finite"] for r in rows),
        }
        if name != "mfac":
            s["diff_to_dense"] = paired(
                [r["final_test_accuracy"] - d["final_test_accuracy"] for r, d in zip(rows, dense)]
            )
            s["diff_to_dense_bn"] = paired(
                [
                    r["final_test_accuracy_bn"] - d["final_test_accuracy_bn"]
                    for r, d in zip(rows, dense)
                ]  # fmt: skip
            )
        summary[name] = s
    if "mfac_topk" in per_seed and "mfac_topk_noef" in per_seed:
        summary["mfac_topk_noef"]["diff_to_topk_ef_bn"] = paired(
            [
                a["final_test_accuracy_bn"] - b["final_test_accuracy_bn"]
                for a, b in zip(per_seed["mfac_topk_noef"], per_seed["mfac_topk"])
            ]  # fmt: skip
        )
    announce("directions: compressed vs dense M-FAC on the same gradient stream")
    trace = direction_trace(cfg, tuned, train_data, workdir)
    rc = run_config(cfg, "mfac", 0, 1.0, 1e-4, 1)
    num_params = int(
        sum(
            x.size
            for x in jax.tree.leaves(nnx.state(efcp.build_model(rc, train_data[0]), nnx.Param))
        )
    )
    table = to_markdown(summary, trace)
    load = os.getloadavg()
    results = {
        "config": cfg.to_dict(),
        "num_params": num_params,
        "train_images": len(train_data[1]),
        "val_images": len(val[1]),
        "test_images": len(test[1]),
        "window_turnovers": cfg.epochs * (len(train_data[1]) // cfg.batch_size) / cfg.num_grads,
        "machine": f"{os.cpu_count()}-core CPU (load {load[0]:.1f})",
        "tuning": tuned,
        "summary": summary,
        "directions": {k: v for k, v in trace.items() if k != "series"},
        "table": table,
    }
    write_json_atomic(workdir / "results.json", results)
    write_text_atomic(workdir / "results.md", table + "\n")
    series = trace["series"]
    x = [i * trace["every"] + 1 for i in range(len(series["loss"]))]
    write_line_plot(
        workdir / "cosine.png",
        {efcp.LABELS[k]: (x, series[f"cos_{k}"]) for k in COMPRESSED},
        xlabel="step (dense M-FAC trajectory)",
        ylabel="cosine to the dense M-FAC direction",
        title=f"Same gradients, window m={cfg.num_grads}: compressed vs dense direction",
    )
    ef = {
        efcp.LABELS[k]: (x, series[f"ef_norm_{k}"]) for k in COMPRESSED if f"ef_norm_{k}" in series
    }
    write_line_plot(
        workdir / "error_feedback.png",
        ef,
        xlabel="step (dense M-FAC trajectory)",
        ylabel="|error-feedback buffer| / |gradient|",
        title="Error-feedback norm along the dense trajectory",
        logy=True,
    )
    print(table)
    return results


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
