"""Small helpers shared by the optax transforms in `jaxcomp.optim`.

* `state_nbytes` counts the bytes an optimizer state holds (for memory tables).
* `ravel_f32` flattens a gradient pytree into one float32 vector (the "global" view used by the
  full-matrix preconditioners M-FAC and GGT) and returns the inverse that restores every leaf's
  shape *and dtype*.
* `resolve_learning_rate`, `is_static_zero` and the `check_*` validators keep the transforms free of
  Python branching on traced values while still failing early on bad static input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

Shapes = tuple[tuple[int, ...], ...]


def state_nbytes(state: Any) -> int:
    """Bytes held by the arrays of an optimizer state (any pytree).

    Works on concrete arrays (`jax.Array`, `numpy.ndarray`), on `jax.ShapeDtypeStruct` (so
    `jax.eval_shape(tx.init, params)` can be measured without allocating) and ignores non-array
    leaves such as Python scalars.
    """
    total = 0
    for leaf in jax.tree.leaves(state):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            total += int(math.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def leaf_shapes(tree: Any) -> Shapes:
    """Static shapes of the leaves of `tree`, in `jax.tree.leaves` order."""
    return tuple(tuple(int(s) for s in leaf.shape) for leaf in jax.tree.leaves(tree))


def ravel_f32(tree: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """Flatten `tree` into one float32 vector; the returned function inverts it.

    The inverse restores each leaf's original shape and dtype (bf16 gradients give bf16 updates),
    while all arithmetic on the flat vector happens in float32.
    """
    leaves = jax.tree.leaves(tree)
    dtypes = [leaf.dtype for leaf in leaves]
    shardings = [explicit_sharding(leaf) for leaf in leaves]
    flat, unravel_f32 = ravel_pytree(jax.tree.map(_replicated_f32, tree))

    def unravel(vec: jax.Array) -> Any:
        out = unravel_f32(vec.astype(jnp.float32))
        out_leaves, treedef = jax.tree.flatten(out)
        restored = [
            (x if sh is None else jax.sharding.reshard(x, sh)).astype(dt)
            for x, dt, sh in zip(out_leaves, dtypes, shardings)
        ]
        return jax.tree.unflatten(treedef, restored)

    return flat, unravel


def explicit_sharding(x: Any) -> NamedSharding | None:
    """The sharding in `x`'s type if it is sharded over an Explicit mesh axis, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.empty:
        return None
    return sharding if any(p is not None for p in sharding.spec) else None


def replicate_on_params_mesh(state: Any, params: Any) -> Any:
    """Reshard every array of `state` to replicated on the Explicit mesh `params` live on.

    A no-op unless some leaf of `params` is typed with an Explicit-axes mesh. There, arrays
    created without a mesh cannot be combined with arrays that carry one, so a state built from
    `jnp.zeros` is placed (replicated) on the params' mesh, and keeps that sharding every step.
    """
    mesh = None
    for leaf in jax.tree.leaves(params):
        sharding = getattr(jax.typeof(leaf), "sharding", None)
        if isinstance(sharding, NamedSharding) and not sharding.mesh.empty:
            if any(t == AxisType.Explicit for t in sharding.mesh.axis_types):
                mesh = sharding.mesh
                break
    if mesh is None:
        return state
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.sharding.reshard(x, replicated), state)


def _replicated_f32(x: Any) -> jax.Array:
    """float32 copy of `x`, resharded to replicated if it is sharded over Explicit mesh axes.

    With Explicit axis types, operands of a concatenation must share one sharding; the global
    (flattened) preconditioner works on the replicated vector.
    """
    x = jnp.asarray(x, jnp.float32)
    sharding = explicit_sharding(x)
    if sharding is None:
        return x
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))


def resolve_learning_rate(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """Value of a constant learning rate or an optax schedule at step `count`."""
    if callable(learning_rate):
        return jnp.asarray(learning_rate(count), jnp.float32)
    return jnp.asarray(learning_rate, jnp.float32)


def at_step(value: Any, count: jax.Array) -> Any:
    """An optax schedule's float32 value at step `count`; a constant is returned unchanged (a
    Python float stays a compile-time constant)."""
    return jnp.asarray(value(count), jnp.float32) if callable(value) else value


def is_static_zero(value: Any) -> bool:
    """True iff `value` is a Python/NumPy number equal to zero (never true for traced values).

    Used to drop state buffers (e.g. a momentum accumulator) that are provably unused, while a
    hyperparameter injected as an array by `optax.inject_hyperparams` keeps them.
    """
    return isinstance(value, (int, float, np.number)) and float(value) == 0.0


def _is_static_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def check_int_at_least(name: str, value: Any, low: int) -> int:
    """`value` as an int, or a ValueError naming it if it is not an integer >= `low`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_positive(name: str, value: ArrayLike) -> None:
    """ValueError naming `value` if it is a static number that is not finite and > 0 (arrays,
    e.g. hyperparameters injected by `optax.inject_hyperparams`, are not checked)."""
    if _is_static_number(value) and not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def check_nonnegative(name: str, value: ArrayLike) -> None:
    """ValueError naming `value` if it is a static number that is not finite and >= 0."""
    if _is_static_number(value) and not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def check_positive_or_schedule(name: str, value: Any) -> None:
    """ValueError naming `value` unless it is a finite number > 0, an array (a hyperparameter
    injected by `optax.inject_hyperparams`, not checked) or an optax schedule (a callable of the
    step count) whose value at step 0 is finite and > 0 (later steps are traced, not checked)."""
    if callable(value):
        try:
            first = float(value(0))
        except (TypeError, jax.errors.ConcretizationTypeError):
            return  # not evaluable outside a trace: checked by nobody, like an injected array
        if not (math.isfinite(first) and first > 0):
            raise ValueError(f"{name} schedule must be finite and > 0, got {first!r} at step 0")
        return
    if isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, bool):
        return
    if not _is_static_number(value):
        raise ValueError(f"{name} must be a number or an optax schedule, got {value!r}")
    check_positive(name, value)


def check_storage_dtype(value: Any) -> np.dtype:
    """`value` as a NumPy dtype, or a ValueError naming it unless it is float32, bfloat16 or
    float16 (the dtypes a preconditioner's window may be stored in)."""
    allowed = (jnp.float32, jnp.bfloat16, jnp.float16)
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype not in [jnp.dtype(a) for a in allowed]:
        raise ValueError(f"storage_dtype must be float32, bfloat16 or float16, got {value!r}")
    return dtype


def check_unit_interval(name: str, value: ArrayLike) -> None:
    """ValueError naming `value` if it is a static number outside [0, 1) (momentum, beta1)."""
    if _is_static_number(value) and not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_learning_rate(value: optax.ScalarOrSchedule) -> None:
    """ValueError if a static learning rate is NaN or infinite (schedules are not checked)."""
    if _is_static_number(value) and not math.isfinite(float(value)):
        raise ValueError(f"learning_rate must be finite, got {value!r}")


def scaled_step(
    name: str,
    learning_rate: Any,
    count: jax.Array,
    u: Any,
    weight_decay: Any,
    params: Any,
    layout: str = "flat",
) -> Any:
    """`learning_rate(count) * u + weight_decay * w` (decoupled weight decay not scaled by the
    learning rate, as EFCP's `DenseMFAC`), shared by `mfac` and `ggt`; `u` and the result are a
    flat vector (`layout="flat"`) or a pytree like the params (`"leaves"`); `ValueError` naming
    `name` when weight decay needs `params` and got none."""
    step = optax.tree.scale(resolve_learning_rate(learning_rate, count), u)
    if is_static_zero(weight_decay):
        return step
    if params is None:
        raise ValueError(f"{name} with weight_decay > 0 needs params, got params=None")
    if layout == "flat":
        w = ravel_f32(params)[0]
    else:
        w = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    return optax.tree.add_scale(step, weight_decay, w)


# Spectrum of a window's Gram matrix (shared by GGT and the M-FAC fallback).


def _semidefinite_cholesky(corr: jax.Array, tol: Any) -> jax.Array:
    """Lower-triangular `L` with `L L^T ~= corr` for a positive *semi*-definite `corr` (unit
    diagonal): a row whose Schur-complement pivot is `<= tol` is numerically a combination of
    the rows before it, and its column of `L` is set to zero (deflation) instead of dividing by
    rounding noise. O(m^3) in a `fori_loop` of `m` steps."""
    m = corr.shape[0]
    rows = jnp.arange(m)

    def step(k, low):
        col = corr[:, k] - jnp.matmul(low, low[k], precision=lax.Precision.HIGHEST)
        pivot = col[k]
        ok = pivot > tol
        col = jnp.where((rows >= k) & ok, col / jnp.sqrt(jnp.where(ok, pivot, 1.0)), 0.0)
        return low.at[:, k].set(col)

    return lax.fori_loop(0, m, step, jnp.zeros_like(corr))


def gram_spectrum(gram: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(keep, s, U)`: singular values `s` of the window and its left singular vectors `U` (the
    Gram eigenvectors), from the `r x r` Gram matrix alone.

    The eigenvalues of `G G^T` are the squares `s^2`: a float32 `eigh` of the Gram matrix
    resolves them only to `~eps * s_max^2`, so after one gradient 1e4x larger than the others
    every other direction would drop below rounding and the update would freeze. Instead the
    Gram matrix is scaled to unit diagonal (`D = diag(G G^T)`; empty slots become identity
    rows), Cholesky-factored (`G G^T = L L^T` with `L = D^(1/2) chol(D^(-1/2) G G^T D^(-1/2))`,
    accurate whatever the row norms), and `s, U` come from the SVD of `L` (rows sorted by norm),
    which resolves each `s` to float32 precision relative to its own rows, not to `s_max`. When
    the scaled matrix is numerically singular (repeated or collinear gradients), the factor is
    computed by a semidefinite Cholesky that deflates the dependent rows
    (`_semidefinite_cholesky`; `lax.cond`: only that branch pays for it). `keep` marks the
    `rank` nonzero singular values (rank = rows kept by the factorisation, minus empty slots);
    the others are treated as exact zeros (`s` is 1 there, to stay finite).
    """
    r = gram.shape[0]
    tol = r * jnp.finfo(jnp.float32).eps
    diag = jnp.diagonal(gram)
    empty = diag <= 0.0
    scale = jnp.sqrt(jnp.where(empty, 1.0, diag))
    corr = gram / scale[:, None] / scale[None, :]
    corr = jnp.where(empty[:, None] | empty[None, :], jnp.eye(r, dtype=gram.dtype), corr)
    factor = jnp.linalg.cholesky(corr)
    healthy = jnp.all(jnp.isfinite(factor)) & jnp.all(jnp.diagonal(factor) ** 2 > tol)
    factor = lax.cond(healthy, lambda: factor, lambda: _semidefinite_cholesky(corr, tol))
    low = jnp.where(empty[:, None], 0.0, scale[:, None] * factor)
    rank = jnp.sum(jnp.any(factor != 0.0, axis=0) & ~empty)
    order = jnp.argsort(-jnp.where(empty, -1.0, diag))
    u_sorted, s, _ = jnp.linalg.svd(low[order], full_matrices=False)
    vecs = jnp.zeros_like(u_sorted).at[order].set(u_sorted)
    keep = jnp.arange(r) < rank  # `s` is sorted in descending order
    return keep, jnp.where(keep, s, 1.0), vecs
