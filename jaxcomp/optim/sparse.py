"""Sparse training as optax transforms: fine-tuning with a fixed mask (CrAM's
``--train_sparse``), gradual magnitude pruning (Zhu & Gupta 2017) and movement pruning (Sanh et
al., 2020), both under the same cubic schedule.

Both wrap a ``base`` optimizer and keep the sparsity *in the weights*: the base sees the masked
gradient, and the emitted update of a pruned weight is ``-w``, so ``optax.apply_updates`` alone
leaves it at exactly 0 (``w + (-w) == 0`` in IEEE arithmetic), whatever the base does (momentum,
Adam moments, decoupled weight decay). A weight that is not yet 0 when it is pruned becomes 0 at
that step.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxcomp.optim.utils import check_int_at_least
from jaxcomp.pruning.distributions import DISTRIBUTIONS, distribution_mask
from jaxcomp.pruning.masks import _check_like, apply_mask, check_sparsity, topk_mask
from jaxcomp.pruning.schedules import cubic
from jaxcomp.pruning.select import Where, select


def _masked_step(base, grads, base_state, params, mask, extra_args):
    """The base step on the masked gradient; updates that zero every pruned weight."""
    if params is None:
        raise ValueError("a masked transform needs params: call update(grads, state, params)")
    updates, base_state = base.update(apply_mask(grads, mask), base_state, params, **extra_args)
    updates = jax.tree.map(
        lambda m, u, p: jnp.where(m, u, -p).astype(u.dtype), mask, updates, params
    )
    return updates, base_state


class SparseFinetuneState(NamedTuple):
    """``mask``: the fixed bool mask (True = kept); ``base_state``: the wrapped optimizer's."""

    mask: Any
    base_state: optax.OptState


def sparse_finetune(
    base: optax.GradientTransformation, mask: Any
) -> optax.GradientTransformationExtraArgs:
    """Train with a fixed sparsity ``mask`` (CrAM's ``--train_sparse``: one-shot pruning, then
    fine-tuning in which the pruned weights stay 0; ``manager.py`` re-applies the masks after
    every step).

    ``mask`` is a bool pytree with the structure and leaf shapes of the params (e.g. from
    ``jaxcomp.pruning.one_shot``); it lives in the state, so it is checkpointed and sharded like
    the params. The base sees ``mask * grads`` (its moments of pruned weights stay 0; for
    elementwise bases the kept weights follow the reference's trajectory), and pruned weights get
    the update ``-w``. Extra args are passed on to ``base``.
    """
    for leaf in jax.tree.leaves(mask):
        if jnp.result_type(leaf) != jnp.bool_:
            raise ValueError(f"mask leaves must be bool, got dtype {jnp.result_type(leaf)}")
    base = optax.with_extra_args_support(base)

    def init_fn(params):
        _check_like("mask", mask, params)
        return SparseFinetuneState(
            mask=jax.tree.map(jnp.asarray, mask), base_state=base.init(params)
        )

    def update_fn(grads, state, params=None, **extra_args):
        updates, base_state = _masked_step(
            base, grads, state.base_state, params, state.mask, extra_args
        )
        return updates, SparseFinetuneState(state.mask, base_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class GMPState(NamedTuple):
    """``count``: steps taken; ``mask``: the current mask; ``sparsity``: the target sparsity of
    the current mask (0 before ``begin_step``); ``base_state``: the wrapped optimizer's."""

    count: jax.Array
    mask: Any
    sparsity: jax.Array
    base_state: optax.OptState


def gmp_sparsity(
    step: Any,
    *,
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    update_every: int,
) -> jax.Array:
    """Target sparsity of ``gmp``'s mask at ``step`` (Zhu & Gupta 2017, Eq. 1):
    ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` at the pruning steps
    ``t = t0, t0 + dt, ..., t0 + n dt`` (``t0 = begin_step``, ``dt = update_every``,
    ``t0 + n dt = end_step``), held between them and after ``end_step``; 0 before ``t0``."""
    t = jnp.asarray(step, jnp.int32)
    last = begin_step + (jnp.maximum(t - begin_step, 0) // update_every) * update_every
    last = jnp.minimum(last, end_step)
    s = cubic(initial_sparsity, final_sparsity, end_step, warmup_steps=begin_step)(last)
    return jnp.where(t < begin_step, 0.0, s).astype(jnp.float32)


def _gmp_schedule(initial_sparsity, final_sparsity, begin_step, end_step, update_every) -> dict:
    """Checked keyword arguments of :func:`gmp_sparsity` (``ValueError`` naming the bad one)."""
    check_sparsity(initial_sparsity, "initial_sparsity")
    check_sparsity(final_sparsity, "final_sparsity")
    begin_step = check_int_at_least("begin_step", begin_step, 0)
    update_every = check_int_at_least("update_every", update_every, 1)
    end_step = check_int_at_least("end_step", end_step, begin_step + 1)
    if (end_step - begin_step) % update_every:
        raise ValueError(
            f"end_step - begin_step must be a multiple of update_every, got end_step={end_step}, "
            f"begin_step={begin_step}, update_every={update_every}"
        )
    return dict(
        initial_sparsity=initial_sparsity,
        final_sparsity=final_sparsity,
        begin_step=begin_step,
        end_step=end_step,
        update_every=update_every,
    )


def _is_pruning_step(t: jax.Array, schedule: dict) -> jax.Array:
    """``t = begin_step + j * update_every <= end_step``."""
    begin, every = schedule["begin_step"], schedule["update_every"]
    return (t >= begin) & (t <= schedule["end_step"]) & ((t - begin) % every == 0)


def gmp(
    base: optax.GradientTransformation,
    *,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    update_every: int,
    initial_sparsity: float = 0.0,
    distribution: Literal["uniform", "global", "erk"] = "global",
    where: Where | str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune", Sec. 3).

    At steps ``t = begin_step + j * update_every <= end_step`` the mask is recomputed by
    magnitude from the current weights at ``gmp_sparsity(t)`` (the cubic schedule, Eq. 1),
    spread over the selected leaves by ``distribution`` (``jaxcomp.pruning.distribution_mask``:
    ``"uniform"`` per layer, ``"global"`` one threshold, ``"erk"`` Erdos-Renyi-Kernel); between
    these steps and after ``end_step`` the mask is fixed. Pruned weights stay exactly 0 through
    ``optax.apply_updates`` (see the module docstring). ``end_step - begin_step`` must be a
    multiple of ``update_every`` so that the last pruning step reaches ``final_sparsity``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be 'uniform', 'global' or 'erk', got {distribution!r}")
    schedule = _gmp_schedule(initial_sparsity, final_sparsity, begin_step, end_step, update_every)
    base = optax.with_extra_args_support(base)

    def init_fn(params):
        select(params, where)  # fail early on a where that selects nothing
        return GMPState(
            count=jnp.zeros((), jnp.int32),
            mask=jax.tree.map(lambda p: jnp.ones(jnp.shape(p), jnp.bool_), params),
            sparsity=jnp.zeros((), jnp.float32),
            base_state=base.init(params),
        )

    def update_fn(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("gmp needs params: call update(grads, state, params)")
        t = state.count
        prune = _is_pruning_step(t, schedule)
        s = gmp_sparsity(t, **schedule)
        mask = lax.cond(
            prune,
            lambda: distribution_mask(params, s, distribution, where=where),
            lambda: state.mask,
        )
        updates, base_state = _masked_step(base, grads, state.base_state, params, mask, extra_args)
        return updates, GMPState(optax.safe_increment(t), mask, s, base_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class MovementState(NamedTuple):
    """``count``: steps taken; ``mask``: the current mask; ``scores``: the accumulated movement
    scores ``S`` (float32, shape ``()`` for unselected leaves); ``sparsity``: the target sparsity
    of the current mask; ``base_state``: the wrapped optimizer's."""

    count: jax.Array
    mask: Any
    scores: Any
    sparsity: jax.Array
    base_state: optax.OptState


def movement_pruning(
    base: optax.GradientTransformation,
    *,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    update_every: int,
    initial_sparsity: float = 0.0,
    scope: Literal["global", "layer"] = "global",
    where: Where | str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hard movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning", §4, Eq. 3-4).

    Every step, each selected weight accumulates the movement score
    ``S <- S - (dL/dW) * W`` (``grads`` times the current ``params``; Sanh et al. accumulate the
    same quantity through the straight-through estimator, with the score learning rate as a
    constant factor that does not change the ranking). At the pruning steps of :func:`gmp` (the
    cubic schedule :func:`gmp_sparsity`, Zhu & Gupta Eq. 1) the mask keeps the
    ``ceil(n (1 - s_t))`` largest scores, over all selected leaves (``scope="global"``) or per
    leaf (``"layer"``), with :func:`jaxcomp.pruning.topk_mask`'s exact count and deterministic
    ties; between them the mask is fixed. As in :func:`gmp`, the base sees the masked gradient
    and a pruned weight gets the update ``-w``.

    One difference from the paper: sparsity stays in the weights here, so a pruned weight is 0
    and its score stops moving (``W = 0``); in Sanh et al. masked weights keep their values and
    scores, so a pruned weight can return. It can return here only if kept scores fall below its
    frozen one at a later pruning step.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    schedule = _gmp_schedule(initial_sparsity, final_sparsity, begin_step, end_step, update_every)
    base = optax.with_extra_args_support(base)

    def init_fn(params):
        flags = select(params, where)
        return MovementState(
            count=jnp.zeros((), jnp.int32),
            mask=jax.tree.map(lambda p: jnp.ones(jnp.shape(p), jnp.bool_), params),
            scores=jax.tree.map(
                lambda p, f: jnp.zeros(jnp.shape(p) if f else (), jnp.float32), params, flags
            ),
            sparsity=jnp.zeros((), jnp.float32),
            base_state=base.init(params),
        )

    def update_fn(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("movement_pruning needs params: call update(grads, state, params)")
        flags = select(params, where)
        scores = jax.tree.map(
            lambda sc, g, p, f: sc - g.astype(jnp.float32) * p.astype(jnp.float32) if f else sc,
            state.scores,
            grads,
            params,
            flags,
        )
        t = state.count
        prune = _is_pruning_step(t, schedule)
        s = gmp_sparsity(t, **schedule)

        def fresh_mask():
            # topk_mask ranks by |score|: shift the scores to be >= 0 (monotone, same order).
            chosen = [x for x, f in zip(jax.tree.leaves(scores), jax.tree.leaves(flags)) if f]
            low = jnp.min(jnp.stack([x.min() for x in chosen]))
            ranked = jax.tree.map(
                lambda sc, p, f: sc - low if f else jnp.zeros(jnp.shape(p), jnp.float32),
                scores,
                params,
                flags,
            )
            return topk_mask(params, s, scope=scope, where=where, scores=ranked)

        mask = lax.cond(prune, fresh_mask, lambda: state.mask)
        updates, base_state = _masked_step(base, grads, state.base_state, params, mask, extra_args)
        return updates, MovementState(optax.safe_increment(t), mask, scores, s, base_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
