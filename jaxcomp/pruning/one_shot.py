"""One-shot pruning and BatchNorm recalibration (CrAM Sec. 4, "BN reset")."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp
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
    """Jitted ``(stats, rest, batch) -> batch statistics``, cached per (graphdef, call) so that a
    sweep over pruning levels compiles it once."""

    @jax.jit
    def batch_stats(stats, rest, batch):
        mdl = nnx.merge(graphdef, stats, rest)
        call(mdl, batch)
        return nnx.state(mdl, nnx.BatchStat)

    return batch_stats


def recalibrate_batch_stats(
    model: nnx.Module, batches: Iterable[Any], *, call: Any = None
) -> nnx.Module:
    """Reset every BatchNorm's running statistics and re-estimate them from ``batches``.

    After pruning, the running mean/variance no longer match the pruned network's activations.
    Following CrAM (Sec. 4, "BN reset", ~1000 training images in batches of 128), each batch is
    run in training mode and the running statistics become the plain average of the per-batch
    statistics (PyTorch's ``momentum=None`` cumulative average), independent of the original
    momentum. ``batches`` yields model inputs (or dicts, with ``call(model, batch)`` applying the
    model). The model is updated in place (NNX semantics) and returned; it is left in eval mode.
    """
    bns = _batchnorms(model)
    if not bns:
        raise ValueError(f"recalibrate_batch_stats: {type(model).__name__} has no nnx.BatchNorm")
    call = call or _apply
    saved = [(bn.momentum, bn.use_running_average) for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # running stats := this batch's stats
        bn.use_running_average = False
    graphdef, stats, rest = nnx.split(model, nnx.BatchStat, ...)
    batch_stats = _batch_stats_fn(graphdef, call)
    avg, count = None, 0
    for batch in batches:
        new = batch_stats(stats, rest, batch)
        count += 1
        if avg is None:
            avg = new
        else:
            avg = jax.tree.map(lambda a, b, c=count: a + (b - a) / c, avg, new)
    if avg is None:
        raise ValueError("recalibrate_batch_stats: batches is empty")
    nnx.update(model, jax.tree.map(jnp.asarray, avg))
    for bn, (mom, ura) in zip(bns, saved):
        bn.momentum = mom
        bn.use_running_average = ura
    model.eval()
    return model
