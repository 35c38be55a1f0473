"""Compression operators on params pytrees: magnitude top-k, N:M and structured channel masks.

All functions are pure and jittable. Masks are bool pytrees with the structure of ``params``;
leaves not selected by ``where`` get an all-True mask. ``apply_mask`` zeroes the rest.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxcomp.pruning.select import Where, named_leaves, select

PyTree = Any


def _is_concrete(x: Any) -> bool:
    try:
        float(x)
        return True
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return False


def check_sparsity(sparsity: Any, name: str = "sparsity") -> None:
    """Raise ``ValueError`` for a concrete sparsity outside [0, 1). Traced values pass."""
    if _is_concrete(sparsity):
        s = float(sparsity)
        if not (0.0 <= s < 1.0) or math.isnan(s):
            raise ValueError(f"{name} must be in [0, 1), got {sparsity}")


_REL_TOL = 2.0**-21  # a few float32 ulps: 0.7 and float32(0.7) both keep 30 of 100


def keep_count(n: int, sparsity: ArrayLike) -> int | jax.Array:
    """Number of entries kept out of ``n`` at ``sparsity``: ``ceil(n * (1 - sparsity))``.

    A relative tolerance of a few float32 ulps absorbs the representation error of decimal
    sparsities (``n=100`` at ``0.7`` or ``float32(0.7)`` keeps 30, not 31). Concrete sparsities
    give a Python int; a traced one gives an int32 array computed in float32, with the same result
    whenever ``n * (1 - s)`` is resolvable in float32 (n below ~2^21).
    """
    if _is_concrete(sparsity):
        check_sparsity(sparsity)
        kf = n * (1.0 - float(sparsity))
        return int(min(n, max(0, math.ceil(kf - _REL_TOL * max(kf, 1.0)))))
    s = jnp.asarray(sparsity, jnp.float32)
    kf = jnp.float32(n) * (1.0 - s)
    k = jnp.ceil(kf - _REL_TOL * jnp.maximum(kf, 1.0))
    return jnp.clip(k, 0, n).astype(jnp.int32)


def _score_bits(x: jax.Array) -> jax.Array:
    """|x| as int32 bit patterns: monotone in |x| for finite values, so integer compares rank."""
    return lax.bitcast_convert_type(jnp.abs(x).astype(jnp.float32), jnp.int32)


_SAMPLE = 1 << 15  # entries sampled to bracket the threshold


def _bracket(bits: list[jax.Array], k: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Initial bisection bracket ``(lo, hi)`` from a strided sample of the scores.

    The k-th largest of the sample's quantiles, widened by 5 binomial standard deviations, almost
    always brackets the true k-th largest; the caller verifies this with two counting passes and
    falls back to the full range otherwise, so correctness never depends on the sample.
    """
    stride = max(1, n // _SAMPLE)
    sample = jnp.concatenate([b.reshape(-1)[::stride] for b in bits])
    s = sample.shape[0]
    desc = -jnp.sort(-sample)
    pos = k.astype(jnp.float32) * (s / n)  # expected rank of the threshold in the sample
    margin = 5.0 * jnp.sqrt(pos * (1.0 - pos / s) + 1.0) + 4.0
    i_lo = jnp.clip(jnp.floor(pos + margin), 0, s - 1).astype(jnp.int32)
    i_hi = jnp.clip(jnp.floor(pos - margin), 0, s - 1).astype(jnp.int32)
    return desc[i_lo], desc[i_hi] + 1


def _exact_topk(bits: list[jax.Array], k: ArrayLike) -> list[jax.Array]:
    """Boolean masks keeping exactly ``k`` largest entries across all arrays in ``bits``.

    The k-th largest bit pattern is found by bisection on the integer range (counting passes, no
    sort of the data, works for a traced ``k``), started from a sampled bracket; entries equal to
    the threshold are kept in flattened order (first leaf first, row-major) until the count is
    exact.
    """
    k = jnp.asarray(k, jnp.int32)
    n = sum(int(b.size) for b in bits)

    def count_ge(t):
        return sum(jnp.sum(b >= t, dtype=jnp.int32) for b in bits)

    # Invariant of the bisection: count(>= lo) >= k > count(>= hi). NaN bit patterns lie above
    # +inf, so they rank as the largest magnitudes.
    lo, hi = _bracket(bits, k, n)
    lo = jnp.where(count_ge(lo) >= k, lo, 0)
    hi = jnp.where(count_ge(hi) < k, hi, jnp.int32(0x7FFFFFFF))

    def body(lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = count_ge(mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = lax.while_loop(lambda lohi: lohi[1] - lohi[0] > 1, body, (lo, hi))
    n_gt = sum(jnp.sum(b > lo, dtype=jnp.int32) for b in bits)
    need = k - n_gt  # how many ties at the threshold to keep
    masks, offset = [], jnp.int32(0)
    for b in bits:
        eq = (b == lo).reshape(-1)
        rank = jnp.cumsum(eq, dtype=jnp.int32) + offset
        keep_eq = eq & (rank <= need)
        masks.append(((b > lo).reshape(-1) | keep_eq).reshape(b.shape) & (k > 0))
        offset = offset + jnp.sum(eq, dtype=jnp.int32)
    return masks


def _fill(params: PyTree, flags: PyTree, selected: list[jax.Array]) -> PyTree:
    """Put ``selected`` masks into the selected positions; all-True elsewhere."""
    leaves, treedef = jax.tree.flatten(params)
    flag_leaves = jax.tree.leaves(flags)
    it = iter(selected)
    out = [
        next(it) if f else jnp.ones(jnp.shape(x), jnp.bool_) for x, f in zip(leaves, flag_leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def topk_mask(
    params: PyTree,
    sparsity: ArrayLike,
    *,
    scope: Literal["global", "layer"] = "global",
    where: Where | str | None = None,
    scores: PyTree | None = None,
) -> PyTree:
    """Magnitude top-k mask (CrAM Sec. 3, "Top-K" compression; global or per-layer).

    Keeps exactly ``ceil(n * (1 - sparsity))`` largest-magnitude entries, where ``n`` counts all
    selected entries (``scope="global"``) or one leaf (``scope="layer"``). Ties are broken
    deterministically (earlier leaf, then lower flat index, wins), so the count is exact.
    ``sparsity`` may be traced: one compiled function serves every sparsity level.
    ``scores`` (same structure) replaces ``|params|`` as the ranking criterion.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    check_sparsity(sparsity)
    flags = select(params, where)
    src = params if scores is None else scores
    chosen = [x for x, f in zip(jax.tree.leaves(src), jax.tree.leaves(flags)) if f]
    bits = [_score_bits(x) for x in chosen]
    if scope == "global":
        n = sum(int(x.size) for x in chosen)
        masks = _exact_topk(bits, keep_count(n, sparsity))
    else:
        masks = [_exact_topk([b], keep_count(int(b.size), sparsity))[0] for b in bits]
    return _fill(params, flags, masks)


def _input_axis(leaf: jax.Array) -> int:
    """Input-feature axis: Dense ``(in, out)`` -> 0, Conv ``(kh, kw, in, out)`` -> 2."""
    return leaf.ndim - 2


def nm_mask(params: PyTree, n: int = 2, m: int = 4, *, where: Where | str | None = None) -> PyTree:
    """N:M semi-structured mask: in every group of ``m`` consecutive weights along the *input*
    dimension keep the ``n`` largest magnitudes (NVIDIA 2:4 sparse tensor-core layout;
    Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", Sec. 2).

    Dense kernels ``(in, out)`` are grouped along axis 0, Conv kernels ``(kh, kw, in, out)``
    along axis 2. Ties keep the lower index.
    """
    if not (isinstance(n, int) and isinstance(m, int)) or n < 1 or m < 1:
        raise ValueError(f"n and m must be positive integers, got n={n!r}, m={m!r}")
    if n > m:
        raise ValueError(f"N:M needs n <= m, got n={n}, m={m}")
    flags = select(params, where)
    masks = []
    for (path, x), f in zip(named_leaves(params), jax.tree.leaves(flags)):
        if not f:
            continue
        ax = _input_axis(x)
        if x.shape[ax] % m:
            raise ValueError(
                f"N:M with m={m} needs the input dimension divisible by m; leaf {path!r} has "
                f"shape {tuple(x.shape)} (input dim {x.shape[ax]})"
            )
        moved = jnp.moveaxis(jnp.abs(x), ax, -1)
        groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
        order = jnp.argsort(-groups, axis=-1, stable=True)
        rank = jnp.argsort(order, axis=-1, stable=True)
        keep = (rank < n).reshape(moved.shape)
        masks.append(jnp.moveaxis(keep, -1, ax))
    return _fill(params, flags, masks)


def channel_scores(leaf: jax.Array, norm: Literal["l1", "l2"] = "l1") -> jax.Array:
    """Norm of every output channel (last axis) of a kernel, averaged over its fan-in so that
    layers of different sizes are comparable (mean |w| for ``l1``, RMS for ``l2``)."""
    w = leaf.reshape(-1, leaf.shape[-1]).astype(jnp.float32)
    if norm == "l1":
        return jnp.mean(jnp.abs(w), axis=0)
    if norm == "l2":
        return jnp.sqrt(jnp.mean(w * w, axis=0))
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def channel_mask(
    params: PyTree,
    sparsity: ArrayLike,
    *,
    norm: Literal["l1", "l2"] = "l1",
    scope: Literal["layer", "global"] = "layer",
    where: Where | str | None = None,
) -> PyTree:
    """Structured pruning of whole output channels / neurons by norm (Li et al. 2017, "Pruning
    Filters for Efficient ConvNets", Sec. 3.1).

    A channel is the last axis of a kernel (Dense ``out``, Conv ``out``); its score is
    ``channel_scores``. ``scope="layer"`` keeps ``ceil(c * (1 - sparsity))`` channels per leaf;
    ``"global"`` ranks all channels of all selected leaves together. Returned masks have the
    leaf's shape (whole channels True or False).
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    check_sparsity(sparsity)
    flags = select(params, where)
    chosen = [x for x, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f]
    bits = [_score_bits(channel_scores(x, norm)) for x in chosen]
    if scope == "global":
        keep = _exact_topk(bits, keep_count(sum(int(b.size) for b in bits), sparsity))
    else:
        keep = [_exact_topk([b], keep_count(int(b.size), sparsity))[0] for b in bits]
    masks = [jnp.broadcast_to(c, x.shape) for c, x in zip(keep, chosen)]
    return _fill(params, flags, masks)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """Zero the entries where ``mask`` is False (dtype preserved)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), p.dtype)), params, mask)
