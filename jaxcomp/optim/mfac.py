"""M-FAC: matrix-free inverse empirical-Fisher preconditioning, optionally EFCP-compressed.

Frantar, Kurtic, Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
Information" (NeurIPS 2021), Section 3 (the "dynamic algorithm"), and Modoranu et al., "Error
Feedback Can Accurately Compress Preconditioners" (EFCP), Algorithm 1 for the compressed window.

The empirical Fisher over a sliding window of the last `m` gradients (rows of `G`, zeros until
the window has filled) with damping `lambda`,

    F = lambda * I + (1/m) * sum_i g_i g_i^T = lambda * I + (1/m) G^T G,

is inverted on a vector with the Woodbury identity, never forming a `d x d` matrix:

    F^{-1} x = (1/lambda) * (x - G^T (m * lambda * I + G G^T)^{-1} G x).        (M-FAC eq. 3)

The `m x m` Gram matrix `G G^T` is updated one row per step (O(m d) dense, O(m k) top-k) and the
small system is solved by Cholesky (O(m^3)); the reference instead maintains an LU-like
factorisation in O(m^2) per step, which is algebraically the same inverse.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.scipy.linalg import cho_solve

from jaxcomp.optim.compress import (
    HIGHEST,
    Compressor,
    next_window_fields,
    window_parts,
)
from jaxcomp.optim.utils import (
    at_step,
    check_int_at_least,
    check_learning_rate,
    check_nonnegative,
    check_positive_or_schedule,
    check_unit_interval,
    gram_spectrum,
    is_static_zero,
    scaled_step,
)


class MFACState(NamedTuple):
    """State of `mfac`.

    Attributes:
      count: int32 number of steps taken; the next gradient goes to slot `count % m`.
      window: the last `m` (compressed) gradients, format given by the compressor
        (dense: `(m, d)`), values in the `storage_dtype` (float32 by default).
      gram: `(m, m)` float32 Gram matrix `G G^T` of the window.
      error: `(d,)` error-feedback accumulator `e` in the `storage_dtype`
        (`optax.EmptyState()` without a compressor).
      compressor_state: compressor state (PowerSGD's warm-start `Q`s, in `layout="leaves"` a
        pytree like the params; `()` otherwise).
      momentum: `(d,)` momentum buffer `v` (`optax.EmptyState()` when `momentum == 0`).
    """

    count: jax.Array
    window: Any
    gram: jax.Array
    error: jax.Array
    compressor_state: Any
    momentum: jax.Array


def inverse_fisher_product(
    gram: jax.Array, dots: jax.Array, x: jax.Array, combine: Any, damping: Any
) -> jax.Array:
    """`F^{-1} x` from the window's Gram matrix (M-FAC eq. 3, Woodbury identity).

    Args:
      gram: `(m, m)` Gram matrix `G G^T`.
      dots: `(m,)` products `G x`.
      x: `(d,)` vector to precondition.
      combine: `w -> G^T w`, linear combination of the window rows.
      damping: `lambda > 0`.
    """
    m = gram.shape[0]
    coeffs = _solve_shifted_gram(gram, dots, m * damping)
    return (x - combine(coeffs)) / damping


def window_row_direction(gram: jax.Array, slot: jax.Array, combine: Any, damping: Any) -> jax.Array:
    """`F^{-1} c` for the window row `c = G^T e_slot` (the gradient that just entered).

    Algebraically equal to `inverse_fisher_product(gram, gram[slot], c, combine, damping)`:
    with `A = G G^T`, `(I - (m lambda I + A)^{-1} A) e = m lambda (m lambda I + A)^{-1} e`, so

        F^{-1} c = m * G^T (m * lambda * I + G G^T)^{-1} e_slot.

    This form has no `(c - G^T z) / lambda` cancellation, whose float32 rounding error is
    amplified by `1 / lambda` (1e4 to 1e6 for the usual dampings).
    """
    m = gram.shape[0]
    unit = jax.nn.one_hot(slot, m, dtype=gram.dtype)
    return jax.tree.map(lambda x: m * x, combine(_solve_shifted_gram(gram, unit, m * damping)))


def _shifted_cholesky(gram: jax.Array, shift: Any) -> tuple[jax.Array, jax.Array]:
    """Cholesky factor of `gram + shift I` and whether it is usable (see `_solve_shifted_gram`)."""
    m = gram.shape[0]
    factor = jnp.linalg.cholesky(gram + shift * jnp.eye(m, dtype=gram.dtype))
    # rounding level of row i of the Gram matrix; a pivot below it (and above `shift` only by
    # noise) means row i is numerically a combination of the rows before it
    row_tol = m * jnp.finfo(jnp.float32).eps * jnp.diagonal(gram)
    pivots = jnp.diagonal(factor) ** 2
    healthy = jnp.all(jnp.isfinite(factor)) & jnp.all((pivots > row_tol) | (shift >= row_tol))
    return factor, healthy


def uses_cholesky(state: MFACState, damping: Any) -> jax.Array:
    """Whether the next direction from `state`'s window is solved by Cholesky (True) or by the
    spectral fallback of a numerically rank-deficient window (False); for benchmarks and logs.
    A damping schedule is evaluated at `state.count`."""
    gram = state.gram
    lam = at_step(damping, state.count)
    return _shifted_cholesky(gram, gram.shape[0] * lam)[1]


def _solve_shifted_gram(gram: jax.Array, rhs: jax.Array, shift: Any) -> jax.Array:
    """`(gram + shift I)^{-1} rhs`, to be multiplied by `G^T`: Cholesky, or a spectral fallback.

    The exact pivots of the Cholesky factor are `>= shift`. When the window is numerically
    rank-deficient (collinear or repeated gradients, `m > d`) and `shift` is below the float32
    rounding level of a row of the Gram matrix (`m * eps * gram_ii`), that row's pivot collapses
    to rounding noise (or NaN) and the solve would be garbage along the null space of `G G^T`
    (empty, all-zero slots are exact and harmless). Then we solve with the spectrum of the
    window, `G G^T = U diag(s^2) U^T` from `gram_spectrum` (a semidefinite Cholesky of the
    Gram matrix scaled to unit diagonal, then an SVD of the factor): each nonzero `s` is
    resolved relative to its own rows, so a gradient 1e4x smaller than the largest in the window
    keeps its direction, and only the deflated, numerically-null directions `u` (for which
    `G^T u = 0` up to rounding relative to the rows they combine) are dropped. `lax.cond` runs
    only one branch.
    """
    factor, healthy = _shifted_cholesky(gram, shift)

    def fast() -> jax.Array:
        return cho_solve((factor, True), rhs)

    def robust() -> jax.Array:
        keep, s, vecs = gram_spectrum(gram)
        coeff = jnp.where(keep, 1.0 / (s * s + shift), 0.0)
        proj = jnp.matmul(vecs.T, rhs, precision=HIGHEST)
        return jnp.matmul(vecs, coeff * proj, precision=HIGHEST)

    return lax.cond(healthy, fast, robust)


def mfac(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_grads: int = 1024,
    damping: optax.ScalarOrSchedule = 1e-4,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    compressor: Compressor | None = None,
    error_feedback: bool = True,
    storage_dtype: Any = jnp.float32,
    layout: str = "flat",
) -> optax.GradientTransformationExtraArgs:
    """M-FAC optimizer (Frantar et al. 2021, Alg. 2) with an optional EFCP-compressed window.

    One global preconditioner over all parameters flattened to a vector of size `d`. Each step:

    1. `g` = flattened gradient; with a compressor, error feedback (EFCP Alg. 1)
       `a = e + g, c = C(a), e = a - c`; without one, `c = g`.
    2. `c` overwrites the oldest slot of the ring buffer (it enters the window *before* it is
       preconditioned, as the reference's `update_mul`) and one row of `G G^T` is refreshed.
    3. `u = F^{-1} c` with `F = damping * I + (1/m) sum_i g_i g_i^T` (a damping schedule is
       evaluated at the step count before the step, like the learning rate), i.e.
       `u = (1/damping) (c - G^T (m damping I + G G^T)^{-1} G c)` (M-FAC eq. 3), evaluated in
       the equivalent cancellation-free form `m G^T (m damping I + G G^T)^{-1} e_slot`
       (`window_row_direction`; `c` is row `slot` of `G`).
    4. Momentum and decoupled weight decay as in the EFCP reference (`DenseMFAC`, `wd_type="wd"`):
       `v = momentum * v + u`, and the parameters move by `-learning_rate * v - weight_decay * w`
       (weight decay is *not* scaled by the learning rate, like the reference's
       `p.mul_(1 - wd)`).

    With `learning_rate=1`, `momentum=0`, `weight_decay=0` the update is exactly `-u`.

    Args:
      learning_rate: scalar or optax schedule.
      num_grads: window size `m >= 1`.
      damping: `lambda > 0`, a float or an optax schedule of the step count (its value at step 0
        is checked; later values must stay > 0).
      momentum: heavy-ball coefficient on the preconditioned direction (no dampening), in
        [0, 1).
      weight_decay: decoupled weight decay; needs `params` in `update`.
      compressor: `jaxcomp.optim.topk(...)` or `jaxcomp.optim.lowrank(...)` for EFCP;
        `None` stores dense gradients.
      error_feedback: keep the compression error for the next step (EFCP Alg. 1); `False` is
        the paper's ablation, which stores `C(g)` and drops the rest (no error buffer).
      storage_dtype: dtype of the stored window values and error-feedback buffer: float32, or
        `jnp.bfloat16` / `jnp.float16` to halve them. The gradient entering the window is
        rounded to it (with error feedback the rounding joins the compression error); the Gram
        matrix, the solve, the direction and the momentum stay float32.
      layout: `"flat"` (default): one window over all parameters flattened to `(d,)`, kept
        replicated (on a mesh the gradient is gathered). `"leaves"`: one window per parameter
        leaf, `(m, *leaf.shape)` for the dense window, sharded like the leaf, error and momentum
        buffers shaped and sharded like the parameters; `G x` is a sum of per-leaf
        contractions (under sharding a psum of `m` floats), `G^T w` is local to each shard,
        and only the `(m, m)` Gram matrix and its solve are replicated. Same numbers as
        `"flat"` up to float32 summation order. Supports `compressor=None`, `topk(...)`
        (block-wise along each leaf's leading axis, `num_blocks` = the shard count keeps the
        selection shard-local) and `lowrank(...)` (factors `(m, *leaf.shape[:-1], r)` and
        `(m, leaf.shape[-1], r)` sharded like the leaf's axes, the warm-start `Q` in
        `compressor_state` sharded like its last axis, and CholeskyQR instead of Householder
        QR, so only sums of `r^2`, `m r^2` and at most `max(rows, cols) r` floats cross the
        shards).

    Returns:
      An `optax.GradientTransformationExtraArgs` whose state is an `MFACState`.
      `scale_by_mfac` is the bare preconditioner, to compose in `optax.chain`.

    Non-finite gradients: one NaN/inf gradient enters the window, the Gram matrix, the
    error-feedback buffer and the momentum and poisons every later step. Wrap the transform,
    `optax.apply_if_finite(mfac(...), max_consecutive_errors=k)`: a non-finite gradient then
    gives a zero update and leaves the whole `MFACState` untouched (tested in
    `tests/test_validation.py`).
    """
    m = check_int_at_least("num_grads", num_grads, 1)
    check_learning_rate(learning_rate)
    check_unit_interval("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)
    use_momentum = not is_static_zero(momentum)
    init_fn, direction = _mfac_parts(
        m, damping, compressor, error_feedback, storage_dtype, layout, use_momentum
    )

    def update_fn(
        updates: Any, state: MFACState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, MFACState]:
        del extra_args
        u, new, unravel = direction(updates, state)
        v = state.momentum
        if use_momentum:
            v = optax.tree.add_scale(u, momentum, v)
            u = v
        step = scaled_step("mfac", learning_rate, state.count, u, weight_decay, params, layout)
        new_state = MFACState(**next_window_fields(state, new, v))
        return unravel(optax.tree.scale(-1.0, step)), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _mfac_parts(
    m: int,
    damping: Any,
    compressor: Compressor | None,
    error_feedback: bool,
    storage_dtype: Any,
    layout: str,
    use_momentum: bool,
):
    """`(init_fn, direction)` shared by `mfac` and `scale_by_mfac`; `direction(updates, state)`
    pushes the gradient into the window and returns `(u, integrated, unravel)` with the
    direction `u = F^{-1} c` in the layout's vector format."""
    check_positive_or_schedule("damping", damping)
    init_fn, push = window_parts(
        MFACState, compressor, m, use_momentum, error_feedback, storage_dtype, layout
    )

    def direction(updates: Any, state: MFACState):
        new, slot, ops, unravel = push(updates, state)
        lam = at_step(damping, state.count)
        return window_row_direction(new.gram, slot, ops.combine, lam), new, unravel

    return init_fn, direction


def scale_by_mfac(
    *,
    num_grads: int = 1024,
    damping: optax.ScalarOrSchedule = 1e-4,
    compressor: Compressor | None = None,
    error_feedback: bool = True,
    storage_dtype: Any = jnp.float32,
    layout: str = "flat",
) -> optax.GradientTransformationExtraArgs:
    """The bare M-FAC preconditioner: the update is `F^{-1} c` (no learning rate, no sign, no
    momentum), to compose inside `optax.chain`, e.g.
    `optax.chain(scale_by_mfac(num_grads=512), optax.trace(0.9), optax.scale(-lr))`.
    `mfac(lr, ...)` with `momentum=0, weight_decay=0` equals
    `optax.chain(scale_by_mfac(...), optax.scale(-lr))`. Arguments as in `mfac`; the state is an
    `MFACState` (its `momentum` is `optax.EmptyState()`).
    """
    m = check_int_at_least("num_grads", num_grads, 1)
    init_fn, direction = _mfac_parts(
        m, damping, compressor, error_feedback, storage_dtype, layout, False
    )

    def update_fn(updates: Any, state: MFACState, params: Any = None, **extra_args: Any):
        del params, extra_args
        u, new, unravel = direction(updates, state)
        return unravel(u), MFACState(**next_window_fields(state, new, state.momentum))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
