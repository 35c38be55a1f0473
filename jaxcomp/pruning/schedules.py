"""Sparsity schedules: jittable ``step -> sparsity`` functions."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxcomp.pruning.masks import check_sparsity

Schedule = Callable[[ArrayLike], jax.Array]


def constant(sparsity: float) -> Schedule:
    """The same sparsity at every step."""
    check_sparsity(sparsity)
    return lambda step: jnp.full((), sparsity, jnp.float32)


def cubic(
    initial: float,
    final: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
) -> Schedule:
    """Cubic sparsity schedule (Zhu & Gupta 2017, Eq. 1; LoSparse Eq. 9).

    ``s_t = initial`` for ``t < warmup_steps``; then
    ``s_t = final + (initial - final) * (1 - progress)^3`` with
    ``progress = (t - warmup) / (total - warmup - cooldown)``; ``s_t = final`` for the last
    ``cooldown_steps`` steps.
    """
    check_sparsity(initial, "initial")
    check_sparsity(final, "final")
    ramp = total_steps - warmup_steps - cooldown_steps
    if warmup_steps < 0 or cooldown_steps < 0 or ramp <= 0:
        raise ValueError(
            f"need total_steps > warmup_steps + cooldown_steps >= 0, got total_steps={total_steps}, "
            f"warmup_steps={warmup_steps}, cooldown_steps={cooldown_steps}"
        )

    def schedule(step: ArrayLike) -> jax.Array:
        progress = jnp.clip((jnp.asarray(step, jnp.float32) - warmup_steps) / ramp, 0.0, 1.0)
        return jnp.float32(final) + jnp.float32(initial - final) * (1.0 - progress) ** 3

    return schedule
