"""Gradient compressors with error feedback, and the sliding windows that store their outputs.

Modoranu et al., "Error Feedback Can Accurately Compress Preconditioners" (EFCP), Section 3:
the full-matrix preconditioners M-FAC and GGT keep a window of the last `m` gradients, which costs
`m * d` floats. EFCP stores *compressed* gradients instead and keeps the compression error in an
error-feedback accumulator (Algorithm 1)::

    a_t = e_{t-1} + g_t        # accumulator
    c_t = C(a_t)               # compressed gradient: enters the window and is preconditioned
    e_t = a_t - c_t            # error kept for the next step

A `Compressor` bundles the compression operator `C` with the window format that stores its
outputs. The preconditioners only ever need two products with the window `G` (rows = stored
gradients): `G @ x` (`window_dots`, the scalar products) and `G.T @ w` (`window_combine`, a
linear combination of the stored gradients), so a compressed window never materialises a dense
`(m, d)` buffer:

* `topk(fraction)`: global magnitude top-k of the flattened accumulator (Section 3.1, "Sparse
  M-FAC"). The window holds `(m, k)` values and block-local `uint16` indices (plus `(m, d/2^16)`
  int32 block ends), so one stored gradient costs `6 k` bytes instead of `4 d`; products are
  gathers and scatter-adds, O(m k).
* `lowrank(rank)`: PowerSGD-style rank-`r` compression per layer (Section 3.2; Vogels et al.
  2019): one power iteration per step, warm-started from the previous step's `Q`. Matrices
  (conv kernels as `(kh*kw*c_in, c_out)`) are stored as factors `P (n, r)`, `Q (l, r)`; vectors
  (biases, norms) and layers too small to gain are kept dense, as in PowerSGD. In
  `layout="leaves"` the factors keep the leaf's axes (`P (*lead, r)`, `Q (cols, r)`) and `P`
  is orthonormalised by shifted CholeskyQR (`_cholesky_qr`), whose only cross-row reductions
  are `(r, r)` Gram matrices.
* `identity()`: the uncompressed window of dense M-FAC / GGT (no error feedback needed).

`layout="flat"` (the default) works on the float32 vector obtained by flattening the gradient
pytree (`jaxcomp.optim.utils.ravel_f32`); `shapes` (static leaf shapes) lets the low-rank
compressor find the layers inside that vector. `layout="leaves"` keeps one window per leaf
(`LeafCompressor`, given by `identity()`, `topk(...)` and `lowrank(...)`), in the leaf's shape
and sharding: `G x` is a sum of per-leaf contractions, `G^T w` is per leaf, and the
compressor state (low-rank's warm-start `Q`) is a pytree like the parameters. Windows may
store their values in a narrower `storage_dtype` (bf16); all arithmetic is float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from jaxcomp.optim.utils import (
    Shapes,
    check_storage_dtype,
    explicit_sharding,
    ravel_f32,
    replicate_on_params_mesh,
)

HIGHEST = lax.Precision.HIGHEST
_BLOCK = 1 << 16  # block-local top-k indices fit in uint16


class Compressor(NamedTuple):
    """A compression operator `C` together with the window format that stores its outputs.

    Attributes:
      init: `shapes -> aux` compressor state (e.g. the warm-start `Q` of PowerSGD).
      compress: `(a, aux, shapes) -> (payload, c, aux)`; `c = C(a)` as a dense vector and
        `payload` its compact form (what the window stores).
      window_init: `(m, shapes) -> window`, an all-zero window of `m` slots.
      window_set: `(window, slot, payload) -> window`, overwrite one slot (ring buffer).
      window_dots: `(window, x, payload_or_None, shapes) -> (m,)`, the products `G @ x`; when the
        payload of `x` is given the compressor may use it (low-rank uses the factors).
      window_combine: `(window, w, shapes) -> (d,)`, the linear combination `G.T @ w`.
      decode: `(payload, shapes) -> (d,)`, the dense `c` of a payload; needed only when rounding
        the payload for storage (`storage_dtype`) does not round `c` elementwise (low-rank
        factors); `None`: `c` is rounded elementwise.
      leaf: `shape -> LeafCompressor`, the per-leaf form for `layout="leaves"`; `None` if the
        compressor has none (`layout="leaves"` then raises a ValueError).
    """

    init: Callable[[Shapes], Any]
    compress: Callable[[jax.Array, Any, Shapes], tuple[Any, jax.Array, Any]]
    window_init: Callable[[int, Shapes], Any]
    window_set: Callable[[Any, jax.Array, Any], Any]
    window_dots: Callable[[Any, jax.Array, Any, Shapes], jax.Array]
    window_combine: Callable[[Any, jax.Array, Shapes], jax.Array]
    decode: Callable[[Any, Shapes], jax.Array] | None = None
    leaf: Callable[[tuple[int, ...]], LeafCompressor] | None = None


def _stateless(*args: Any) -> tuple[()]:
    """The state (and its `PartitionSpec`s) of a stateless `LeafCompressor`: none."""
    del args
    return ()


class LeafCompressor(NamedTuple):
    """The per-leaf form of a compressor, for `layout="leaves"`: one window per parameter leaf,
    indexed like the leaf (no flattening across leaves), so it can be sharded like the leaf.

    Attributes:
      window_init: `m -> window`, the all-zero window of `m` slots of this leaf (float32).
      window_spec: `spec -> specs`, the `PartitionSpec`s of the window's arrays (a pytree like
        the window) for a leaf sharded as `spec`; the slot axis is never sharded.
      compress: `(x, aux) -> (payload, c, aux)`, `c = C(x)` shaped like the leaf, and the
        compressor state `aux` of this leaf updated.
      window_set: `(window, slot, payload) -> window`.
      window_dots: `(window, x, payload_or_None) -> (m,)`, this leaf's share of `G x`; when
        the payload of `x` is given the compressor may use it (low-rank uses the factors).
      window_combine: `(window, w) -> x`, this leaf's part of `G^T w`, shaped like the leaf.
      init: `index -> aux`, the initial compressor state of this leaf (`index`: its position
        among the flattened parameter leaves, e.g. to seed it); `()` when stateless.
      state_spec: `spec -> specs`, the `PartitionSpec`s of the state (a pytree like `aux`) for
        a leaf sharded as `spec`.
      decode: `payload -> c`, the dense float32 `c` of a payload, as `Compressor.decode` (for a
        `storage_dtype` that does not round `c` elementwise); `None`: `c` is rounded
        elementwise.
    """

    window_init: Callable[[int], Any]
    window_spec: Callable[[PartitionSpec], Any]
    compress: Callable[[jax.Array, Any], tuple[Any, jax.Array, Any]]
    window_set: Callable[[Any, jax.Array, Any], Any]
    window_dots: Callable[[Any, jax.Array, Any], jax.Array]
    window_combine: Callable[[Any, jax.Array], jax.Array]
    init: Callable[[int], Any] = _stateless
    state_spec: Callable[[PartitionSpec], Any] = _stateless
    decode: Callable[[Any], jax.Array] | None = None


def _numel(shapes: Shapes) -> int:
    return sum(math.prod(s) for s in shapes)


def _set_row(buffer: jax.Array, slot: jax.Array, row: jax.Array) -> jax.Array:
    return lax.dynamic_update_index_in_dim(buffer, row.astype(buffer.dtype), slot, axis=0)


# ----------------------------------------------------------------------------------------------
# identity: the dense window of uncompressed M-FAC / GGT
# ----------------------------------------------------------------------------------------------


def identity() -> Compressor:
    """No compression: the window is a dense `(m, d)` float32 matrix (dense M-FAC / GGT)."""

    def compress(a, aux, shapes):
        del shapes
        return a, a, aux

    def window_dots(window, x, payload, shapes):
        del payload, shapes
        return _contract(window, x, 1)

    def window_combine(window, w, shapes):
        del shapes
        return _combine_rows(window, w)

    return Compressor(
        init=lambda shapes: (),
        compress=compress,
        window_init=lambda m, shapes: jnp.zeros((m, _numel(shapes)), jnp.float32),
        window_set=_set_row,
        window_dots=window_dots,
        window_combine=window_combine,
        leaf=_dense_leaf,
    )


def _dense_leaf(shape: tuple[int, ...]) -> LeafCompressor:
    """Dense window of one leaf: `(m, *shape)`, sharded like the leaf; `G x` is a contraction
    over the leaf's axes (a psum of `m` floats when they are sharded), `G^T w` over the slots."""
    nd = len(shape)
    return LeafCompressor(
        window_init=lambda m: jnp.zeros((m, *shape), jnp.float32),
        window_spec=lambda spec: PartitionSpec(None, *spec),
        compress=lambda x, aux: (x, x, aux),
        window_set=_set_row,
        window_dots=lambda window, x, payload: _contract(window, x, nd),
        window_combine=_combine_rows,
    )


def _contract(window: jax.Array, x: jax.Array, nd: int) -> jax.Array:
    """`(m,)` contraction of `window (m, *s)` with the float32 `x (*s)` over the last `nd` axes;
    on Explicit mesh axes the result is declared replicated (the partial sums are psum-ed).

    A float32 window is a matmul. A narrower stored window (bf16) is widened inside a fused
    multiply-and-sum instead, so no float32 copy of the window is materialised (`_widened`).
    """
    sharding = explicit_sharding(x)
    out = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())
    if window.dtype == jnp.float32:
        return jnp.tensordot(window, x, axes=nd, precision=HIGHEST, out_sharding=out)
    window, x = _widened(window, x)
    total = jnp.sum(window * x, axis=tuple(range(1, nd + 1)))
    return total if out is None else jax.sharding.reshard(total, out)


def _combine_rows(window: jax.Array, w: jax.Array) -> jax.Array:
    """`G^T w = sum_i w_i window[i]` for a dense window `(m, *s)`: a matmul for float32, a
    fused multiply-and-sum over the slots for a narrower stored window (see `_contract`)."""
    if window.dtype == jnp.float32:
        return jnp.tensordot(w, window, axes=1, precision=HIGHEST)
    window, w = _widened(window, w)
    return jnp.sum(w.reshape(-1, *([1] * (window.ndim - 1))) * window, axis=0)


def _widened(window: jax.Array, other: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(window as float32, other)` for one fused product. The optimization barrier (joint with
    the product's other operand, so that two products do not share one conversion) keeps XLA
    from hoisting the conversion in front of the slot update that produced `window`, or from
    materialising one float32 copy of the window for both products."""
    window, other = lax.optimization_barrier((window, other))
    return window.astype(jnp.float32), other


def _to_blocks(x: jax.Array, nb: int) -> jax.Array:
    """`x` as `(nb, size / nb)` (contiguous blocks along its leading axis); on Explicit mesh
    axes the block axis carries the leading axis' sharding (the leaf is resharded to that
    first if it was sharded along another axis)."""
    shape = (nb, x.size // nb)
    sharding = explicit_sharding(x)
    if sharding is None:
        return x.reshape(shape)
    lead = sharding.spec[0] if nb > 1 and len(sharding.spec) else None
    lead = lead if nb % _axis_size(sharding.mesh, lead) == 0 else None
    x = jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec(lead)))
    return lax.reshape(x, shape, out_sharding=NamedSharding(sharding.mesh, PartitionSpec(lead)))


def _from_blocks(y: jax.Array, shape: tuple[int, ...], like: Any = None) -> jax.Array:
    """Inverse of `_to_blocks`: `y (nb, B)` back to `shape`; on Explicit mesh axes the leading
    axis keeps the block axis' sharding, then (if given) the sharding of the array `like`."""
    sharding = explicit_sharding(y)
    if sharding is None:
        return y.reshape(shape)
    out = NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))
    y = lax.reshape(y, shape, out_sharding=out)
    like = None if like is None else explicit_sharding(like)
    return y if like is None else jax.sharding.reshard(y, like)


# ----------------------------------------------------------------------------------------------
# top-k
# ----------------------------------------------------------------------------------------------


class TopkWindow(NamedTuple):
    """`m` sparse vectors with exactly `k` entries each.

    `values[i]` are the kept entries of slot `i`, sorted by coordinate; their coordinates are
    `hi * 2^16 + low[i]` where `hi` is the number of `block_ends[i, b] <= position`, i.e.
    `block_ends[i, b]` counts the entries of slot `i` with coordinate `< (b + 1) * 2^16`.
    """

    values: jax.Array  # (m, k) float32
    low: jax.Array  # (m, k) uint16
    block_ends: jax.Array  # (m, ceil(d / 2^16)) int32


def topk_size(fraction: float, d: int) -> int:
    """Number of entries kept by `topk(fraction)` on a `d`-dimensional vector."""
    return max(1, min(d, int(fraction * d)))


def _topk_indices(window: TopkWindow) -> jax.Array:
    """Global int32 coordinates `(m, k)` of the entries of a `TopkWindow`.

    The block of entry `j` of slot `i` is `#{b : block_ends[i, b] <= j}`: a scatter-add of one
    at each block end followed by a cumulative sum along `k`, O(m (k + d / 2^16)) time and memory.
    """
    low = window.low.astype(jnp.int32)
    m, k = low.shape
    if window.block_ends.shape[1] == 1:
        return low
    ends = jnp.minimum(window.block_ends[:, :-1], k)  # an end at k starts no entry: dropped
    rows = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32)[:, None], ends.shape)
    starts = jnp.zeros((m, k + 1), jnp.int32).at[rows, ends].add(1)
    hi = jnp.cumsum(starts[:, :k], axis=1, dtype=jnp.int32)
    return hi * _BLOCK + low


def _block_topk(blocks: jax.Array, k: int, by_sort: bool = False) -> tuple[jax.Array, jax.Array]:
    """`(values, idx)`, both `(n, k)`: the `k` entries of largest magnitude of each row of the
    `(n, B)` array `blocks` (ties: the lower coordinate first), with their block-local
    coordinates sorted in increasing order.

    `by_sort=True` selects with a stable sort of each row instead of `lax.top_k` (the same
    entries): XLA's SPMD partitioner keeps a sort along an unsharded axis local to the shards of
    the other axes, while it gathers the operand of a `TopK` custom call.
    """
    if by_sort:
        iota = lax.broadcasted_iota(
            jnp.int32, blocks.shape, blocks.ndim - 1, out_sharding=explicit_sharding(blocks)
        )
        _, idx = lax.sort((-jnp.abs(blocks), iota), dimension=blocks.ndim - 1, num_keys=1)
        idx = idx[..., :k]
    else:
        _, idx = lax.top_k(jnp.abs(blocks), k)
    idx = jnp.sort(idx, axis=-1)
    return jnp.take_along_axis(blocks, idx, axis=-1), idx


def _check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(
        fraction, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def topk(fraction: float = 0.01, *, num_blocks: int = 1) -> Compressor:
    """Magnitude top-k compressor (EFCP Section 3.1, sparse M-FAC / sparse GGT), global or
    block-wise.

    The flattened accumulator of size `d` is cut into `num_blocks` contiguous blocks of
    `B = d / num_blocks` coordinates, and each block keeps exactly its
    `k_b = max(1, int(fraction * B))` coordinates of largest magnitude (ties broken by
    `lax.top_k`), `k = num_blocks * k_b` in all. `num_blocks=1` (the default) is the global
    top-k of the paper. More blocks are the per-shard top-k of a vector split over devices
    (each block is selected without looking at the others); the window format and products
    are the same. Used through `mfac(..., compressor=...)` or `ggt(..., compressor=...)`, which
    add error feedback.

    Args:
      fraction: density of the kept entries, in (0, 1] (0.01 keeps 1%).
      num_blocks: number of contiguous blocks, an integer >= 1 that divides `d` (checked when
        the transform first sees the parameters). In `layout="leaves"` each leaf is split
        into `num_blocks` blocks along its leading axis when that axis is divisible, else kept
        as one block.
    """
    fraction = _check_fraction(fraction)
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, (int, np.integer)):
        raise ValueError(f"num_blocks must be an integer >= 1, got {num_blocks!r}")
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be an integer >= 1, got {num_blocks!r}")
    n = int(num_blocks)

    def sizes(shapes):
        d = _numel(shapes)
        if d % n:
            raise ValueError(f"topk num_blocks={n} must divide the vector size d={d}")
        return d // n, topk_size(fraction, d // n)

    def compress(a, aux, shapes):
        size, k_b = sizes(shapes)
        values, idx = _block_topk(a.reshape(n, size), k_b)
        idx = (idx + size * jnp.arange(n, dtype=idx.dtype)[:, None]).reshape(-1)
        values = values.reshape(-1)
        c = jnp.zeros_like(a).at[idx].set(values, unique_indices=True)
        return (values, idx), c, aux

    def window_init(m, shapes):
        d = _numel(shapes)
        k = n * sizes(shapes)[1]
        blocks = -(-d // _BLOCK)
        return TopkWindow(
            values=jnp.zeros((m, k), jnp.float32),
            low=jnp.zeros((m, k), jnp.uint16),
            # all entries in block 0 -> coordinate 0 with value 0: a valid, inert empty slot
            block_ends=jnp.full((m, blocks), k, jnp.int32),
        )

    def window_set(window, slot, payload):
        values, idx = payload
        blocks = window.block_ends.shape[1]
        bounds = (jnp.arange(blocks, dtype=jnp.int32) + 1) * _BLOCK
        ends = jnp.searchsorted(idx, bounds, side="left").astype(jnp.int32)
        return TopkWindow(
            values=_set_row(window.values, slot, values),
            low=_set_row(window.low, slot, (idx % _BLOCK).astype(jnp.uint16)),
            block_ends=_set_row(window.block_ends, slot, ends),
        )

    def window_dots(window, x, payload, shapes):
        del payload, shapes
        return jnp.sum(window.values * x[_topk_indices(window)], axis=1)

    def window_combine(window, w, shapes):
        contrib = (w[:, None] * window.values).reshape(-1)
        idx = _topk_indices(window).reshape(-1)
        return jnp.zeros((_numel(shapes),), jnp.float32).at[idx].add(contrib)

    return Compressor(
        init=lambda shapes: (),
        compress=compress,
        window_init=window_init,
        window_set=window_set,
        window_dots=window_dots,
        window_combine=window_combine,
        leaf=lambda shape: _topk_leaf(shape, fraction, n),
    )


class LeafTopkWindow(NamedTuple):
    """Top-k window of one leaf (`layout="leaves"`), split into `nb` blocks along the leaf's
    leading axis: `values[i, b]` are the `k_b` kept entries of block `b` of slot `i`, and
    `index[i, b]` their coordinates inside the block (sorted; uint16 when a block has at most
    2^16 coordinates, else int32)."""

    values: jax.Array  # (m, nb, k_b)
    index: jax.Array  # (m, nb, k_b)


def _topk_leaf(shape: tuple[int, ...], fraction: float, num_blocks: int) -> LeafCompressor:
    """Block-wise top-k of one leaf: `num_blocks` blocks along the leading axis if it divides
    it (the shards of a leaf sharded on that axis over `num_blocks` devices), else one block.
    Selection, `G x` (a batched gather) and `G^T w` (a batched scatter-add) stay inside each
    block, so no block needs another block's coordinates."""
    size = math.prod(shape)
    nb = num_blocks if shape and shape[0] % num_blocks == 0 else 1
    block = size // nb
    k = topk_size(fraction, block)
    index_dtype = jnp.uint16 if block <= _BLOCK else jnp.int32

    def window_spec(spec):
        lead = spec[0] if len(spec) and nb > 1 else None
        return LeafTopkWindow(PartitionSpec(None, lead, None), PartitionSpec(None, lead, None))

    def scatter(idx, values, add):
        def one(i, v):
            zeros = jnp.zeros((block,), jnp.float32)
            i, v = i.reshape(-1), v.reshape(-1).astype(jnp.float32)
            return zeros.at[i].add(v) if add else zeros.at[i].set(v, unique_indices=True)

        return jax.vmap(one, in_axes=(-2, -2))(idx, values)

    def compress(x, aux):
        values, idx = _block_topk(_to_blocks(x, nb), k, by_sort=True)
        return (values, idx), _from_blocks(scatter(idx, values, add=False), shape, x), aux

    def window_set(window, slot, payload):
        values, idx = payload
        return LeafTopkWindow(
            _set_row(window.values, slot, values),
            _set_row(window.index, slot, idx.astype(index_dtype)),
        )

    def window_dots(window, x, payload):
        del payload
        take = lambda row, idx: row[idx]  # one block: (block,), (m, k) -> (m, k)
        picked = jax.vmap(take, in_axes=(0, 1), out_axes=1)(
            _to_blocks(x, nb), window.index.astype(jnp.int32)
        )
        return jnp.sum(window.values * picked, axis=(1, 2))

    def window_combine(window, w):
        contrib = w[:, None, None] * window.values
        return _from_blocks(scatter(window.index.astype(jnp.int32), contrib, add=True), shape)

    return LeafCompressor(
        window_init=lambda m: LeafTopkWindow(
            jnp.zeros((m, nb, k), jnp.float32), jnp.zeros((m, nb, k), index_dtype)
        ),
        window_spec=window_spec,
        compress=compress,
        window_set=window_set,
        window_dots=window_dots,
        window_combine=window_combine,
    )


# ----------------------------------------------------------------------------------------------
# low-rank (PowerSGD)
# ----------------------------------------------------------------------------------------------


class _Layer(NamedTuple):
    offset: int
    size: int
    shape: tuple[int, ...]
    rank: int  # 0: stored densely
    rows: int
    cols: int


def _lowrank_plan(shapes: Shapes, rank: int) -> list[_Layer]:
    layers, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        rows, cols = (math.prod(shape[:-1]), shape[-1]) if len(shape) >= 2 else (size, 1)
        r = min(rank, rows, cols) if len(shape) >= 2 else 0
        if r * (rows + cols) >= size:  # factors would not be smaller: keep dense
            r = 0
        layers.append(_Layer(offset, size, shape, r, rows, cols))
        offset += size
    return layers


def _warm_start(seed: int, index: int, layer: _Layer) -> jax.Array:
    """The initial `Q (cols, r)` of layer number `index` (standard normal, as in PowerSGD); the
    same in both layouts, so they follow the same trajectory."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
    return jax.random.normal(key, (layer.cols, layer.rank), jnp.float32)


def lowrank(rank: int = 4, *, seed: int = 0) -> Compressor:
    """PowerSGD-style per-layer rank-`r` compressor (EFCP Section 3.2; Vogels et al. 2019, Alg. 1).

    Each layer's accumulator is viewed as a matrix `A` of shape `(prod(shape[:-1]), shape[-1])`
    (for a conv kernel `(kh*kw*c_in, c_out)`). One power iteration per step, warm-started from the
    previous step's `Q`:  `P = orth(A Q)`, `Q <- A^T P`, `C(A) = P Q^T`. Vectors and layers whose
    factors would not be smaller than the layer are passed through uncompressed. If `A^T P`
    vanishes (a zero accumulator), the previous `Q` is kept so the iteration cannot get stuck.

    `layout="flat"` orthonormalises with Householder QR (`jnp.linalg.qr`) on the replicated
    vector. `layout="leaves"` keeps the factors in the leaf's own axes, `P (*lead, r)` and
    `Q (cols, r)`, sharded like the leaf (its leading axes, its last axis), and orthonormalises
    by shifted CholeskyQR (`_cholesky_qr`): its cross-row reductions are `(r, r)` Gram matrices
    (a psum of `r^2` floats when the rows are sharded), where Householder QR would gather the
    rows. `C(A) = P P^T A` depends only on the span of `P`, so both layouts compute the same
    compressed gradients up to float32 rounding.

    Args:
      rank: target rank `r >= 1` (capped per layer at `min(rows, cols)`).
      seed: seed of the random initial `Q` (standard normal, as in PowerSGD).
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    rank = int(rank)

    def init(shapes):
        return tuple(
            _warm_start(seed, i, layer)
            for i, layer in enumerate(_lowrank_plan(shapes, rank))
            if layer.rank
        )

    def compress(a, aux, shapes):
        payload, new_aux, qs = [], [], iter(aux)
        for layer in _lowrank_plan(shapes, rank):
            flat = a[layer.offset : layer.offset + layer.size]
            if not layer.rank:
                payload.append(flat)
                continue
            mat = flat.reshape(layer.rows, layer.cols)
            q_old = next(qs)
            p, _ = jnp.linalg.qr(jnp.matmul(mat, q_old, precision=HIGHEST))
            q = jnp.matmul(mat.T, p, precision=HIGHEST)
            payload.append((p, q))
            new_aux.append(jnp.where(jnp.any(q != 0), q, q_old))
        return tuple(payload), decode(tuple(payload), shapes), tuple(new_aux)

    def decode(payload, shapes):
        pieces = []
        for layer, piece in zip(_lowrank_plan(shapes, rank), payload):
            if layer.rank:
                p, q = (f.astype(jnp.float32) for f in piece)
                piece = jnp.matmul(p, q.T, precision=HIGHEST).reshape(-1)
            pieces.append(piece.astype(jnp.float32))
        return jnp.concatenate(pieces)

    def window_init(m, shapes):
        return tuple(
            (
                jnp.zeros((m, layer.rows, layer.rank), jnp.float32),
                jnp.zeros((m, layer.cols, layer.rank), jnp.float32),
            )
            if layer.rank
            else jnp.zeros((m, layer.size), jnp.float32)
            for layer in _lowrank_plan(shapes, rank)
        )

    def window_set(window, slot, payload):
        return jax.tree.map(lambda buf, new: _set_row(buf, slot, new), window, payload)

    def window_dots(window, x, payload, shapes):
        total = 0.0
        for i, layer in enumerate(_lowrank_plan(shapes, rank)):
            buf = window[i]
            if not layer.rank:
                flat = x[layer.offset : layer.offset + layer.size]
                total = total + jnp.matmul(buf, flat, precision=HIGHEST)
            elif payload is not None:  # <P_i Q_i^T, P Q^T> = sum((P_i^T P) * (Q_i^T Q))
                p, q = (f.astype(jnp.float32) for f in payload[i])  # stored dtype
                pp = jnp.einsum("mna,nb->mab", buf[0], p, precision=HIGHEST)
                qq = jnp.einsum("mla,lb->mab", buf[1], q, precision=HIGHEST)
                total = total + jnp.sum(pp * qq, axis=(1, 2))
            else:  # <P_i Q_i^T, X> = sum(P_i * (X Q_i))
                mat = x[layer.offset : layer.offset + layer.size].reshape(layer.rows, layer.cols)
                xq = jnp.einsum("nl,mla->mna", mat, buf[1], precision=HIGHEST)
                total = total + jnp.sum(buf[0] * xq, axis=(1, 2))
        return total

    def window_combine(window, w, shapes):
        pieces = []
        for i, layer in enumerate(_lowrank_plan(shapes, rank)):
            buf = window[i]
            if layer.rank:
                scaled = buf[0] * w[:, None, None]
                piece = jnp.einsum("mna,mla->nl", scaled, buf[1], precision=HIGHEST)
            else:
                piece = jnp.matmul(w, buf, precision=HIGHEST)
            pieces.append(piece.reshape(-1))
        return jnp.concatenate(pieces)

    return Compressor(
        init=init,
        compress=compress,
        window_init=window_init,
        window_set=window_set,
        window_dots=window_dots,
        window_combine=window_combine,
        decode=decode,
        leaf=lambda shape: _lowrank_leaf(shape, rank, seed),
    )


# Shifts of the three CholeskyQR rounds, in units of `eps * trace(X^T X)`: the first round only
# preconditions (its shift is above the float32 rounding of a Gram matrix of moderately many
# rows), the other two are CholeskyQR2 on a well-conditioned basis.
_CHOLQR_SHIFTS = (10.0, 0.1, 0.1)


def _cholesky_qr(x: jax.Array, gram_sharding: Any = None) -> jax.Array:
    """An orthonormal basis of the columns (last axis) of `x (*rows, r)`, in `x`'s shape:
    shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Zhang, Yamamoto 2020).

    One round: `G = X^T X` (contracted over all row axes: the only cross-row reduction, an
    `(r, r)` psum when the rows are sharded), `L = chol(G + s I)`, `X <- X L^{-T}` (`L^{-1}` from
    `solve_triangular`, applied as an `(r, r)` matmul, so the rows are never reshaped or moved).
    Any invertible `L` keeps the span of `X`; the shift makes the Cholesky succeed on an
    ill-conditioned or rank-deficient `X` (the first, shifted round leaves a basis of condition
    `~sqrt(10 eps) cond(X)`), and the two plain rounds (CholeskyQR2) make it orthonormal to
    float32 rounding. Plain CholeskyQR2 needs `cond(X) < eps^(-1/2) ~ 3e3` in float32 (it
    squares the condition number); this handles `cond(X)` up to ~1e6.

    Guards: `x` is first scaled by its largest magnitude (no under/overflow in `G`). A round
    whose Cholesky is not finite or has a pivot below the shift (rounding of `G` larger than
    the shift: rank deficiency with many rows) uses instead the shift
    `(rows + r) eps trace(G)`, which bounds the rounding of `G`, so the result is always
    finite; a zero `x` gives zeros. Numerically null directions of a rank-deficient `x` come
    out as (near) orthonormal directions made of rounding noise, as with Householder QR.
    """
    rows, r = math.prod(x.shape[:-1]), x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    eye = jnp.eye(r, dtype=jnp.float32)
    scale = jnp.max(jnp.abs(x))
    x = x / jnp.where(scale > 0, scale, 1.0)
    eps = jnp.finfo(jnp.float32).eps
    for shift in _CHOLQR_SHIFTS:
        gram = jnp.tensordot(x, x, axes=(axes, axes), precision=HIGHEST, out_sharding=gram_sharding)
        trace = jnp.trace(gram)
        unit = jnp.where(trace > 0, eps * trace, 1.0)
        shifts = unit * jnp.asarray([shift, rows + r], jnp.float32)
        low = jnp.linalg.cholesky(gram + shifts[:, None, None] * eye)
        pivots = jnp.diagonal(low[0]) ** 2
        ok = jnp.all(jnp.isfinite(low[0])) & jnp.all(pivots >= 0.5 * shifts[0])
        inv = jax.scipy.linalg.solve_triangular(jnp.where(ok, low[0], low[1]), eye, lower=True)
        x = jnp.tensordot(x, inv, axes=((x.ndim - 1,), (1,)), precision=HIGHEST)  # X L^{-T}
    return x


class LeafLowrankWindow(NamedTuple):
    """Low-rank window of one leaf of shape `(*lead, cols)` (`layout="leaves"`): slot `i`
    stores `P_i Q_i^T` (the leaf's rows `*lead` against its last axis) as the factors, in the
    leaf's own axes so that they shard like the leaf."""

    p: jax.Array  # (m, *lead, r)
    q: jax.Array  # (m, cols, r)


def _out(x: jax.Array, spec: tuple[Any, ...]) -> NamedSharding | None:
    """`spec` on the mesh of `x` if `x` is sharded over Explicit mesh axes (the out_sharding a
    product that contracts sharded axes needs there), else None."""
    sharding = explicit_sharding(x)
    return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec(*spec))


def _lowrank_leaf(shape: tuple[int, ...], rank: int, seed: int) -> LeafCompressor:
    """Per-leaf form of `lowrank`: for a leaf `(*lead, cols)` that `_lowrank_plan` compresses,
    `A` is the leaf as a `(prod(lead), cols)` matrix, `P = orth(A Q)` is kept as `(*lead, r)`
    (shifted CholeskyQR, `_cholesky_qr`) and `Q <- A^T P` as `(cols, r)`; the warm-start `Q`
    is this leaf's compressor state, sharded like the leaf's last axis. Contractions over the
    leaf's rows (`P^T P`, `A^T P`, `P_i^T P`, `sum(P_i * (X Q_i))`) are psums of `r^2`,
    `cols r`, `m r^2` and `m` floats when the rows are sharded; over its last axis (`A Q`,
    `Q_i^T Q`), of `rows r` and `m r^2` floats; `G^T w` is local. Other leaves keep the dense
    window (`_dense_leaf`)."""
    plan = _lowrank_plan((shape,), rank)[0]
    if not plan.rank:
        return _dense_leaf(shape)
    nd = len(shape)
    lead = tuple(range(nd - 1))  # the row axes of the leaf

    def padded(spec):  # one entry per axis of the leaf
        return tuple(spec) + (None,) * (nd - len(spec))

    def leaf_spec(x):  # on Explicit mesh axes (else all None: only used there)
        sharding = explicit_sharding(x)
        return padded(() if sharding is None else sharding.spec)

    def window_spec(spec):
        spec = padded(spec)
        return LeafLowrankWindow(
            PartitionSpec(None, *spec[:-1], None), PartitionSpec(None, spec[-1], None)
        )

    def decode(payload):
        p, q = (f.astype(jnp.float32) for f in payload)
        return jnp.tensordot(p, q, axes=((nd - 1,), (1,)), precision=HIGHEST)

    def compress(x, q_old):
        spec = leaf_spec(x)
        x_q = jnp.tensordot(
            x, q_old, axes=((nd - 1,), (0,)), precision=HIGHEST, out_sharding=_out(x, spec[:-1])
        )
        p = _cholesky_qr(x_q, _out(x, ()))
        q = jnp.tensordot(
            x, p, axes=(lead, lead), precision=HIGHEST, out_sharding=_out(x, spec[-1:])
        )
        return (p, q), decode((p, q)), jnp.where(jnp.any(q != 0), q, q_old)

    def window_set(window, slot, payload):
        p, q = payload
        return LeafLowrankWindow(_set_row(window.p, slot, p), _set_row(window.q, slot, q))

    def window_dots(window, x, payload):
        wp, wq = window.p.astype(jnp.float32), window.q.astype(jnp.float32)
        if payload is not None:  # <P_i Q_i^T, P Q^T> = sum((P_i^T P) * (Q_i^T Q))
            p, q = (f.astype(jnp.float32) for f in payload)
            rows = tuple(range(1, nd))
            pp = jnp.tensordot(
                wp, p, axes=(rows, lead), precision=HIGHEST, out_sharding=_out(p, ())
            )
            qq = jnp.tensordot(
                wq, q, axes=((1,), (0,)), precision=HIGHEST, out_sharding=_out(q, ())
            )
            return jnp.sum(pp * qq, axis=(1, 2))
        # <P_i Q_i^T, X> = sum(P_i * (X Q_i))
        spec = leaf_spec(x)
        x_q = jnp.tensordot(
            x,
            wq,
            axes=((nd - 1,), (1,)),
            precision=HIGHEST,
            out_sharding=_out(x, (*spec[:-1], None, None)),
        )
        total = jnp.sum(wp * jnp.moveaxis(x_q, nd - 1, 0), axis=tuple(range(1, nd + 1)))
        out = _out(x, ())
        return total if out is None else jax.sharding.reshard(total, out)

    def window_combine(window, w):
        scaled = window.p.astype(jnp.float32) * w.reshape(-1, *([1] * nd))
        wq = window.q.astype(jnp.float32)
        return jnp.tensordot(scaled, wq, axes=((0, nd), (0, 2)), precision=HIGHEST)

    return LeafCompressor(
        window_init=lambda m: LeafLowrankWindow(
            jnp.zeros((m, *shape[:-1], plan.rank), jnp.float32),
            jnp.zeros((m, plan.cols, plan.rank), jnp.float32),
        ),
        window_spec=window_spec,
        compress=compress,
        window_set=window_set,
        window_dots=window_dots,
        window_combine=window_combine,
        init=lambda index: _warm_start(seed, index, plan),
        state_spec=lambda spec: PartitionSpec(padded(spec)[-1], None),
        decode=decode,
    )


# ----------------------------------------------------------------------------------------------
# error feedback + window integration (shared by mfac and ggt)
# ----------------------------------------------------------------------------------------------


def _stored(
    decode: Callable[[Any], jax.Array] | None, payload: Any, c: jax.Array, storage_dtype: Any
) -> tuple[Any, jax.Array]:
    """`(payload, c)` rounded to `storage_dtype` (what a window of that dtype holds), `c` back in
    float32 (`decode(payload)`, or rounded elementwise when `decode` is None); unchanged for
    float32 storage."""
    if jnp.dtype(storage_dtype) == jnp.float32:
        return payload, c
    payload = jax.tree.map(lambda x: _to_storage(x, storage_dtype), payload)
    if decode is not None:
        return payload, decode(payload)
    return payload, c.astype(storage_dtype).astype(jnp.float32)


def _decoder(compressor: Compressor, shapes: Shapes) -> Callable[[Any], jax.Array] | None:
    """`payload -> c` of a flat-layout compressor (None if it rounds `c` elementwise)."""
    decode = compressor.decode
    return None if decode is None else lambda payload: decode(payload, shapes)


def _to_storage(x: jax.Array, storage_dtype: Any) -> jax.Array:
    """Floating arrays cast to `storage_dtype`; indices and other integers unchanged."""
    return x.astype(storage_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def error_feedback(
    compressor: Compressor,
    g: jax.Array,
    error: jax.Array,
    aux: Any,
    shapes: Shapes,
    storage_dtype: Any = jnp.float32,
) -> tuple[Any, jax.Array, jax.Array, Any]:
    """One error-feedback step (EFCP Algorithm 1): `a = e + g; c = C(a); e = a - c`.

    With a `storage_dtype` narrower than float32 (e.g. bfloat16), `c` is what the window stores
    (the payload rounded to it), so the rounding is part of the compression error that is fed
    back, and the error `e` is itself stored rounded to `storage_dtype`; `a` and `c` are float32.
    Returns `(payload, c, new_error, new_aux)`.
    """
    a = error.astype(jnp.float32) + g
    payload, c, aux = compressor.compress(a, aux, shapes)
    payload, c = _stored(_decoder(compressor, shapes), payload, c, storage_dtype)
    return payload, c, (a - c).astype(storage_dtype), aux


class Integrated(NamedTuple):
    """Result of pushing one gradient into a window (see `integrate_gradient`)."""

    c: jax.Array  # the (compressed) gradient that entered the window, dense (d,)
    dots: jax.Array  # G @ c, (m,), also the new row of the Gram matrix
    window: Any
    gram: jax.Array
    error: jax.Array
    aux: Any


def integrate_gradient(
    compressor: Compressor | None,
    g: jax.Array,
    window: Any,
    gram: jax.Array,
    error: jax.Array,
    aux: Any,
    slot: jax.Array,
    shapes: Shapes,
    feedback: bool = True,
    storage_dtype: Any = jnp.float32,
) -> Integrated:
    """Write the (error-feedback compressed) gradient into ring-buffer slot `slot`.

    The Gram matrix `G G^T` is kept current with one new row/column per step, O(m d) dense or
    O(m k) top-k (M-FAC paper, Frantar et al. 2021, Section 3.2 "dynamic algorithm"; the
    reference's `update_mul`). With `compressor=None` the gradient enters as is and `error` is
    left untouched; with `feedback=False` (the EFCP paper's ablation) `C(g)` enters and the
    compression error is discarded. The window may store its values in a narrower
    `storage_dtype`; `c` and the Gram row are then those of the rounded, stored values (float32
    arithmetic), so the Gram matrix is exactly that of the window.
    """
    if compressor is None or not feedback:
        compressor = identity() if compressor is None else compressor
        payload, c, aux = compressor.compress(g, aux, shapes)
        payload, c = _stored(_decoder(compressor, shapes), payload, c, storage_dtype)
    else:
        payload, c, error, aux = error_feedback(compressor, g, error, aux, shapes, storage_dtype)
    window = compressor.window_set(window, slot, payload)
    dots = compressor.window_dots(window, c, payload, shapes)
    return Integrated(c, dots, window, _set_gram_row(gram, slot, dots), error, aux)


def _set_gram_row(gram: jax.Array, slot: jax.Array, dots: jax.Array) -> jax.Array:
    """`gram` with row and column `slot` replaced by `dots` (the new window row's products)."""
    m = gram.shape[0]
    gram = lax.dynamic_update_slice(gram, dots.reshape(1, m), (slot, 0))
    return lax.dynamic_update_slice(gram, dots.reshape(m, 1), (0, slot))


LAYOUTS = ("flat", "leaves")


def check_layout(layout: Any, compressor: Compressor | None) -> str:
    """`layout` if it is `"flat"` or `"leaves"` and the compressor supports it, else a
    ValueError naming it."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'flat' or 'leaves', got {layout!r}")
    if layout == "leaves" and compressor is not None and compressor.leaf is None:
        raise ValueError(
            "layout='leaves' needs a compressor with a per-leaf form (None, topk(...), "
            "lowrank(...)); this compressor has none (Compressor.leaf is None): use "
            "layout='flat'"
        )
    return layout


def init_window_fields(
    compressor: Compressor | None,
    params: Any,
    num_grads: int,
    with_momentum: bool,
    error_feedback: bool = True,
    storage_dtype: Any = jnp.float32,
    layout: str = "flat",
) -> dict[str, Any]:
    """Initial state fields shared by `MFACState` and `GGTState` (all zeros, static shapes).

    `error` (the error-feedback accumulator) and `momentum` are `optax.EmptyState()` (no array)
    when unused (no compressor or `error_feedback=False`; no momentum), so every state can be
    checkpointed (orbax refuses zero-size arrays). The window's floating arrays and the error
    buffer are stored in `storage_dtype`; the Gram matrix and the momentum stay float32.

    `layout="flat"`: one window over the flattened `(d,)` vector, replicated. `layout="leaves"`:
    a pytree like `params` of per-leaf windows (`LeafCompressor`; the dense one is
    `(m, *leaf.shape)`), `error` and `momentum` are pytrees like `params`, and so is the
    compressor state when some leaf has one (low-rank's `Q`; `()` otherwise, stateless leaves
    are `()` in it), each placed with the sharding its `LeafCompressor` derives from its
    parameter leaf's when that is known (concrete arrays with a `NamedSharding`, or Explicit
    mesh axes). Under `jax.jit` on Auto axes nothing is known: call `init` on the placed params
    outside `jit`, or give the state's shardings as `out_shardings`.
    """
    with_error = compressor is not None and error_feedback
    comp = identity() if compressor is None else compressor
    shapes = tuple(tuple(int(s) for s in leaf.shape) for leaf in jax.tree.leaves(params))
    fields = dict(
        count=jnp.zeros((), jnp.int32),
        gram=jnp.zeros((num_grads, num_grads), jnp.float32),
        compressor_state=() if layout == "leaves" else comp.init(shapes),
    )
    stored = lambda tree: jax.tree.map(lambda x: _to_storage(x, storage_dtype), tree)
    if layout == "flat":
        d = _numel(shapes)
        fields.update(
            window=stored(comp.window_init(num_grads, shapes)),
            error=jnp.zeros((d,), storage_dtype) if with_error else optax.EmptyState(),
            momentum=jnp.zeros((d,), jnp.float32) if with_momentum else optax.EmptyState(),
        )
        return replicate_on_params_mesh(fields, params)
    # count and Gram matrix replicated on the params' mesh, so every state leaf keeps one
    # sharding from step to step
    placed = [p for p in jax.tree.leaves(params) if _spec(p)[0] is not None]
    if placed:
        fields = jax.tree.map(lambda x: _place(x, PartitionSpec(), placed[0]), fields)
    like = lambda dtype: jax.tree.map(
        lambda p: _place(jnp.zeros(p.shape, dtype), PartitionSpec(*_spec(p)[1]), p), params
    )
    leaves, treedef = jax.tree.flatten(params)
    window, aux = [], []
    for i, p in enumerate(leaves):
        ops = comp.leaf(tuple(p.shape))
        spec = PartitionSpec(*_spec(p)[1])
        window.append(_place_tree(stored(ops.window_init(num_grads)), ops.window_spec(spec), p))
        aux.append(_place_tree(ops.init(i), ops.state_spec(spec), p))
    fields.update(
        compressor_state=_leaf_tree(treedef, aux),
        window=treedef.unflatten(window),
        error=like(storage_dtype) if with_error else optax.EmptyState(),
        momentum=like(jnp.float32) if with_momentum else optax.EmptyState(),
    )
    return fields


def _place_tree(tree: Any, specs: Any, p: Any) -> Any:
    """Every array of `tree` placed (`_place`) with its `PartitionSpec` in `specs` (a pytree
    like `tree`), on the mesh of parameter leaf `p`."""
    return jax.tree.map(
        lambda spec, x: _place(x, spec, p),
        specs,
        tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def _leaf_tree(treedef: Any, items: list[Any]) -> Any:
    """The per-leaf compressor states `items` as a pytree like the parameters, or `()` when no
    leaf has one (the dense and top-k leaves)."""
    return treedef.unflatten(items) if jax.tree.leaves(items) else ()


def _spec(p: Any) -> tuple[Any, tuple[Any, ...]]:
    """`(mesh, spec)` of a parameter leaf's `NamedSharding` if known: a concrete array's
    sharding, or the sharding in the type of an array on Explicit mesh axes; `(None, ())` else."""
    sharding = None
    if isinstance(p, jax.Array) and not isinstance(p, jax.core.Tracer):
        sharding = p.sharding
    else:
        sharding = getattr(jax.typeof(p), "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
        return None, ()
    return sharding.mesh, tuple(sharding.spec)


def _axis_size(mesh: Any, entry: Any) -> int:
    """Number of shards of an array axis partitioned as `entry` (a spec entry) on `mesh`."""
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[n] for n in names)


def _place(x: jax.Array, spec: PartitionSpec, p: Any) -> jax.Array:
    """`x` placed on the mesh of parameter leaf `p` with `spec` (no-op if `p`'s is unknown); an
    axis whose size the spec's shard count does not divide (e.g. fewer top-k blocks than
    shards) is replicated instead."""
    mesh, _ = _spec(p)
    if mesh is None:
        return x
    spec = PartitionSpec(
        *(e if n % _axis_size(mesh, e) == 0 else None for e, n in zip(spec, x.shape))
    )
    sharding = NamedSharding(mesh, spec)
    if isinstance(p, jax.core.Tracer):
        return jax.sharding.reshard(x, sharding)
    return jax.device_put(x, sharding)


class WindowOps(NamedTuple):
    """The two products with the current window, in the layout's vector format (a flat `(d,)`
    array for `"flat"`, a pytree like the gradients for `"leaves"`)."""

    dots: Callable[[Any], jax.Array]  # x -> G x, (m,)
    combine: Callable[[jax.Array], Any]  # w -> G^T w


def push_gradient(
    compressor: Compressor | None,
    updates: Any,
    state: Any,
    num_grads: int,
    error_feedback: bool = True,
    storage_dtype: Any = jnp.float32,
    layout: str = "flat",
) -> tuple[Integrated, jax.Array, WindowOps, Callable[[Any], Any]]:
    """Integrate `updates` (a gradient pytree) into the window of `state` (an `MFACState` or
    `GGTState`) at slot `count % num_grads`.

    Returns `(integrated, slot, ops, unravel)`: `ops` are the products with the new window,
    and `unravel` maps a vector of the layout back to the gradient pytree (shapes, dtypes and,
    on Explicit meshes, shardings).
    """
    slot = state.count % num_grads
    if layout == "leaves":
        return _push_leaves(compressor, updates, state, slot, error_feedback, storage_dtype)
    shapes = tuple(tuple(int(s) for s in leaf.shape) for leaf in jax.tree.leaves(updates))
    g, unravel = ravel_f32(updates)
    new = integrate_gradient(
        compressor,
        g,
        state.window,
        state.gram,
        state.error,
        state.compressor_state,
        slot,
        shapes,
        error_feedback,
        storage_dtype,
    )
    comp = identity() if compressor is None else compressor
    ops = WindowOps(
        dots=lambda x: comp.window_dots(new.window, x, None, shapes),
        combine=lambda w: comp.window_combine(new.window, w, shapes),
    )
    return new, slot, ops, unravel


def _push_leaves(compressor, updates, state, slot, feedback, storage_dtype):
    """`push_gradient` for `layout="leaves"`: error feedback, compression and window update per
    leaf, in the leaf's own shape and sharding; the Gram row is the sum of the leaves' dots."""
    leaves, treedef = jax.tree.flatten(updates)
    dtypes = [x.dtype for x in leaves]
    comp = identity() if compressor is None else compressor
    ops = [comp.leaf(tuple(x.shape)) for x in leaves]
    with_error = compressor is not None and feedback
    errors = treedef.flatten_up_to(state.error) if with_error else [None] * len(leaves)
    auxes = state.compressor_state
    auxes = treedef.flatten_up_to(auxes) if jax.tree.leaves(auxes) else [()] * len(leaves)
    cs, new_errors, windows, new_auxes, dots = [], [], [], [], 0.0
    for op, g, e, window, aux in zip(
        ops, leaves, errors, treedef.flatten_up_to(state.window), auxes
    ):
        a = g.astype(jnp.float32) if e is None else e.astype(jnp.float32) + g
        payload, c, aux = op.compress(a, aux)
        payload, c = _stored(op.decode, payload, c, storage_dtype)
        window = op.window_set(window, slot, payload)
        dots = dots + op.window_dots(window, c, payload)
        cs.append(c)
        new_errors.append(None if e is None else (a - c).astype(storage_dtype))
        windows.append(window)
        new_auxes.append(aux)
    error = treedef.unflatten(new_errors) if with_error else state.error
    new = Integrated(
        treedef.unflatten(cs),
        dots,
        treedef.unflatten(windows),
        _set_gram_row(state.gram, slot, dots),
        error,
        _leaf_tree(treedef, new_auxes),
    )
    window_ops = WindowOps(
        dots=lambda x: sum(
            op.window_dots(w, v, None) for op, w, v in zip(ops, windows, treedef.flatten_up_to(x))
        ),
        combine=lambda w: treedef.unflatten(
            [op.window_combine(win, w) for op, win in zip(ops, windows)]
        ),
    )

    def unravel(tree):
        return treedef.unflatten(
            [x.astype(dt) for x, dt in zip(treedef.flatten_up_to(tree), dtypes)]
        )

    return new, slot, window_ops, unravel


def window_parts(
    state_type: Callable[..., Any],
    compressor: Compressor | None,
    num_grads: int,
    with_momentum: bool,
    error_feedback: bool,
    storage_dtype: Any,
    layout: Any,
) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]:
    """`(init_fn, push)` shared by `mfac`, `ggt` and their `scale_by_*` forms, after checking
    `storage_dtype` and `layout`: `init_fn(params)` is the zero `state_type` (`MFACState`,
    `GGTState`) from `init_window_fields`, `push(updates, state)` is `push_gradient`."""
    storage = check_storage_dtype(storage_dtype)
    layout = check_layout(layout, compressor)

    def init_fn(params: Any) -> Any:
        return state_type(
            **init_window_fields(
                compressor, params, num_grads, with_momentum, error_feedback, storage, layout
            )
        )

    def push(updates: Any, state: Any):
        return push_gradient(compressor, updates, state, num_grads, error_feedback, storage, layout)

    return init_fn, push


def next_window_fields(state: Any, new: Integrated, momentum: jax.Array) -> dict[str, Any]:
    """The fields of the next `MFACState` / `GGTState` after `push_gradient`."""
    return dict(
        count=optax.safe_int32_increment(state.count),
        window=new.window,
        gram=new.gram,
        error=new.error,
        compressor_state=new.aux,
        momentum=momentum,
    )
