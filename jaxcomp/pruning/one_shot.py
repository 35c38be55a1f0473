"""One-shot pruning and BatchNorm recalibration (CrAM Sec. 4, "BN tuning")."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcomp.pruning.masks import apply_mask, nm_mask, topk_mask
from jaxcomp.pruning.select import Where


def one_shot(
    params: Any,
    sparsity: float | None = None,
    *,
    method: Literal["global", "layer", "nm"] = "global",
    n: int = 2,
    m: int = 4,
    where: Where | str | None = None,
) -> tuple[Any, Any]:
    """Prune ``params`` once by magnitude; returns ``(pruned_params, mask)``.

    ``method="global"``/``"layer"``: top-k at ``sparsity`` over all selected leaves / per leaf.
    ``method="nm"``: ``n:m`` semi-structured (``sparsity`` must be None or ``1 - n/m``).
    """
    if method in ("global", "layer"):
        if sparsity is None:
            raise ValueError(f"method={method!r} needs a sparsity, got None")
        mask = topk_mask(params, sparsity, scope=method, where=where)
    elif method == "nm":
        if sparsity is not None and abs(float(sparsity) - (1 - n / m)) > 1e-9:
            raise ValueError(
                f"method='nm' with n={n}, m={m} means sparsity {1 - n / m}, got {sparsity}"
            )
        mask = nm_mask(params, n, m, where=where)
    else:
        raise ValueError(f"method must be 'global', 'layer' or 'nm', got {method!r}")
    return apply_mask(params, mask), mask


def _batchnorms(model: nnx.Module) -> list[nnx.BatchNorm]:
    return [mod for _, mod in nnx.iter_modules(model) if isinstance(mod, nnx.BatchNorm)]


def _apply(model: nnx.Module, x: Any) -> Any:
    return model(x)


@functools.lru_cache(maxsize=64)
def _batch_stats_fn(graphdef: nnx.GraphDef, call: Any):
    """Jitted ``(stats, rest, batch) -> BatchNorm statistics after one training-mode pass``,
    cached per (graphdef, call) so that a sweep over pruning levels compiles it once. The
    BatchNorms' momentum is part of ``graphdef``."""

    @jax.jit
    def batch_stats(stats, rest, batch):
        mdl = nnx.merge(graphdef, stats, rest)
        call(mdl, batch)
        return nnx.state(mdl, nnx.BatchStat)

    return batch_stats


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def calibration_batches(
    images: Any,
    *,
    calibration_size: int = 1000,
    batch_size: int = 128,
    iterations: int = 100,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """The batches CrAM's BatchNorm tuning sees (``demo_get_one_shot_pruning_results.py``).

    A random subset of ``calibration_size`` rows of ``images`` (one seeded permutation), then
    ``iterations`` batches of ``batch_size`` from a loader over that subset that reshuffles every
    epoch and keeps the short last batch (PyTorch's ``DataLoader(shuffle=True)``): with the
    defaults, 12.5 epochs of 7 batches of 128 and one of 104.
    """
    n = len(images)
    calibration_size = _positive_int(calibration_size, "calibration_size")
    batch_size = _positive_int(batch_size, "batch_size")
    iterations = _positive_int(iterations, "iterations")
    if calibration_size > n:
        raise ValueError(f"calibration_size must be <= len(images) = {n}, got {calibration_size}")
    rng = np.random.default_rng(seed)
    subset = rng.permutation(n)[:calibration_size]
    done = 0
    while True:
        order = subset[rng.permutation(calibration_size)]
        for lo in range(0, calibration_size, batch_size):
            if done == iterations:
                return
            yield images[order[lo : lo + batch_size]]
            done += 1


def recalibrate_batch_stats(
    model: nnx.Module,
    data: Any,
    *,
    mode: Literal["ema", "average"] = "ema",
    iterations: int = 100,
    batch_size: int = 128,
    calibration_size: int = 1000,
    momentum: float = 0.1,
    augment: Callable[[Any, np.random.Generator], Any] | None = None,
    seed: int = 0,
    call: Callable[[nnx.Module, Any], Any] | None = None,
) -> nnx.Module:
    """Reset every BatchNorm's running statistics and re-estimate them (CrAM's "BN tuning").

    After pruning, the running mean/variance no longer match the pruned network's activations.
    CrAM (Sec. 4 and ``utils/eval_utils.py:fix_bn_stats``) resets them (mean 0, variance 1) and
    runs ``iterations = 100`` training-mode forward passes with momentum 0.1, i.e. after every
    batch ``r <- (1 - momentum) * r + momentum * batch_stat``, over shuffled batches of 128 from
    1000 random training images:

    * ``data`` an array of images: the batches are ``calibration_batches(data,
      calibration_size=, batch_size=, iterations=, seed=)``;
    * ``data`` any other iterable: its batches as given (model inputs, or anything
      ``call(model, batch)`` applies the model to), at most ``iterations`` of them.

    ``augment(batch, rng)`` (numpy ``Generator`` seeded by ``seed``), when given, transforms each
    batch first (CrAM's calibration loader uses the training augmentation).
    ``mode="average"``: instead of the EMA, the running statistics become the plain average of the
    per-batch statistics (PyTorch's ``momentum=None`` cumulative average), independent of the
    reset values and of ``momentum``. Batch variances are flax's (biased); PyTorch stores the
    unbiased ones, larger by ``n / (n - 1)`` for ``n`` values per channel (< 1.0002 for 128
    images of 8 x 8). The model is updated in place (NNX semantics) and returned, in eval mode
    with its BatchNorms' momenta unchanged.
    """
    if mode not in ("ema", "average"):
        raise ValueError(f"mode must be 'ema' or 'average', got {mode!r}")
    if not (0.0 < float(momentum) <= 1.0):
        raise ValueError(f"momentum must be in (0, 1], got {momentum}")
    iterations = _positive_int(iterations, "iterations")
    bns = _batchnorms(model)
    if not bns:
        raise ValueError(f"recalibrate_batch_stats: {type(model).__name__} has no nnx.BatchNorm")
    if hasattr(data, "shape") and hasattr(data, "__getitem__"):
        data = calibration_batches(
            data,
            calibration_size=calibration_size,
            batch_size=batch_size,
            iterations=iterations,
            seed=seed,
        )
    call = call or _apply
    saved = [(bn.momentum, bn.use_running_average) for bn in bns]
    for bn in bns:
        # flax's momentum is the weight of the old value: 0 makes the running stats this batch's
        bn.momentum = 1.0 - float(momentum) if mode == "ema" else 0.0
        bn.use_running_average = False
        bn.mean.value = jnp.zeros_like(bn.mean.value)
        bn.var.value = jnp.ones_like(bn.var.value)
    try:
        graphdef, stats, rest = nnx.split(model, nnx.BatchStat, ...)
        batch_stats = _batch_stats_fn(graphdef, call)
        aug_rng = np.random.default_rng(seed)
        avg, count = None, 0
        for batch in itertools.islice(data, iterations):
            if augment is not None:
                batch = augment(batch, aug_rng)
            new = batch_stats(stats, rest, batch)
            count += 1
            if mode == "ema":
                stats = new
            elif avg is None:
                avg = new
            else:
                avg = jax.tree.map(lambda a, b, c=count: a + (b - a) / c, avg, new)
        if count == 0:
            raise ValueError("recalibrate_batch_stats: data yields no batch")
        nnx.update(model, jax.tree.map(jnp.asarray, stats if mode == "ema" else avg))
    finally:
        for bn, (mom, ura) in zip(bns, saved):
            bn.momentum = mom
            bn.use_running_average = ura
    model.eval()
    return model
