"""Shared projections between teacher and student weights (Zhao et al., 2021, §3.2 "Shared
Projections"; arXiv 1909.11687v1 §3.3).

The teacher and the student have the same architecture up to their widths (hidden ``d_t`` vs
``d_s``, intermediate ``f_t`` vs ``f_s``). One learned matrix per dimension pair, shared by every
layer, maps between them:

* **down-projection**: a teacher tensor is projected into the student's shape along every axis
  whose size differs, ``U^T W_t U`` for a ``(d_t, d_t)`` kernel, ``U^T W_t V`` for the
  ``(d_t, f_t)`` intermediate kernel, ``U^T b_t`` for a bias, with ``U: (d_t, d_s)``,
  ``V: (f_t, f_s)``; the loss is the mean squared error to the student tensor;
* **up-projection**: the student tensor is projected into the teacher's shape, ``U W_s U^T``, and
  compared with the teacher tensor.

The loss averages the per-tensor mean squared errors over all tensors present in both models
(same key) whose every axis is either equal or has a projection (the paper's layer-wise loss
with the projections shared across layers). :func:`hidden_projection_loss` is the hidden-state
variant (MSE between ``h_t U`` and ``h_s`` layer by layer on the same input).

Everything is a pure function of dicts of arrays, so it jits and differentiates with respect to
the student tensors and the projections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "hidden_projection_loss",
    "init_projections",
    "matched_keys",
    "project",
    "projection_key",
    "shared_projection_loss",
]

DIRECTIONS = ("down", "up")


def projection_key(teacher_dim: int, student_dim: int) -> str:
    """The dict key of the projection between a teacher and a student dimension, ``"384->128"``."""
    return f"{int(teacher_dim)}->{int(student_dim)}"


def init_projections(
    key: jax.Array, dim_pairs: Sequence[tuple[int, int]], *, dtype=jnp.float32
) -> dict[str, jax.Array]:
    """One ``(d_t, d_s)`` matrix per dimension pair, initialised with orthonormal columns scaled
    by ``sqrt(d_t / d_s)``, so ``U^T W U`` of a random ``W`` keeps its entry scale."""
    out = {}
    for i, (dt, ds) in enumerate(dim_pairs):
        if not 0 < ds <= dt:
            raise ValueError(f"projection dims must satisfy 0 < d_s <= d_t, got ({dt}, {ds})")
        q = jax.nn.initializers.orthogonal()(jax.random.fold_in(key, i), (dt, ds), dtype)
        out[projection_key(dt, ds)] = q * np.sqrt(dt / ds).astype(np.float32)
    return out


def _axis_projections(t_shape, s_shape, projections) -> list | None:
    """Per axis: None (equal sizes) or the projection key; None overall if any axis can't map."""
    if len(t_shape) != len(s_shape):
        return None
    keys = []
    for dt, ds in zip(t_shape, s_shape):
        if dt == ds:
            keys.append(None)
        elif projection_key(dt, ds) in projections:
            keys.append(projection_key(dt, ds))
        else:
            return None
    return keys


def matched_keys(
    teacher: Mapping[str, jax.Array],
    student: Mapping[str, jax.Array],
    projections: Mapping[str, jax.Array],
) -> list[str]:
    """Keys present in both dicts whose shapes are related by the given projections (sorted)."""
    return sorted(
        k
        for k in student
        if k in teacher
        and _axis_projections(np.shape(teacher[k]), np.shape(student[k]), projections) is not None
    )


def project(
    x: jax.Array, axis_keys: Sequence[str | None], projections: Mapping[str, jax.Array], direction
) -> jax.Array:
    """Applies ``U`` (``direction="down"``: contract the teacher axis, ``x U``) or ``U^T``
    (``"up"``: expand the student axis, ``x U^T``) along every axis with a projection key."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    for axis, k in enumerate(axis_keys):
        if k is None:
            continue
        u = projections[k]
        m = u if direction == "down" else u.T
        x = jnp.moveaxis(jnp.tensordot(jnp.moveaxis(x, axis, -1), m, axes=1), -1, axis)
    return x


def shared_projection_loss(
    teacher: Mapping[str, jax.Array],
    student: Mapping[str, jax.Array],
    projections: Mapping[str, jax.Array],
    *,
    direction: str = "up",
    keys: Sequence[str] | None = None,
) -> jax.Array:
    """Mean over matched tensors of the MSE between projected teacher and student weights.

    Args:
      teacher, student: flat ``{name: array}`` dicts with the same names (e.g. NNX paths).
      projections: ``{projection_key(d_t, d_s): (d_t, d_s) matrix}`` from :func:`init_projections`.
      direction: ``"down"`` (MSE(down(W_t), W_s)) or ``"up"`` (MSE(up(W_s), W_t)).
      keys: the tensors to compare; default :func:`matched_keys`.

    Raises:
      ValueError: an unknown direction, or no tensor matched.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    keys = matched_keys(teacher, student, projections) if keys is None else list(keys)
    if not keys:
        raise ValueError("no tensor of the student matches a teacher tensor under the projections")
    losses = []
    for k in keys:
        t, s = teacher[k], student[k]
        axis_keys = _axis_projections(np.shape(t), np.shape(s), projections)
        if axis_keys is None:
            raise ValueError(f"tensor {k!r}: shapes {np.shape(t)} and {np.shape(s)} do not match")
        if direction == "down":
            losses.append(jnp.mean((project(t, axis_keys, projections, "down") - s) ** 2))
        else:
            losses.append(jnp.mean((project(s, axis_keys, projections, "up") - t) ** 2))
    return jnp.mean(jnp.stack(losses))


def hidden_projection_loss(
    teacher_hidden: Sequence[jax.Array],
    student_hidden: Sequence[jax.Array],
    u: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Hidden-state variant: mean over layers of the masked MSE between ``h_t U`` and ``h_s``.

    Args:
      teacher_hidden, student_hidden: per-layer ``(batch, seq, d_t)`` / ``(batch, seq, d_s)``.
      u: the ``(d_t, d_s)`` hidden projection.
      mask: optional ``(batch, seq)`` weights (attention mask); padding does not count.
    """
    if len(teacher_hidden) != len(student_hidden):
        raise ValueError(
            f"teacher has {len(teacher_hidden)} hidden states, student {len(student_hidden)}"
        )
    losses = []
    for ht, hs in zip(teacher_hidden, student_hidden):
        err = jnp.mean((ht @ u - hs) ** 2, axis=-1)
        if mask is None:
            losses.append(jnp.mean(err))
        else:
            m = mask.astype(err.dtype)
            losses.append(jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1.0))
    return jnp.mean(jnp.stack(losses))
