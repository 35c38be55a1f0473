"""Reusable training recipes (explicit arguments, no configs): the optimizers of the papers,
training a classifier with the sharded step, and a one-shot pruning sweep with BatchNorm
recalibration (CrAM Sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcomp.data.pipeline import DataStream, batches
from jaxcomp.optim.cram import cram
from jaxcomp.pruning.one_shot import one_shot, recalibrate_batch_stats
from jaxcomp.pruning.select import nm_where
from jaxcomp.pruning.stats import sparsity_report
from jaxcomp.train.loop import fit
from jaxcomp.train.mesh import make_mesh
from jaxcomp.train.step import (
    classification_loss,
    evaluate,
    make_train_step,
    shard_train_state,
    split_model,
)


def sgd_cosine(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """SGD with momentum, coupled (PyTorch-style) weight decay and linear warm-up + cosine decay:
    the CrAM paper's CIFAR/ImageNet base optimizer."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(warmup_steps, 1), max(total_steps, warmup_steps + 1)
    )
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum)
    )


def make_optimizer(
    name: str,
    base: optax.GradientTransformation,
    *,
    rho: float = 0.1,
    sparsities: Sequence[float] = (0.5, 0.7, 0.9),
    compression: str = "global",
    seed: int = 0,
    where=None,
) -> optax.GradientTransformation:
    """``"sgd"`` (the base itself), ``"cram"``, ``"cram_plus"``, ``"cram_plus_multi"``
    (CrAM+-Multi: ``plus=True, sparse_grad=True`` over all ``sparsities``) or ``"cram_plus_nm"``
    (the same with ``compression="nm"``: 2:4 or 4:8 drawn each step; ``sparsities`` unused).
    ``where`` selects the compressed leaves (default: ``cram``'s)."""
    # name -> (sparsities, plus, sparse_grad, compression) of the cram() call
    variants = {
        "cram": (sparsities[:1], False, False, compression),
        "cram_plus": (sparsities[:1], True, False, compression),
        "cram_plus_multi": (sparsities, True, True, compression),
        "cram_plus_nm": (sparsities, True, True, "nm"),
    }
    if name == "sgd":
        return base
    if name in variants:
        levels, plus, sparse_grad, comp = variants[name]
        return cram(
            base,
            rho=rho,
            sparsities=levels,
            plus=plus,
            sparse_grad=sparse_grad,
            compression=comp,
            seed=seed,
            where=where,
        )
    raise ValueError(
        f"unknown optimizer {name!r}; known: sgd, cram, cram_plus, cram_plus_multi, cram_plus_nm"
    )


def train_classifier(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    num_steps: int,
    seed: int = 0,
    augment: str | None = None,
    workdir: str | None = None,
    ckpt_every: int = 0,
    log_every: int = 50,
    progress: bool = True,
    desc: str = "train",
    config: Any = None,
    force_resume: bool = False,
    nan_policy: str | None = None,
) -> tuple[nnx.GraphDef, nnx.GraphDef, Any, Any, list[dict[str, float]]]:
    """Data-parallel training over all devices of all processes (each process loads its share of
    every batch) with ``fit`` (``config`` is the run's identity for resume). Returns
    ``(graphdef, eval_graphdef, params, model_state, history)``.

    ``model`` is updated in place (NNX semantics) with the trained parameters and model state
    (BatchNorm statistics, RNG counters) and left in training mode. The step donates its inputs,
    so it trains on copies of the model's arrays, and the model gets copies of the trained ones:
    donating the returned trees later (e.g. to a further ``make_train_step``) never deletes the
    model's arrays, and vice versa."""
    mesh = make_mesh()
    graphdef, eval_graphdef, params, state = split_model(model)
    # split_model's trees share buffers with `model`; the step donates its inputs, so copy them
    params, state = jax.tree.map(jnp.copy, (params, state))
    params, state, opt_state, shardings = shard_train_state(mesh, params, state, tx.init(params))
    step = make_train_step(
        classification_loss(graphdef), tx, shardings, nan_guard=nan_policy is not None
    )
    stream = DataStream(
        images,
        labels,
        batch_size,
        seed=seed,
        augment=augment,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    params, state, _, history = fit(
        step,
        params,
        state,
        opt_state,
        stream,
        num_steps,
        mesh=mesh,
        workdir=workdir,
        ckpt_every=ckpt_every,
        log_every=log_every,
        progress=progress,
        desc=desc,
        config=config,
        force_resume=force_resume,
        nan_policy=nan_policy,
    )
    nnx.update(model, *jax.tree.map(jnp.copy, (params, state)))
    return graphdef, eval_graphdef, params, state, history


def _has_batchnorm(graphdef: nnx.GraphDef, params: Any, state: Any) -> bool:
    model = nnx.merge(graphdef, params, state)
    return any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(model))


def _call_on_float(model: nnx.Module, images: jax.Array) -> jax.Array:
    """The model on images scaled as ``DataStream`` scales them (uint8 -> [0, 1])."""
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) * (1.0 / 255.0)
    return model(images)


def one_shot_sweep(
    graphdef: nnx.GraphDef,
    eval_graphdef: nnx.GraphDef,
    params: Any,
    model_state: Any,
    test: tuple[np.ndarray, np.ndarray],
    calibration: tuple[np.ndarray, np.ndarray],
    *,
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
    nm: Sequence[tuple[int, int]] = ((2, 4),),
    method: str = "global",
    calibration_images: int = 1000,
    batch_size: int = 128,
    bn_mode: str = "ema",
    bn_iterations: int = 100,
    bn_augment: Any = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Dense accuracy, then one-shot magnitude pruning at every level (``method`` global/layer)
    and every N:M pattern (layers whose input dimension ``m`` does not divide stay dense), each
    followed, when the model has BatchNorm, by CrAM's BatchNorm tuning
    (``recalibrate_batch_stats``: ``bn_iterations`` shuffled batches of ``batch_size`` from
    ``calibration_images`` random training images, ``bn_mode`` "ema" with momentum 0.1 or
    "average", ``bn_augment(batch, rng)`` on each batch). Rows:
    ``{"compression", "sparsity", "accuracy", "loss"}``."""
    x_cal, _ = calibration
    has_bn = _has_batchnorm(graphdef, params, model_state)

    def run(name, pruned):
        state = model_state
        if has_bn:
            model = nnx.merge(graphdef, pruned, model_state)
            recalibrate_batch_stats(
                model,
                x_cal,
                mode=bn_mode,
                iterations=bn_iterations,
                batch_size=batch_size,
                calibration_size=min(calibration_images, len(x_cal)),
                augment=bn_augment,
                seed=seed,
                call=_call_on_float,
            )
            state = nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
        res = evaluate(eval_graphdef, pruned, state, batches(*test, 500, shuffle=False))
        return {"compression": name, "sparsity": sparsity_report(pruned)["global"], **res}

    dense = evaluate(eval_graphdef, params, model_state, batches(*test, 500, shuffle=False))
    rows = [{"compression": "dense", "sparsity": 0.0, **dense}]
    for s in sparsities:
        rows.append(run(f"{method} {s:.0%}", one_shot(params, s, method=method)[0]))
    for n, m in nm:
        pruned = one_shot(params, method="nm", n=n, m=m, where=nm_where(m))[0]
        rows.append(run(f"{n}:{m}", pruned))
    return rows


def rows_to_markdown(columns: dict[str, list[dict[str, Any]]]) -> str:
    """A markdown table with one accuracy column per run (``name -> one_shot_sweep rows``)."""
    names = list(columns)
    first = columns[names[0]]
    lines = ["| compression | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, row in enumerate(first):
        accs = " | ".join(f"{columns[n][i]['accuracy']:.3f}" for n in names)
        lines.append(f"| {row['compression']} | {accs} |")
    return "\n".join(lines)
