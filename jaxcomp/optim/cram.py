"""CrAM: the Compression-Aware Minimizer (Peste et al., ICLR 2023) as an optax transform.

CrAM looks for parameters whose loss stays low after a compression step ``C`` (here magnitude
top-k or N:M pruning). One step (Sec. 3.2, Eq. 3-4; Algorithm 1):

1. ``theta_tilde = theta + rho * g`` with ``g = grad L(theta)`` (an *un-normalised* ascent step,
   unlike SAM; ``normalize=True`` uses ``rho * g / ||g||``);
2. draw a sparsity ``s`` uniformly from ``sparsities`` (CrAM-Multi, Sec. 3.3) — or, for N:M,
   2:4 or 4:8 with probability 1/2 — from a PRNG key folded with the step count;
3. ``mask = TopK_s(theta_tilde)`` and ``g_hat = grad L(mask * theta_tilde)``;
4. ``sparse_grad``: ``g_hat = mask * g_hat`` (the masked gradient of the paper's CIFAR/ImageNet
   runs); ``plus`` (CrAM+, Eq. 5): ``d = g_hat + g``, else ``d = g_hat``;
5. ``base.update(d, base_state, params)`` (SGD with momentum in the paper).

``compression="channel"``: structured CrAM, ``C`` keeps the output channels of largest mean
``|w|`` per layer (``jaxcomp.pruning.channel_mask``). ``mask_every=k > 1``: the periodic variant
of the reference code (``TopkCrAMPeriod``): each level keeps its own mask, recomputed from
``theta_tilde`` the first time the level is drawn and then every ``k``-th time it is drawn, and
reused (applied to the current ``theta_tilde``) in between.

The extra forward/backward pass comes in as ``grad_fn(params) -> grads`` on the same batch (the
way ``optax.contrib.sam``'s opaque mode does it). ``jaxcomp.train.make_train_step`` builds it so
the compressed pass never moves BatchNorm running statistics. CrAM+-Multi
(``plus=True, sparse_grad=True, sparsities=(0.5, 0.7, 0.9)``) is the recommended setting.

Non-finite gradients: a NaN/inf in ``g`` or in the compressed pass's ``g_hat`` would enter the
base optimizer's momentum for good. ``cram(optax.apply_if_finite(base, k), ...)`` guards the
direction the base actually receives (both ``g`` and ``g_hat`` feed it), so a bad batch gives a
zero update and leaves the base state untouched; ``optax.apply_if_finite(cram(...), k)`` guards
only ``g`` (tested in ``tests/test_validation.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxcomp.pruning.masks import (
    _is_concrete,
    apply_mask,
    channel_mask,
    check_sparsity,
    nm_mask,
    topk_mask,
)
from jaxcomp.pruning.select import Where, nm_where, select

NM_LEVELS = ((2, 4), (4, 8))
COMPRESSIONS = ("global", "layer", "nm", "channel")


class CrAMState(NamedTuple):
    """``count``: steps taken; ``key``: raw uint32 PRNG key (folded with ``count`` each step);
    ``level``: index of the compression level drawn at the last step (into ``sparsities``, or
    into ``NM_LEVELS`` = (2:4, 4:8)); ``sparsity``: that level's sparsity (for logging);
    ``base_state``: the wrapped optimizer's state. With ``mask_every > 1`` only: ``masks``, every
    level's current mask (each leaf stacked over the levels) and ``mask_steps``, how often each
    level has been drawn (None otherwise, so the state is that of plain CrAM)."""

    count: jax.Array
    key: jax.Array
    level: jax.Array
    sparsity: jax.Array
    base_state: optax.OptState
    masks: Any = None
    mask_steps: jax.Array | None = None


def _check(rho: Any, sparsities: Sequence[float], compression: str, mask_every: Any) -> None:
    if _is_concrete(rho) and not (math.isfinite(float(rho)) and float(rho) >= 0):
        raise ValueError(f"rho must be finite and >= 0, got {rho}")
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"compression must be 'global', 'layer', 'nm' or 'channel', got {compression!r}"
        )
    if isinstance(mask_every, bool) or not isinstance(mask_every, int) or mask_every < 1:
        raise ValueError(f"mask_every must be an integer >= 1, got {mask_every!r}")
    if compression != "nm":
        if len(sparsities) == 0:
            raise ValueError("sparsities must be a non-empty sequence, got ()")
        for s in sparsities:
            check_sparsity(s, "every sparsity in sparsities")


def cram(
    base: optax.GradientTransformation,
    *,
    rho: float | jax.Array,
    sparsities: Sequence[float] = (0.5, 0.7, 0.9),
    compression: Literal["global", "layer", "nm", "channel"] = "global",
    plus: bool = False,
    sparse_grad: bool = False,
    normalize: bool = False,
    where: Where | str | None = None,
    seed: int = 0,
    mask_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """CrAM / CrAM+ / CrAM-Multi wrapped around ``base`` (see the module docstring).

    ``update(grads, state, params, *, grad_fn)`` needs ``params`` and ``grad_fn``; other extra
    args are ignored. With ``compression="nm"``, leaves whose input dimension is not divisible by
    8 stay dense (``jaxcomp.pruning.nm_where``). ``compression="channel"`` prunes whole output
    channels per layer by mean ``|w|``. ``mask_every > 1`` refreshes each level's mask only every
    ``mask_every``-th time the level is drawn (``TopkCrAMPeriod``). ``rho`` may be injected
    (``optax.inject_hyperparams``). One compiled program serves every sparsity level: the level
    is drawn inside the step.
    """
    sparsities = tuple(float(s) for s in sparsities)
    _check(rho, sparsities, compression, mask_every)
    if compression == "nm":  # 2:4 and 4:8 both need the input dimension divisible by 8
        where = nm_where(8, where)
    levels = jnp.asarray(sparsities if compression != "nm" else [1 - n / m for n, m in NM_LEVELS])

    num_levels = int(levels.shape[0])

    def init_fn(params):
        select(params, where)  # fail early on a where that selects nothing
        periodic = mask_every > 1
        return CrAMState(
            count=jnp.zeros((), jnp.int32),
            key=jax.random.PRNGKey(seed),
            level=jnp.zeros((), jnp.int32),
            sparsity=jnp.zeros((), jnp.float32),
            base_state=base.init(params),
            masks=jax.tree.map(lambda p: jnp.ones((num_levels, *jnp.shape(p)), jnp.bool_), params)
            if periodic
            else None,
            mask_steps=jnp.zeros((num_levels,), jnp.int32) if periodic else None,
        )

    def compress(theta: Any, idx: jax.Array) -> Any:
        if compression == "nm":
            branches = [lambda t, n=n, m=m: nm_mask(t, n, m, where=where) for n, m in NM_LEVELS]
            return lax.switch(idx, branches, theta)
        if compression == "channel":
            return channel_mask(theta, levels[idx], where=where)
        return topk_mask(theta, levels[idx], scope=compression, where=where)

    def periodic_mask(theta: Any, idx: jax.Array, state: CrAMState) -> tuple[Any, Any, Any]:
        """This level's mask: fresh on its first draw and every ``mask_every``-th draw after."""
        stored = jax.tree.map(lambda ms: ms[idx], state.masks)
        fresh = state.mask_steps[idx] % mask_every == 0
        mask = lax.cond(fresh, lambda: compress(theta, idx), lambda: stored)
        masks = jax.tree.map(lambda ms, m: ms.at[idx].set(m), state.masks, mask)
        return mask, masks, state.mask_steps.at[idx].add(1)

    def update_fn(
        grads: Any,
        state: CrAMState,
        params: Any = None,
        *,
        grad_fn: Callable[[Any], Any] | None = None,
        **extra_args: Any,
    ):
        del extra_args
        if params is None:
            raise ValueError("cram needs params: call update(grads, state, params, grad_fn=...)")
        if grad_fn is None:
            raise ValueError(
                "cram needs grad_fn=<params -> grads on the same batch> as an extra argument "
                "(jaxcomp.train.make_train_step passes it)"
            )
        scale = jnp.asarray(rho, jnp.float32)
        if normalize:
            scale = scale / (optax.global_norm(grads) + 1e-12)
        theta = jax.tree.map(lambda p, g: (p + scale * g).astype(p.dtype), params, grads)
        key = jax.random.fold_in(state.key, state.count)
        idx = jax.random.randint(key, (), 0, levels.shape[0])
        if mask_every > 1:
            mask, masks, mask_steps = periodic_mask(theta, idx, state)
        else:
            mask, masks, mask_steps = compress(theta, idx), None, None
        g_hat = grad_fn(apply_mask(theta, mask))
        if sparse_grad:
            g_hat = apply_mask(g_hat, mask)
        if plus:
            g_hat = jax.tree.map(lambda a, b: a + b, g_hat, grads)
        g_hat = jax.tree.map(lambda d, g: d.astype(g.dtype), g_hat, grads)
        updates, base_state = base.update(g_hat, state.base_state, params)
        new_state = CrAMState(
            count=optax.safe_increment(state.count),
            key=state.key,
            level=idx.astype(jnp.int32),
            sparsity=levels[idx].astype(jnp.float32),
            base_state=base_state,
            masks=masks,
            mask_steps=mask_steps,
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
