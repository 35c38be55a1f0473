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


#: Sparsities are read on a grid of 1e-6 (``q = round(sparsity * 10**6)``): every decimal with
#: up to six places (0.7, 0.95, 0.975, 0.999999) is exact, whether it arrives as a Python float,
#: a float32 or a traced float32 (a float32 resolves ``sparsity * 10**6`` to within 0.07).
SPARSITY_GRID = 10**6
_ROOT = 1000  # sqrt(SPARSITY_GRID): splits products so every int32 intermediate stays < 2^31


def _grid_keep_int(n: int, q: int) -> int:
    """``ceil(n * (G - q) / G)`` in Python integers (``G = SPARSITY_GRID``)."""
    r = SPARSITY_GRID - q
    return -((-n * r) // SPARSITY_GRID)


def _grid_keep_traced(n: int, q: jax.Array) -> jax.Array:
    """``ceil(n * (G - q) / G)`` in int32 arithmetic without overflow, for ``n < 2^31``.

    With ``n = a G + b`` and ``r = G - q = r1 * 1000 + r0``:
    ``n r / G = a r + (b r1 * 1000 + b r0) / G``, and every product stays below ``2^31``.
    """
    a, b = divmod(n, SPARSITY_GRID)
    r = SPARSITY_GRID - q
    r1, r0 = r // _ROOT, r % _ROOT
    x = jnp.int32(b) * r1  # <= 1e9
    y = jnp.int32(b) * r0  # < 1e9
    num = (x % _ROOT) * _ROOT + y  # < 2e9
    quot = jnp.int32(a) * r + x // _ROOT + num // SPARSITY_GRID
    return quot + (num % SPARSITY_GRID > 0).astype(jnp.int32)


def keep_count(n: int, sparsity: ArrayLike) -> int | jax.Array:
    """Number of entries kept out of ``n`` at ``sparsity``: ``ceil(n * (1 - s))``, exactly.

    ``s`` is ``sparsity`` read on the 1e-6 grid (``q = round(sparsity * 1e6)``, ``s = q / 1e6``)
    and the count is computed in integer arithmetic, so it is exact at any size: ResNet-50's
    25,557,032 weights at 0.9 keep 2,555,704, and ``n=100`` at ``0.7`` or ``float32(0.7)`` keeps
    30. A concrete sparsity gives a Python int; a traced one gives an int32 array with the same
    value (int32 arithmetic, no overflow for any ``n < 2^31``). A sparsity that rounds to 1 on the
    grid (above ``1 - 5e-7``) keeps 0.
    """
    n = int(n)
    if n < 0 or n >= 2**31:
        raise ValueError(f"n must be in [0, 2^31), got {n}")
    if _is_concrete(sparsity):
        check_sparsity(sparsity)
        q = min(SPARSITY_GRID, max(0, round(float(sparsity) * SPARSITY_GRID)))
        return _grid_keep_int(n, q)
    s = jnp.asarray(sparsity, jnp.float32)
    q = jnp.clip(jnp.round(s * jnp.float32(SPARSITY_GRID)), 0, SPARSITY_GRID).astype(jnp.int32)
    return _grid_keep_traced(n, q)


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

    Finds the k-th largest bit pattern with counting passes over the data (no sort, works for a
    traced ``k``): a bracket from a strided sample, then interpolation search on the monotone
    count ``c(t) = #{b >= t}`` with a bisection every third step as a safeguard (about 10
    passes instead of 31 for plain bisection). Entries equal to the threshold are kept in
    flattened order (first leaf first, row-major) until the count is exact; the prefix count this
    needs runs only when some tied entries must be dropped.
    """
    k = jnp.asarray(k, jnp.int32)
    n = sum(int(b.size) for b in bits)
    if n == 0:  # only zero-size arrays: nothing to keep
        return [jnp.zeros(b.shape, jnp.bool_) for b in bits]

    def count_ge(t):
        return sum(jnp.sum(b >= t, dtype=jnp.int32) for b in bits)

    # Invariant: c_lo = c(lo) >= k > c(hi) = c_hi. |x| bit patterns are >= 0, so c(0) = n; NaN
    # patterns lie above +inf and rank as the largest magnitudes.
    lo, hi = _bracket(bits, k, n)
    c_lo, c_hi = count_ge(lo), count_ge(hi)
    bad_lo, bad_hi = c_lo < k, c_hi >= k
    lo, c_lo = jnp.where(bad_lo, 0, lo), jnp.where(bad_lo, n, c_lo)
    hi, c_hi = jnp.where(bad_hi, jnp.int32(0x7FFFFFFF), hi), jnp.where(bad_hi, 0, c_hi)

    def cond(st):
        lo, hi, c_lo, _, _ = st
        return (hi - lo > 1) & (c_lo != k)

    def body(st):
        lo, hi, c_lo, c_hi, it = st
        frac = (c_lo - k).astype(jnp.float32) / jnp.maximum(c_lo - c_hi, 1).astype(jnp.float32)
        guess = lo + (frac * (hi - lo).astype(jnp.float32)).astype(jnp.int32)
        mid = jnp.where(it % 3 == 2, lo + (hi - lo) // 2, guess)
        mid = jnp.clip(mid, lo + 1, hi - 1)
        c = count_ge(mid)
        ok = c >= k
        return (
            jnp.where(ok, mid, lo),
            jnp.where(ok, hi, mid),
            jnp.where(ok, c, c_lo),
            jnp.where(ok, c_hi, c),
            it + 1,
        )

    lo, hi, c_lo, c_hi, _ = lax.while_loop(cond, body, (lo, hi, c_lo, c_hi, jnp.int32(0)))
    # Either c(lo) == k (keep b >= lo), or hi == lo + 1 and lo is the k-th largest value: keep
    # the c_hi entries above it and the first k - c_hi of the c_lo - c_hi entries equal to it.
    need = k - c_hi

    def keep_all(bits):
        return [b >= lo for b in bits]

    def rank_ties(bits):
        masks, offset = [], jnp.int32(0)
        for b in bits:
            eq = (b == lo).reshape(-1)
            rank = jnp.cumsum(eq, dtype=jnp.int32) + offset
            masks.append(((b > lo).reshape(-1) | (eq & (rank <= need))).reshape(b.shape))
            offset = offset + jnp.sum(eq, dtype=jnp.int32)
        return masks

    masks = lax.cond((c_lo == k) | (c_lo - c_hi == need), keep_all, rank_ties, bits)
    return [m & (k > 0) for m in masks]


def _check_like(name: str, tree: PyTree, params: PyTree) -> None:
    """ValueError unless ``tree`` has the structure of ``params`` and the same leaf shapes."""
    t_def, p_def = jax.tree.structure(tree), jax.tree.structure(params)
    if t_def != p_def:
        t_paths = [p for p, _ in named_leaves(tree)]
        p_paths = [p for p, _ in named_leaves(params)]
        missing = [p for p in p_paths if p not in t_paths][:5]
        extra = [p for p in t_paths if p not in p_paths][:5]
        raise ValueError(
            f"{name} must have the tree structure of params; {name} lacks {missing} and has "
            f"extra {extra} ({len(t_paths)} leaves vs {len(p_paths)})"
            if missing or extra
            else f"{name} must have the tree structure of params, got {t_def} vs {p_def}"
        )
    for (path, t), (_, x) in zip(named_leaves(tree), named_leaves(params)):
        if jnp.shape(t) != jnp.shape(x):
            raise ValueError(
                f"{name} leaf {path!r} has shape {tuple(jnp.shape(t))}, but the params leaf has "
                f"shape {tuple(jnp.shape(x))}"
            )


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
    ``scores`` (same structure and leaf shapes as ``params``, else ``ValueError`` naming the
    leaf) replaces ``|params|`` as the ranking criterion. Scalar (0-d) leaves count as one entry;
    zero-size leaves get an empty mask and take no share of the budget. NaN magnitudes rank above
    +inf (they are kept first).
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    check_sparsity(sparsity)
    flags = select(params, where)
    if scores is not None:
        _check_like("scores", scores, params)
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
        if jnp.ndim(x) < 2:
            raise ValueError(
                f"N:M groups weights along the input axis and needs leaves with ndim >= 2; leaf "
                f"{path!r} has shape {tuple(jnp.shape(x))}"
            )
        ax = _input_axis(x)
        if x.shape[ax] % m:
            raise ValueError(
                f"N:M with m={m} needs the input dimension divisible by m; leaf {path!r} has "
                f"shape {tuple(x.shape)} (input dim {x.shape[ax]})"
            )
        moved = jnp.moveaxis(jnp.abs(x), ax, -1)
        groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
        # rank_i = #{j: g_j > g_i} + #{j < i: g_j == g_i}: m x m compares, no sort.
        gi, gj = groups[..., :, None], groups[..., None, :]
        earlier = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]
        rank = jnp.sum((gj > gi) | ((gj == gi) & earlier), axis=-1, dtype=jnp.int32)
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
    for (path, x), f in zip(named_leaves(params), jax.tree.leaves(flags)):
        if f and (jnp.ndim(x) < 1 or jnp.size(x) == 0):
            raise ValueError(
                f"channel_mask needs non-empty leaves with ndim >= 1 (channels on the last axis); "
                f"leaf {path!r} has shape {tuple(jnp.shape(x))}"
            )
    bits = [_score_bits(channel_scores(x, norm)) for x in chosen]
    if scope == "global":
        keep = _exact_topk(bits, keep_count(sum(int(b.size) for b in bits), sparsity))
    else:
        keep = [_exact_topk([b], keep_count(int(b.size), sparsity))[0] for b in bits]
    masks = [jnp.broadcast_to(c, x.shape) for c, x in zip(keep, chosen)]
    return _fill(params, flags, masks)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """Zero the entries where ``mask`` is False (dtype preserved).

    ``mask`` must have the structure of ``params``, the same shape on every leaf (no
    broadcasting) and a bool dtype; otherwise ``ValueError`` names the leaf. Shapes and dtypes
    are static, so the checks also hold under ``jax.jit``.
    """
    _check_like("mask", mask, params)
    for path, m in named_leaves(mask):
        if jnp.result_type(m) != jnp.bool_:
            raise ValueError(f"mask leaf {path!r} must be bool, got dtype {jnp.result_type(m)}")
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), p.dtype)), params, mask)
