"""Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018) and feature MSE.

PKT matches the *conditional probability distributions* of pairwise similarities in a batch
(PKT Sec. 3, Eqs. 5-9): each sample's similarities to the other samples of the batch are turned
into a distribution by row normalisation, and the student's distribution is pulled towards the
teacher's. Feature dimensions of teacher and student may differ; only the batch size must agree.

Two kernels / divergences are offered:

* ``kernel="cosine"`` -- the original PKT: cosine similarity mapped to ``(s + 1) / 2``,
  row-normalised, ``KL(teacher || student)`` averaged over all ``B * B`` entries (PKT Eq. 9 and
  the authors' code).
* ``kernel="combined"`` -- the InDistill reference's variant (``methods/pkt.py``): the sum of the
  cosine kernel above and the distance kernel ``1 / (1 + ||x_i - x_j||)``, each row-normalised,
  each compared with the symmetric (Jeffreys) divergence ``(t - s) * (log t - log s)``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp


def _flat_pair(teacher: jax.Array, student: jax.Array) -> tuple[jax.Array, jax.Array]:
    t, s = jnp.asarray(teacher), jnp.asarray(student)
    if t.ndim < 1 or s.ndim < 1 or t.shape[0] != s.shape[0]:
        raise ValueError(
            "teacher and student features must have the same batch size, got shapes "
            f"{tuple(t.shape)} and {tuple(s.shape)}"
        )
    if t.shape[0] < 2:
        raise ValueError(f"PKT needs a batch of at least 2 samples, got {t.shape[0]}")
    return (
        t.reshape(t.shape[0], -1).astype(jnp.float32),
        s.reshape(s.shape[0], -1).astype(jnp.float32),
    )


def cosine_kernel(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``(cos(x_i, x_j) + 1) / 2`` for the rows of ``x`` (PKT Eq. 8); a zero row has cosine 0."""
    x = x / (jnp.linalg.norm(x, axis=1, keepdims=True) + eps)
    return (x @ x.T + 1.0) / 2.0


def distance_kernel(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``1 / (1 + sqrt(max(||x_i - x_j||^2, 0) + eps))`` (the InDistill reference's second
    kernel; ``eps`` keeps the square root differentiable on the diagonal)."""
    sq = jnp.sum(x * x, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    return 1.0 / (1.0 + jnp.sqrt(d2 + eps))


def _rows(k: jax.Array) -> jax.Array:
    return k / jnp.sum(k, axis=1, keepdims=True)


def pkt_loss(
    teacher: jax.Array,
    student: jax.Array,
    *,
    kernel: Literal["cosine", "combined"] = "cosine",
    eps: float = 1e-6,
) -> jax.Array:
    """PKT loss between ``(B, ...)`` teacher and student features (flattened per sample).

    ``kernel="cosine"``: ``mean_ij t_ij * log((t_ij + eps) / (s_ij + eps))`` with the row-normalised
    cosine kernels ``t``, ``s`` (PKT Eqs. 8-9). ``kernel="combined"``: ``mean_ij (t - s)(log t -
    log s)`` summed over the cosine and distance kernels (InDistill reference). The teacher side
    is not stopped here; pass ``jax.lax.stop_gradient(teacher)`` when it is trainable.
    """
    t, s = _flat_pair(teacher, student)
    if kernel == "cosine":
        pt, ps = _rows(cosine_kernel(t, eps)), _rows(cosine_kernel(s, eps))
        return jnp.mean(pt * jnp.log((pt + eps) / (ps + eps)))
    if kernel == "combined":
        total = jnp.float32(0.0)
        for k in (cosine_kernel, distance_kernel):
            pt, ps = _rows(k(t, eps)), _rows(k(s, eps))
            total = total + jnp.mean((pt - ps) * (jnp.log(pt) - jnp.log(ps)))
        return total
    raise ValueError(f"kernel must be 'cosine' or 'combined', got {kernel!r}")


def feature_mse(target: jax.Array, pred: jax.Array) -> jax.Array:
    """Mean squared error over all elements (``torch.nn.MSELoss()``; InDistill Sec. 3.2's
    layer-wise loss between a student block and the pruned auxiliary's block)."""
    t, p = jnp.asarray(target), jnp.asarray(pred)
    if t.shape != p.shape:
        if t.ndim < 1 or p.ndim < 1 or t.shape[0] != p.shape[0]:
            raise ValueError(
                "target and prediction must have the same batch size, got shapes "
                f"{tuple(t.shape)} and {tuple(p.shape)}"
            )
        raise ValueError(
            f"target and prediction shapes differ: {tuple(t.shape)} vs {tuple(p.shape)}"
        )
    diff = p.astype(jnp.float32) - t.astype(jnp.float32)
    return jnp.mean(diff * diff)
