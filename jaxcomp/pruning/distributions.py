"""How a sparsity is spread over layers: uniform, global and Erdos-Renyi-Kernel (ERK).

``distribution_mask(params, sparsity, distribution)`` is the magnitude mask of one pruning step
under each distribution; ``erk_densities`` gives ERK's per-layer densities. Both take a traced
sparsity, so a schedule can change it inside one compiled step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxcomp.pruning.masks import (
    _exact_topk,
    _fill,
    _score_bits,
    check_sparsity,
    keep_count,
    topk_mask,
)
from jaxcomp.pruning.select import Where, select

DISTRIBUTIONS = ("uniform", "global", "erk")


def erk_densities(shapes: Sequence[Sequence[int]], sparsity: ArrayLike) -> jax.Array:
    """Per-layer densities of the Erdos-Renyi-Kernel distribution (Evci et al. 2020, "Rigging
    the Lottery", Sec. 3; Mocanu et al. 2018 without the kernel).

    Layer ``l`` with shape ``(kh, kw, in, out)`` (or ``(in, out)``), ``N_l`` entries, gets
    density ``d_l = min(1, eps * p_l)`` with ``p_l = sum(shape) / prod(shape)`` and ``eps``
    chosen so that ``sum_l d_l N_l = (1 - sparsity) sum_l N_l``. Layers whose ``eps * p_l`` would
    exceed 1 are dense; they are the ones with the largest ``p_l``, so RigL's loop (make the
    layers of largest ``p`` dense and solve again until no density exceeds 1) is evaluated here
    for every number of dense layers at once and the first valid one taken: no Python branching
    on ``sparsity``, which may be traced. Returns float32 densities in the order of ``shapes``.
    """
    if not shapes:
        raise ValueError("erk_densities needs at least one shape, got none")
    for shape in shapes:
        if len(shape) == 0 or math.prod(shape) == 0:
            raise ValueError(f"erk_densities needs non-empty shapes with ndim >= 1, got {shape}")
    check_sparsity(sparsity)
    n = jnp.asarray([math.prod(s) for s in shapes], jnp.float32)
    p = jnp.asarray([sum(s) / math.prod(s) for s in shapes], jnp.float32)
    order = jnp.argsort(-p, stable=True)  # static: p is known in Python
    n_sorted, p_sorted = n[order], p[order]
    s = jnp.asarray(sparsity, jnp.float32)
    num = len(shapes)
    # k = number of dense layers (a prefix of the layers sorted by decreasing p). Ties in p must
    # become dense together, so only k at the end of a tie group (or 0) is a candidate.
    ks = jnp.arange(num + 1)
    dense_n = jnp.concatenate([jnp.zeros(1), jnp.cumsum(n_sorted)])  # sum of N over dense
    sparse_pn = jnp.concatenate([jnp.cumsum((p_sorted * n_sorted)[::-1])[::-1], jnp.zeros(1)])
    eps = ((1.0 - s) * jnp.sum(n) - dense_n) / jnp.where(sparse_pn > 0, sparse_pn, 1.0)
    p_next = jnp.concatenate([p_sorted, jnp.zeros(1)])  # largest p among the sparse layers
    boundary = jnp.concatenate(
        [jnp.ones(1, bool), p_sorted[1:] != p_sorted[:-1], jnp.ones(1, bool)]
    )
    valid = boundary & ((ks == num) | (eps * p_next <= 1.0))
    k = jnp.argmax(valid)  # first valid: RigL's loop stops there
    dens_sorted = jnp.where(jnp.arange(num) < k, 1.0, jnp.clip(eps[k] * p_sorted, 0.0, 1.0))
    return jnp.zeros(num, jnp.float32).at[order].set(dens_sorted)


def distribution_mask(
    params: Any,
    sparsity: ArrayLike,
    distribution: Literal["uniform", "global", "erk"] = "global",
    *,
    where: Where | str | None = None,
) -> Any:
    """Magnitude mask at ``sparsity`` spread over the selected leaves by ``distribution``:

    * ``"uniform"``: every leaf at ``sparsity`` (``topk_mask(scope="layer")``);
    * ``"global"``: one threshold over all leaves (``topk_mask(scope="global")``);
    * ``"erk"``: leaf ``l`` keeps ``ceil(N_l * d_l)`` entries with ``d_l`` from
      ``erk_densities``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be 'uniform', 'global' or 'erk', got {distribution!r}")
    if distribution != "erk":
        scope = "layer" if distribution == "uniform" else "global"
        return topk_mask(params, sparsity, scope=scope, where=where)
    check_sparsity(sparsity)
    flags = select(params, where)
    chosen = [x for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f]
    dens = erk_densities([x.shape for x in chosen], sparsity)
    masks = [
        _exact_topk([_score_bits(x)], keep_count(int(x.size), 1.0 - dens[i]))[0]
        for i, x in enumerate(chosen)
    ]
    return _fill(params, flags, masks)
