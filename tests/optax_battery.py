"""Shared checks for every optax transform in jaxcomp (docs/design.md, "A shared battery").

A test file passes a ``factory(**hyperparams) -> GradientTransformation`` and its hyperparams:

    @pytest.mark.parametrize("check", optax_battery.CHECKS)
    def test_battery(check):
        assert check(my_factory, {"learning_rate": 0.1})

Every check drives the transform on a small least-squares problem, always passing
``grad_fn`` (transforms that do not need it must ignore it); it raises ``AssertionError`` on a
failure and returns True, so a test reads ``assert check(factory, hyperparams)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcomp.train import make_mesh, make_train_step, shard_train_state


def problem(dtype=jnp.float32, seed: int = 0):
    """``(params, loss)`` of a least-squares problem with a (16, 8) kernel and a bias."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.standard_normal((16, 8)) * 0.3, dtype),
            "bias": jnp.zeros((8,), dtype),
        }
    }

    def loss(p):
        pred = x @ p["dense"]["kernel"].astype(jnp.float32) + p["dense"]["bias"].astype(jnp.float32)
        return jnp.mean((pred - y) ** 2)

    return params, loss


def _run(tx, params, loss, steps: int, **extra):
    grad_fn = jax.grad(loss)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn, **extra)
        return optax.apply_updates(params, updates), state, updates

    for _ in range(steps):
        params, state, updates = step(params, state)
    return params, state, updates, step


def check_extra_args_ignored(factory, hp: dict[str, Any]) -> None:
    """Unknown extra args are accepted and change nothing."""
    params, loss = problem()
    p1, _, _, _ = _run(factory(**hp), params, loss, 2)
    p2, _, _, _ = _run(factory(**hp), params, loss, 2, some_unknown_arg=jnp.ones(3))
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    return True


def check_no_recompilation(factory, hp: dict[str, Any]) -> None:
    """The jitted update compiles once: state structure, shapes and dtypes are step-invariant."""
    params, loss = problem()
    tx = factory(**hp)
    state0 = tx.init(params)
    _, state, _, step = _run(tx, params, loss, 3)
    assert step._cache_size() == 1, f"recompiled: cache size {step._cache_size()}"
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
        assert (jnp.shape(a), jnp.result_type(a)) == (jnp.shape(b), jnp.result_type(b))
    return True


def check_dtype_kept(factory, hp: dict[str, Any]) -> None:
    """bf16 and f32 params: updates come in the params' dtype; params stay finite."""
    for dtype in (jnp.float32, jnp.bfloat16):
        params, loss = problem(dtype)
        new, _, updates, _ = _run(factory(**hp), params, loss, 2)
        for u, p, q in zip(jax.tree.leaves(updates), jax.tree.leaves(params), jax.tree.leaves(new)):
            assert u.dtype == p.dtype, f"update dtype {u.dtype} != param dtype {p.dtype}"
            assert q.dtype == p.dtype
            assert bool(jnp.all(jnp.isfinite(q.astype(jnp.float32))))
    return True


def check_inject_hyperparams(factory, hp: dict[str, Any]) -> None:
    """``optax.inject_hyperparams(factory)`` gives the same trajectory as ``factory``."""
    params, loss = problem()
    p1, _, _, _ = _run(factory(**hp), params, loss, 3)
    injected = optax.inject_hyperparams(factory)(**hp)
    p2, state, _, _ = _run(injected, params, loss, 3)
    assert set(hp) <= set(state.hyperparams)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return True


def check_sharding_unchanged(factory, hp: dict[str, Any]) -> None:
    """On an 8-device mesh with FSDP-sharded params, a jitted train step keeps every optimizer
    state leaf's sharding and computes the same params as the single-device run."""
    assert jax.device_count() == 8
    params, loss = problem()
    tx = factory(**hp)

    def loss_fn(p, s, batch):
        return loss(p), (s, {})

    ref, _, _, _ = _run(tx, params, loss, 2)
    mesh = make_mesh(data=2, fsdp=4)
    p, s, o, sh = shard_train_state(mesh, params, {}, tx.init(params), fsdp_min_size=64)
    before = [x.sharding for x in jax.tree.leaves(o)]
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(p))
    step = make_train_step(loss_fn, tx, sh)
    batch = {"dummy": np.zeros((8,), np.float32)}
    for _ in range(2):
        p, s, o, _ = step(p, s, o, batch)
    after = [x.sharding for x in jax.tree.leaves(o)]
    for b, a in zip(before, after):
        assert a.is_equivalent_to(b, 2) or a == b, f"state sharding changed: {b} -> {a}"
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-5)
    return True


CHECKS = [
    check_extra_args_ignored,
    check_no_recompilation,
    check_dtype_kept,
    check_inject_hyperparams,
    check_sharding_unchanged,
]
