"""GGT: full-matrix adaptive preconditioning over a gradient window, optionally EFCP-compressed.

Agarwal et al., "Efficient Full-Matrix Adaptive Regularization" (ICML 2019), Algorithm 1, and
Modoranu et al., "Error Feedback Can Accurately Compress Preconditioners" (EFCP) for the
compressed window.

With the last `r` (compressed) gradients as the rows of `G` (`r x d`; zeros until filled), GGT
preconditions with the square root of the windowed outer-product matrix,

    u = (sqrt(G^T G) + eps * I)^{-1} x,

where `G^T G = sum_i g_i g_i^T` is `d x d` (the paper writes the window as `d x r` columns and
this matrix as `G G^T`). It is computed from the small `r x r` Gram matrix `G G^T = V S^2 V^T`
(eigendecomposition): `U = G^T V S^{-1}` has orthonormal columns spanning the window and
`sqrt(G^T G) = U S U^T`, so

    u = U (S + eps)^{-1} U^T x + (x - U U^T x) / eps
      = x / eps + G^T V diag(-1 / (eps * s_i * (s_i + eps))) V^T (G x).

The component of `x` orthogonal to the window sees eigenvalue 0 of `sqrt(G^T G)` and is scaled
by `1 / eps`, exactly as in the reference (`update = Ur diag Ur^T g + g / eps`). Directions of
the Gram matrix with eigenvalue `<= r * float32_eps * max eigenvalue` (numerically outside the
window's span, e.g. empty slots) are treated as eigenvalue 0; the reference instead adds `1e-6 I`
to the Gram matrix. Without momentum, `x` is the gradient that just entered the window, so its
orthogonal component is zero up to rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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


class GGTState(NamedTuple):
    """State of `ggt`.

    Attributes:
      count: int32 number of steps taken; the next gradient goes to slot `count % r`.
      window: the last `r` (compressed) gradients, format given by the compressor, values in
        the `storage_dtype`.
      gram: `(r, r)` float32 Gram matrix `G G^T` of the window.
      error: `(d,)` error-feedback accumulator in the `storage_dtype` (`optax.EmptyState()`
        without a compressor).
      compressor_state: compressor state (PowerSGD's warm-start `Q`s, in `layout="leaves"` a
        pytree like the params; `()` otherwise).
      momentum: `(d,)` first-moment buffer (`optax.EmptyState()` when `beta1 == 0`).
    """

    count: jax.Array
    window: Any
    gram: jax.Array
    error: jax.Array
    compressor_state: Any
    momentum: jax.Array


def inverse_sqrt_product(
    gram: jax.Array, dots: jax.Array, x: jax.Array, combine: Any, eps: Any
) -> jax.Array:
    """`(sqrt(G^T G) + eps I)^{-1} x` from the `r x r` Gram matrix (GGT Alg. 1, see module doc).

    Args:
      gram: `(r, r)` Gram matrix `G G^T` of the window rows.
      dots: `(r,)` products `G x`.
      x: `(d,)` vector to precondition.
      combine: `w -> G^T w`.
      eps: `eps > 0`.
    """
    keep, s, vecs = gram_spectrum(gram)
    coeff = jnp.where(keep, -1.0 / (eps * s * (s + eps)), 0.0)
    proj = jnp.matmul(vecs.T, dots, precision=HIGHEST)
    w = jnp.matmul(vecs, coeff * proj, precision=HIGHEST)
    return jax.tree.map(lambda a, b: a / eps + b, x, combine(w))


def window_row_sqrt_direction(
    gram: jax.Array, slot: jax.Array, combine: Any, eps: Any
) -> jax.Array:
    """`(sqrt(G^T G) + eps I)^{-1} c` for the window row `c = G^T e_slot`.

    `c` lies in the window's span, so the `1 / eps` orthogonal term vanishes exactly and
    `u = G^T V diag(1 / (s_i + eps)) V^T e_slot` (since `G^T e = U S V^T e`): no cancellation.
    """
    keep, s, vecs = gram_spectrum(gram)
    coeff = jnp.where(keep, 1.0 / (s + eps), 0.0)
    return combine(jnp.matmul(vecs, coeff * vecs[slot], precision=HIGHEST))


def ggt(
    learning_rate: optax.ScalarOrSchedule,
    *,
    num_grads: int = 100,
    eps: optax.ScalarOrSchedule = 1e-5,
    beta1: float = 0.0,
    weight_decay: float = 0.0,
    compressor: Compressor | None = None,
    error_feedback: bool = True,
    storage_dtype: Any = jnp.float32,
    layout: str = "flat",
) -> optax.GradientTransformationExtraArgs:
    """GGT optimizer (Agarwal et al. 2019, Alg. 1) with an optional EFCP-compressed window.

    Each step: `c` = the flattened gradient (or, with a compressor, `C(e + g)` with error
    feedback); `c` enters the ring buffer of `r = num_grads` slots and refreshes one row of the
    Gram matrix; with `beta1 > 0` the preconditioned vector is the first moment
    `x = beta1 * x + (1 - beta1) * c` (the reference applies momentum to the gradient after it has
    entered the window), else `x = c`; the update is `-learning_rate * u` with
    `u = (sqrt(G^T G) + eps I)^{-1} x` (`inverse_sqrt_product`; for `x = c`, the row that just
    entered, the equivalent `window_row_sqrt_direction`, which has no `1 / eps` term).

    Args:
      learning_rate: scalar or optax schedule.
      num_grads: window size `r >= 1`.
      eps: `eps > 0`, the regulariser added to the square root; a float or an optax schedule of
        the step count, evaluated before the step (its value at step 0 is checked).
      beta1: momentum of the preconditioned vector, in [0, 1).
      weight_decay: decoupled weight decay, as in `mfac`: the parameters also move by
        `-weight_decay * w` (not scaled by the learning rate); needs `params` in `update`.
      compressor: `jaxcomp.optim.topk(...)` or `jaxcomp.optim.lowrank(...)`, or `None`.

      error_feedback: keep the compression error for the next step (EFCP Alg. 1); `False` is
        the paper's ablation (no error buffer).
      storage_dtype: dtype of the stored window values and error buffer, as in `mfac`
        (`jnp.bfloat16` halves them; all arithmetic stays float32).
      layout: `"flat"` or `"leaves"` (per-leaf windows sharded like the parameters), as in
        `mfac`; the `(r, r)` Gram matrix and its spectrum are replicated.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose state is a `GGTState`.
      `scale_by_ggt` is the bare preconditioner, to compose in `optax.chain`.
    """
    r = check_int_at_least("num_grads", num_grads, 1)
    check_learning_rate(learning_rate)
    check_nonnegative("weight_decay", weight_decay)
    init_fn, direction = _ggt_parts(
        r, eps, beta1, compressor, error_feedback, storage_dtype, layout
    )

    def update_fn(
        updates: Any, state: GGTState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, GGTState]:
        del extra_args
        u, new_state, unravel = direction(updates, state)
        step = scaled_step("ggt", learning_rate, state.count, u, weight_decay, params, layout)
        return unravel(optax.tree.scale(-1.0, step)), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_ggt(
    *,
    num_grads: int = 100,
    eps: optax.ScalarOrSchedule = 1e-5,
    beta1: float = 0.0,
    compressor: Compressor | None = None,
    error_feedback: bool = True,
    storage_dtype: Any = jnp.float32,
    layout: str = "flat",
) -> optax.GradientTransformationExtraArgs:
    """The bare GGT preconditioner: the update is `u = (sqrt(G^T G) + eps I)^{-1} x` (no
    learning rate, no sign), to compose inside `optax.chain`; `ggt(lr, ...)` without weight decay
    equals `optax.chain(scale_by_ggt(...), optax.scale(-lr))`. `beta1` is the first moment that
    is *preconditioned* (inside the transform, as GGT's Alg. 1); arguments as in `ggt`.
    """
    r = check_int_at_least("num_grads", num_grads, 1)
    init_fn, direction = _ggt_parts(
        r, eps, beta1, compressor, error_feedback, storage_dtype, layout
    )

    def update_fn(
        updates: Any, state: GGTState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, GGTState]:
        del params, extra_args
        u, new_state, unravel = direction(updates, state)
        return unravel(u), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _ggt_parts(
    r: int,
    eps: Any,
    beta1: Any,
    compressor: Compressor | None,
    error_feedback: bool,
    storage_dtype: Any,
    layout: str,
):
    """`(init_fn, direction)` shared by `ggt` and `scale_by_ggt`; `direction(updates, state)`
    pushes the gradient into the window and returns `(u, new_state, unravel)`, `u` in the
    layout's vector format."""
    check_positive_or_schedule("eps", eps)
    check_unit_interval("beta1", beta1)
    use_momentum = not is_static_zero(beta1)
    init_fn, push = window_parts(
        GGTState, compressor, r, use_momentum, error_feedback, storage_dtype, layout
    )

    def direction(updates: Any, state: GGTState):
        new, slot, ops, unravel = push(updates, state)
        step_eps = at_step(eps, state.count)
        x = new.c
        if use_momentum:  # x leaves the window's span: general formula with the 1/eps term
            x = jax.tree.map(lambda v, c: beta1 * v + (1.0 - beta1) * c, state.momentum, new.c)
            u = inverse_sqrt_product(new.gram, ops.dots(x), x, ops.combine, step_eps)
        else:  # x is the row that just entered the window
            u = window_row_sqrt_direction(new.gram, slot, ops.combine, step_eps)
        new_state = GGTState(
            **next_window_fields(state, new, x if use_momentum else state.momentum)
        )
        return u, new_state, unravel

    return init_fn, direction
