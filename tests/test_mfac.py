"""Tests for jaxcomp.optim.mfac (dense and EFCP-compressed), plus the optax battery for EFCP."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_battery  # noqa: I001  (tests/ is on sys.path)
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcomp.optim import (
    MFACState,
    ggt,
    lowrank,
    mfac,
    scale_by_ggt,
    scale_by_mfac,
    state_nbytes,
    topk,
)

SHAPES = {"b": (50,), "w": (10, 15)}  # d = 200; ravel order: "b" then "w"
D = 200


def _tree(vec):
    vec = np.asarray(vec, np.float32)
    return {"b": jnp.asarray(vec[:50]), "w": jnp.asarray(vec[50:].reshape(10, 15))}


def _vec(tree):
    return np.concatenate(
        [np.asarray(tree["b"], np.float64).ravel(), np.asarray(tree["w"]).ravel()]
    )


def _fisher(window, damping):
    window = np.asarray(window, np.float64)
    return damping * np.eye(window.shape[1]) + window.T @ window / window.shape[0]


def _topk_np(a, k):
    c = np.zeros_like(a)
    idx = np.argsort(-np.abs(a))[:k]
    c[idx] = a[idx]
    return c


def _block_topk_np(a, k, num_blocks):
    size = a.size // num_blocks
    return np.concatenate(
        [_topk_np(a[b * size : (b + 1) * size], k // num_blocks) for b in range(num_blocks)]
    )


@pytest.mark.parametrize("blocks", [0, 1, 4], ids=["dense", "topk", "topk_4blocks"])
def test_direction_matches_dense_solve_before_and_after_wrap(blocks):
    m, damping = 8, 1e-2
    compressed = blocks > 0
    comp = topk(0.1, num_blocks=blocks) if compressed else None
    tx = mfac(1.0, num_grads=m, damping=damping, compressor=comp)
    state = tx.init(_tree(np.zeros(D)))
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    window, error = np.zeros((m, D)), np.zeros(D)
    for t in range(13):  # wraps the ring buffer (m = 8)
        g = rng.normal(size=D).astype(np.float32)
        upd, state = update(_tree(g), state)
        c = g.astype(np.float64)
        if compressed:  # error feedback with exact top-k (k = 20, or 5 in each of 4 blocks)
            a = error + g
            c = _block_topk_np(a, 20, blocks)
            error = a - c
        window[t % m] = c
        expected = np.linalg.solve(_fisher(window, damping), c)
        np.testing.assert_allclose(-_vec(upd), expected, atol=2e-5 * np.abs(expected).max())
    assert int(state.count) == 13
    if compressed:
        np.testing.assert_allclose(np.asarray(state.error), error, atol=1e-5)


def test_lowrank_direction_matches_dense_solve():
    m, damping = 4, 1e-1
    comp = lowrank(2)
    tx = mfac(1.0, num_grads=m, damping=damping, compressor=comp)
    state = tx.init(_tree(np.zeros(D)))
    update = jax.jit(tx.update)
    rng = np.random.default_rng(1)
    window = np.zeros((m, D))
    for t in range(6):
        g = rng.normal(size=D).astype(np.float32)
        a = np.asarray(state.error) + g
        upd, state = update(_tree(g), state)
        c = a - np.asarray(state.error)  # what entered the window (error-feedback invariant)
        window[t % m] = c
        w = c[50:].reshape(10, 15)
        assert np.linalg.matrix_rank(w, tol=1e-4) == 2  # the matrix leaf really is rank 2
        np.testing.assert_array_equal(c[:50], a[:50])  # the vector leaf is passed through
        expected = np.linalg.solve(_fisher(window, damping), c)
        np.testing.assert_allclose(-_vec(upd), expected, atol=2e-5 * np.abs(expected).max())


def test_momentum_and_decoupled_weight_decay_follow_reference():
    m, damping, lr, mom, wd = 4, 1e-1, 0.3, 0.9, 0.01
    tx = mfac(lr, num_grads=m, damping=damping, momentum=mom, weight_decay=wd)
    rng = np.random.default_rng(2)
    params = rng.normal(size=D)
    state = tx.init(_tree(params))
    update = jax.jit(tx.update)
    window, v = np.zeros((m, D)), np.zeros(D)
    for t in range(5):
        g = rng.normal(size=D)
        upd, state = update(_tree(g), state, _tree(params))
        window[t % m] = g
        v = mom * v + np.linalg.solve(_fisher(window, damping), g)
        expected_params = (1 - wd) * params - lr * v  # reference: p.mul_(1 - wd); p.add_(v, -lr)
        new_params = params + _vec(upd)
        np.testing.assert_allclose(new_params, expected_params, atol=1e-5 * np.abs(v).max())
        params = expected_params


def test_update_is_exactly_minus_direction_with_unit_lr():
    from jaxcomp.optim.mfac import inverse_fisher_product, window_row_direction

    m, damping = 3, 1e-1
    tx = mfac(1.0, num_grads=m, damping=damping)
    g = np.random.default_rng(3).normal(size=D).astype(np.float32)
    upd, state = jax.jit(tx.update)(_tree(g), tx.init(_tree(g)))
    window = state.window
    combine = lambda w: jnp.matmul(w, window, precision="highest")
    u = jax.jit(window_row_direction, static_argnums=2)(state.gram, 0, combine, damping)
    np.testing.assert_array_equal(-_vec(upd).astype(np.float32), np.asarray(u))
    # the Woodbury form of M-FAC eq. 3 gives the same vector
    gj = jnp.asarray(g)
    woodbury = inverse_fisher_product(state.gram, window @ gj, gj, combine, damping)
    np.testing.assert_allclose(np.asarray(woodbury), np.asarray(u), rtol=1e-4, atol=1e-6)


def noisy_quadratic(dim=8, cond=1e3, seed=4):
    """Ill-conditioned quadratic `0.5 x^T H x` whose stochastic gradients have noise covariance H.

    This is the regime in which the empirical Fisher of a gradient window approximates the
    Hessian (gradient noise dominates and is proportional to the curvature), as for a
    well-specified least-squares model near its optimum. The start lies in the two flattest
    directions, where SGD, limited to steps < 2 / L, is slowest.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    ev = np.logspace(0, np.log10(cond), dim)
    h = jnp.asarray((q * ev) @ q.T, jnp.float32)
    h_sqrt = jnp.asarray((q * np.sqrt(ev)) @ q.T, jnp.float32)
    x0 = jnp.asarray(10 * q[:, 0] + 10 * q[:, 1], jnp.float32)

    def run(tx, steps=200):
        def body(carry, key):
            x, st = carry
            g = h @ x + h_sqrt @ jax.random.normal(key, x.shape)
            upd, st = tx.update(g, st, x)
            return (optax.apply_updates(x, upd), st), None

        keys = jax.random.split(jax.random.PRNGKey(0), steps)
        (x, _), _ = jax.jit(lambda: jax.lax.scan(body, (x0, tx.init(x0)), keys))()
        return float(0.5 * x @ h @ x)

    return run


def test_converges_on_ill_conditioned_quadratic_faster_than_sgd():
    run = noisy_quadratic()
    sgd = run(optax.sgd(1.9e-3))  # the best SGD: the largest stable step is 2 / L = 2e-3
    assert sgd > 30  # SGD is still far from the optimum (initial loss 184)
    for tx in (
        mfac(3.0, num_grads=16, damping=100.0),
        mfac(3.0, num_grads=16, damping=100.0, compressor=topk(0.5)),
        ggt(0.3, num_grads=16, eps=0.1),
    ):
        loss = run(tx)
        assert loss < 0.2 * sgd, (loss, sgd)


def test_rank_deficient_window_falls_back_to_eigh():
    """m > d with tiny damping: float32 Cholesky is garbage/NaN, the eigh fallback is accurate."""
    m, damping, d = 8, 1e-6, 4
    rng = np.random.default_rng(8)
    tx = mfac(1.0, num_grads=m, damping=damping)
    state = tx.init({"x": jnp.zeros((d,))})
    update = jax.jit(tx.update)
    for _ in range(m + 3):
        g = (1e3 * rng.normal(size=d)).astype(np.float32)
        upd, state = update({"x": jnp.asarray(g)}, state)
    window = np.asarray(state.window, np.float64)
    expected = np.linalg.solve(_fisher(window, damping), g.astype(np.float64))
    np.testing.assert_allclose(-np.asarray(upd["x"]), expected, rtol=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_grads=0), "num_grads must be an integer >= 1, got 0"),
        (dict(num_grads=2.5), "num_grads must be an integer >= 1, got 2.5"),
        (dict(damping=0.0), "damping must be finite and > 0, got 0.0"),
        (dict(damping=-1e-3), "damping must be finite and > 0, got -0.001"),
        (dict(momentum=-0.5), "momentum must be in \\[0, 1\\), got -0.5"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mfac(0.1, **kwargs)


def test_weight_decay_without_params_raises():
    tx = mfac(0.1, num_grads=2, weight_decay=1e-4)
    g = _tree(np.ones(D))
    with pytest.raises(ValueError, match="params"):
        tx.update(g, tx.init(g))


def test_state_bytes_topk_vs_dense():
    params = {"w": jnp.zeros((1000, 300))}  # d = 300k, five 2^16 blocks
    dense = state_nbytes(jax.eval_shape(mfac(0.1, num_grads=64).init, params))
    sparse = state_nbytes(
        jax.eval_shape(mfac(0.1, num_grads=64, compressor=topk(0.01)).init, params)
    )
    assert isinstance(jax.eval_shape(mfac(0.1).init, params), MFACState)
    # window: 64 * 3000 * (4 + 2) bytes; + gram, error buffer and block table
    assert sparse == 64 * 3000 * 6 + 64 * 64 * 4 + 300_000 * 4 + 64 * 5 * 4 + 4
    assert dense == 64 * 300_000 * 4 + 64 * 64 * 4 + 4
    assert dense / sparse > 30


# ------------------------------------------------------------------------------------------------
# optax battery: the shared one (tests/optax_battery.py) for mfac and ggt, dense and compressed,
# plus an Explicit-axes mesh check (sharding in types), which the flattened window must survive
# ------------------------------------------------------------------------------------------------


def _mfac(learning_rate, damping=1e-2, momentum=0.5):
    return mfac(learning_rate, num_grads=4, damping=damping, momentum=momentum, weight_decay=1e-3)


def _mfac_topk(learning_rate):
    return mfac(learning_rate, num_grads=4, damping=1e-2, compressor=topk(0.1))


def _mfac_lowrank(learning_rate):
    return mfac(learning_rate, num_grads=4, damping=1e-2, compressor=lowrank(2))


def _ggt(learning_rate, eps=0.1, beta1=0.5):
    return ggt(learning_rate, num_grads=4, eps=eps, beta1=beta1)


def _ggt_topk(learning_rate):
    return ggt(learning_rate, num_grads=4, eps=1e-3, compressor=topk(0.1))


def _mfac_leaves(learning_rate, damping=1e-2, momentum=0.5):
    return mfac(
        learning_rate,
        num_grads=4,
        damping=damping,
        momentum=momentum,
        weight_decay=1e-3,
        layout="leaves",
    )


def _mfac_topk_leaves(learning_rate):
    comp = topk(0.1, num_blocks=8)  # 8 blocks: the 8 shards of the kernel's leading axis
    return mfac(learning_rate, num_grads=4, damping=1e-2, compressor=comp, layout="leaves")


def _ggt_leaves(learning_rate):
    return ggt(learning_rate, num_grads=4, eps=1e-3, compressor=topk(0.1), layout="leaves")


def _mfac_lowrank_leaves(learning_rate):
    return mfac(learning_rate, num_grads=4, damping=1e-2, compressor=lowrank(2), layout="leaves")


def _leaf_window_array(window):
    """The array of a per-leaf window that is sharded like the leaf's leading axis: the dense
    window itself, the top-k values, or the low-rank `P` factors."""
    if hasattr(window, "values"):
        return window.values
    return window.p if hasattr(window, "p") else window


BATTERY = {
    "mfac": (_mfac, {"learning_rate": 0.05, "damping": 1e-2, "momentum": 0.5}),
    "mfac_topk": (_mfac_topk, {"learning_rate": 0.05}),
    "mfac_lowrank": (_mfac_lowrank, {"learning_rate": 0.05}),
    # with momentum, x leaves the window's span and its orthogonal part is scaled by 1/eps: for a
    # nearly collinear window (this battery's small least-squares problem) a small eps amplifies
    # float32 rounding, so compiled variants would differ by more than the battery's 1e-5
    "ggt": (_ggt, {"learning_rate": 0.05, "eps": 0.1, "beta1": 0.5}),
    "ggt_topk": (_ggt_topk, {"learning_rate": 0.05}),
    "mfac_leaves": (_mfac_leaves, {"learning_rate": 0.05, "damping": 1e-2, "momentum": 0.5}),
    "mfac_topk_leaves": (_mfac_topk_leaves, {"learning_rate": 0.05}),
    "ggt_leaves": (_ggt_leaves, {"learning_rate": 0.05}),
    "mfac_lowrank_leaves": (_mfac_lowrank_leaves, {"learning_rate": 0.05}),
}


# the full battery for dense M-FAC, top-k M-FAC and GGT; the other two variants share all code
# paths but the compressor, so (to keep the suite fast) they run the dtype check only
FULL = ("mfac", "mfac_topk", "ggt", "mfac_leaves", "mfac_topk_leaves", "mfac_lowrank_leaves")
CASES = [(n, c) for n in FULL for c in optax_battery.CHECKS] + [
    (n, optax_battery.check_dtype_kept) for n in sorted(set(BATTERY) - set(FULL))
]


@pytest.mark.parametrize("name, check", CASES, ids=lambda c: getattr(c, "__name__", c))
def test_battery(name, check):
    factory, hp = BATTERY[name]
    assert check(factory, hp)


@pytest.mark.parametrize(
    "name", ["mfac_topk", "ggt", "mfac_leaves", "mfac_topk_leaves", "mfac_lowrank_leaves"]
)
def test_state_sharding_unchanged_on_explicit_mesh(name):
    """Sharding in types: params FSDP-sharded over an Explicit axis, state stays replicated."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    rng = np.random.default_rng(5)
    params = {
        "kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
    }
    shard = {"kernel": NamedSharding(mesh, P("data", None)), "bias": NamedSharding(mesh, P())}
    params = jax.device_put(params, shard)
    grads = jax.tree.map(lambda p: p * 0.5 + 1, params)
    factory, hp = BATTERY[name]
    tx = factory(**hp)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
        update = jax.jit(tx.update)
        upd, state1 = update(grads, state, params)
        _, state2 = update(grads, state1, params)
    assert update._cache_size() == 1
    assert upd["kernel"].sharding.is_equivalent_to(params["kernel"].sharding, 2)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state2)):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
    if name.endswith("leaves"):  # the kernel's window is sharded like the kernel
        window = _leaf_window_array(state2.window["kernel"])
        assert window.sharding.spec == P(None, "data", None), window.sharding
    if name in ("mfac_leaves", "mfac_lowrank_leaves"):  # and computes what "flat" computes
        flat = {"mfac_leaves": _mfac, "mfac_lowrank_leaves": _mfac_lowrank}[name](**hp)
        with jax.set_mesh(mesh):
            want, _ = jax.jit(flat.update)(grads, jax.jit(flat.init)(params), params)
        for k in params:
            np.testing.assert_allclose(np.asarray(upd[k]), np.asarray(want[k]), rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: mfac(0.1, num_grads=3),  # no error buffer, no momentum
        lambda: mfac(0.1, num_grads=3, momentum=0.5),
        lambda: mfac(0.1, num_grads=3, compressor=topk(0.1)),
        lambda: mfac(0.1, num_grads=3, compressor=lowrank(2), momentum=0.5),
        lambda: ggt(0.1, num_grads=3),
        lambda: ggt(0.1, num_grads=3, beta1=0.5, compressor=topk(0.1)),
        lambda: ggt(0.1, num_grads=3, compressor=lowrank(2), weight_decay=1e-3),
        lambda: mfac(0.1, num_grads=3, momentum=0.5, layout="leaves", storage_dtype=jnp.bfloat16),
        lambda: mfac(0.1, num_grads=3, compressor=topk(0.2, num_blocks=2), layout="leaves"),
        lambda: mfac(0.1, num_grads=3, compressor=lowrank(2), momentum=0.5, layout="leaves"),
        lambda: ggt(
            0.1, num_grads=3, compressor=lowrank(2), layout="leaves", storage_dtype=jnp.bfloat16
        ),
    ],
    ids=[
        "mfac",
        "mfac_mom",
        "mfac_topk",
        "mfac_lowrank_mom",
        "ggt",
        "ggt_topk_mom",
        "ggt_lr_wd",
        "mfac_leaves_bf16_mom",
        "mfac_leaves_topk",
        "mfac_leaves_lowrank_mom",
        "ggt_leaves_lowrank_bf16",
    ],
)
def test_every_state_variant_saves_restores_and_continues_exactly(make, tmp_path):
    from jaxcomp.train import Checkpointer

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "b": jnp.zeros(5)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
             for _ in range(7)]  # fmt: skip
    tx = make()
    state = tx.init(params)
    assert all(a.size > 0 for a in jax.tree.leaves(state)), "no zero-size buffers"
    step = jax.jit(tx.update)
    for g in grads[:4]:
        _, state = step(g, state, params)
    ck = Checkpointer(str(tmp_path), async_save=False)
    ck.save(4, {"opt": state})
    restored, _ = ck.restore({"opt": tx.init(params)})
    ck.close()
    a, b = state, restored["opt"]
    for g in grads[4:]:
        ua, a = step(g, a, params)
        ub, b = step(g, b, params)
        for x, y in zip(jax.tree.leaves((ua, a)), jax.tree.leaves((ub, b))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["spike", "decades", "repeated", "repeated_spike"])
def test_row_direction_is_accurate_whatever_the_row_norms(name):
    # the windows of tests/test_ggt.py; damping 1e-6 makes the repeated rows take the fallback
    from test_ggt import hard_windows  # tests/ is on sys.path

    from jaxcomp.optim.mfac import window_row_direction

    window = hard_windows()[name]
    m = window.shape[0]
    g = jnp.asarray(window, jnp.float32)
    gram = jnp.matmul(g, g.T, precision="highest")
    combine = lambda w: jnp.matmul(w, g, precision="highest")
    direction = jax.jit(window_row_direction, static_argnums=2)
    _, s, vt = np.linalg.svd(window, full_matrices=False)
    for damping in (1e-6, 1e-2):
        # F^{-1} c with F = damping I + G^T G / m, for each row c (in the row space)
        want = [vt.T @ ((vt @ c) / (damping + s**2 / m)) for c in window]
        typical = np.median([np.linalg.norm(w) for w in want])
        for slot in range(m):
            got = np.asarray(direction(gram, slot, combine, damping))
            err = np.linalg.norm(got - want[slot])
            # relative to the update, or for a spike row (whose update is ~1e-4 of the others)
            # to a typical update of this window
            assert err < 2e-4 * max(np.linalg.norm(want[slot]), typical), (name, damping, slot)


@pytest.mark.parametrize("compressor", [None, "topk", "lowrank"])
@pytest.mark.parametrize("family", ["mfac", "ggt"])
def test_scale_by_composes_in_optax_chains_and_equals_the_optimizer(family, compressor):

    comp = {None: None, "topk": topk(0.2), "lowrank": lowrank(2)}[compressor]
    if family == "mfac":
        full = mfac(0.3, num_grads=3, damping=1e-2, compressor=comp)
        bare = scale_by_mfac(num_grads=3, damping=1e-2, compressor=comp)
    else:
        full = ggt(0.3, num_grads=3, eps=1e-2, beta1=0.5, compressor=comp)
        bare = scale_by_ggt(num_grads=3, eps=1e-2, beta1=0.5, compressor=comp)
    chained = optax.chain(bare, optax.scale(-0.3))
    rng = np.random.default_rng(5)
    params = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}
    sa, sb = full.init(params), chained.init(params)
    update_a, update_b = jax.jit(full.update), jax.jit(chained.update)
    for _ in range(5):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        ua, sa = update_a(g, sa, params)
        ub, sb = update_b(g, sb, params)
        for a, b in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # and with heavy-ball momentum after the preconditioner, it trains a quadratic (GGT without
    # its own beta1: a momentum vector outside the window is scaled by 1 / eps)
    if family == "ggt":
        bare = scale_by_ggt(num_grads=3, eps=1e-2, compressor=comp)
    tx = optax.chain(bare, optax.trace(0.9), optax.scale(-0.05))
    target = jnp.arange(30.0).reshape(6, 5) / 30
    p = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}
    loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum(p["b"] ** 2)

    @jax.jit
    def train(p):
        def step(carry, _):
            p, st = carry
            u, st = tx.update(jax.grad(loss)(p), st, p)
            return (optax.apply_updates(p, u), st), loss(p)

        return jax.lax.scan(step, (p, tx.init(p)), None, length=150)[1]

    losses = np.asarray(train(p))  # heavy-ball oscillates: the best iterate is what counts
    assert np.isfinite(losses).all() and losses.min() < 0.15 * losses[0], losses[::15]


def test_without_error_feedback_the_window_holds_topk_of_each_gradient():
    d, k = 40, 8
    tx = mfac(0.1, num_grads=3, damping=1e-2, compressor=topk(k / d), error_feedback=False)
    with_ef = mfac(0.1, num_grads=3, damping=1e-2, compressor=topk(k / d))
    rng = np.random.default_rng(6)
    state, state_ef = tx.init(jnp.zeros(d)), with_ef.init(jnp.zeros(d))
    assert isinstance(state.error, optax.EmptyState) and state_ef.error.shape == (d,)
    rows = []
    for _ in range(3):
        g = rng.normal(size=d).astype(np.float32)
        _, state = tx.update(jnp.asarray(g), state)
        _, state_ef = with_ef.update(jnp.asarray(g), state_ef)
        keep = np.argsort(-np.abs(g))[:k]
        row = np.zeros(d, np.float32)
        row[keep] = g[keep]
        rows.append(row)
    from jaxcomp.optim.compress import _topk_indices

    dense = np.zeros((3, d), np.float32)
    idx = np.asarray(_topk_indices(state.window))
    for i in range(3):
        dense[i, idx[i]] = np.asarray(state.window.values[i])
    np.testing.assert_array_equal(dense, np.stack(rows))
    # with error feedback the later rows differ (they carry the accumulated error)
    assert not np.allclose(
        np.asarray(state_ef.window.values[1:]), np.asarray(state.window.values[1:])
    )


# ------------------------------------------------------------------------------------------------
# damping / eps schedules
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, compressor",
    [("mfac", None), ("mfac", "topk"), ("scale_by_mfac", None), ("ggt", None), ("ggt", "topk")],
)
def test_schedule_equals_the_constant_at_each_steps_value(family, compressor):
    """A damping (eps) schedule gives, at every step, exactly the update of a transform built
    with the constant value of the schedule at that step, applied to the same state."""
    sched = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.3)  # 0.5 * 0.3^t
    comp = topk(0.1) if compressor else None

    def make(value):
        if family == "mfac":
            return mfac(1.0, num_grads=4, damping=value, compressor=comp)
        if family == "scale_by_mfac":
            return scale_by_mfac(num_grads=4, damping=value, compressor=comp)
        # beta1 = 0: with momentum, x / eps - G^T w cancels and one rounding of the runtime vs
        # the constant eps differs by ~1e-5 relative after that cancellation
        return ggt(1.0, num_grads=4, eps=value, compressor=comp)

    tx = make(sched)
    rng = np.random.default_rng(7)
    state = tx.init(_tree(np.zeros(D)))
    update = jax.jit(tx.update)
    first = None
    for t in range(6):
        g = _tree(rng.normal(size=D))
        upd, new_state = update(g, state)
        const = make(jnp.float32(sched(t)))  # an array: not constant-folded, unlike a float
        upd_c, state_c = jax.jit(const.update)(g, state)
        np.testing.assert_array_equal(_vec(upd), _vec(upd_c))
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state_c)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        if t == 0:
            first = make(float(sched(0)))
        else:  # the schedule really moved: the step-0 constant gives another update
            other, _ = jax.jit(first.update)(g, state)
            assert not np.allclose(_vec(other), _vec(upd), rtol=1e-3), t
        state = new_state


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: mfac(0.1, damping=optax.constant_schedule(0.0)),
         "damping schedule must be finite and > 0, got 0.0 at step 0"),
        (lambda: mfac(0.1, damping=lambda c: -1e-3 * (c + 1)),
         "damping schedule must be finite and > 0, got -0.001 at step 0"),
        (lambda: scale_by_mfac(damping="1e-4"),
         "damping must be a number or an optax schedule, got '1e-4'"),
        (lambda: mfac(0.1, damping=None), "damping must be a number or an optax schedule, got None"),
        (lambda: ggt(0.1, eps=lambda c: jnp.nan), "eps schedule must be finite and > 0, got nan"),
        (lambda: scale_by_ggt(eps=-1.0), "eps must be finite and > 0, got -1.0"),
    ],
)  # fmt: skip
def test_bad_damping_or_eps_schedule_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_damping_under_inject_hyperparams_is_not_checked_but_used():
    tx = optax.inject_hyperparams(mfac, static_args=("num_grads",))(
        learning_rate=1.0, num_grads=3, damping=0.1
    )
    ref = mfac(1.0, num_grads=3, damping=0.1)
    g = _tree(np.random.default_rng(8).normal(size=D))
    upd, _ = jax.jit(tx.update)(g, tx.init(g), g)  # injected weight_decay (0) needs params
    want, _ = jax.jit(ref.update)(g, ref.init(g))
    np.testing.assert_allclose(_vec(upd), _vec(want), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# bf16 storage of the window and the error-feedback buffer
# ------------------------------------------------------------------------------------------------


def _bf16(x):
    return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))


def _rows(window, compressor):
    """The stored window rows as a float64 `(m, D)` matrix (dense, top-k or low-rank format)."""
    if compressor is None:
        return np.asarray(window, np.float64)
    if compressor == "topk":
        from jaxcomp.optim.compress import _topk_indices

        rows = np.zeros((window.values.shape[0], D))
        idx = np.asarray(_topk_indices(window))
        for i in range(rows.shape[0]):
            rows[i, idx[i]] = np.asarray(window.values[i], np.float64)
        return rows
    bias, (p, q) = window  # low-rank on SHAPES: "b" stays dense, "w" is stored as P Q^T
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return np.concatenate([np.asarray(bias, np.float64), np.einsum("mnr,mlr->mnl", p, q).reshape(len(p), -1)], 1)  # fmt: skip


@pytest.mark.parametrize("compressor", [None, "topk", "lowrank"])
def test_bf16_storage_math_is_float32_on_the_stored_window(compressor):
    """With bf16 storage the window and error buffer are bf16, the Gram matrix float32, and the
    direction is the float64 solve with the *stored* (rounded) window to float32 accuracy; against
    the unrounded float32 transform it differs only by bf16 rounding."""
    m, damping = 4, 1e-1
    comp = {None: None, "topk": topk(0.25), "lowrank": lowrank(2)}[compressor]
    tx16 = mfac(1.0, num_grads=m, damping=damping, compressor=comp, storage_dtype=jnp.bfloat16)
    tx32 = mfac(1.0, num_grads=m, damping=damping, compressor=comp)
    s16, s32 = tx16.init(_tree(np.zeros(D))), tx32.init(_tree(np.zeros(D)))
    for leaf in jax.tree.leaves(s16.window):
        assert leaf.dtype in (jnp.bfloat16, jnp.uint16, jnp.int32), leaf.dtype
    assert s16.gram.dtype == jnp.float32
    if comp is not None:
        assert s16.error.dtype == jnp.bfloat16
    up16, up32 = jax.jit(tx16.update), jax.jit(tx32.update)
    rng = np.random.default_rng(9)
    gaps = []
    for t in range(6):
        g = _tree(rng.normal(size=D))
        u16, s16 = up16(g, s16)
        u32, s32 = up32(g, s32)
        window = _rows(s16.window, compressor)
        c = window[t % m]  # the stored row that just entered
        want = np.linalg.solve(_fisher(window, damping), c)
        np.testing.assert_allclose(-_vec(u16), want, atol=2e-5 * np.abs(want).max())
        gaps.append(np.linalg.norm(_vec(u16) - _vec(u32)) / np.linalg.norm(_vec(u32)))
    if compressor is None:  # the dense window holds exactly the bf16-rounded gradients
        np.testing.assert_array_equal(window[t % m], _bf16(_vec(g)))
    # bf16 has an 8-bit mantissa: relative rounding 2^-9; the directions differ by that order
    assert 1e-4 < max(gaps) < 3e-2, gaps


def test_bf16_storage_halves_the_window_and_error_bytes():
    params = {"w": jnp.zeros((1000, 300))}  # d = 300k
    d, m, k = 300_000, 64, 3000
    nbytes = lambda **kw: state_nbytes(jax.eval_shape(mfac(0.1, num_grads=m, **kw).init, params))
    gram_and_count = m * m * 4 + 4
    assert nbytes() == m * d * 4 + gram_and_count
    assert nbytes(storage_dtype=jnp.bfloat16) == m * d * 2 + gram_and_count
    sparse = dict(compressor=topk(0.01))  # values 4 -> 2 bytes, uint16 indices stay 2 bytes
    table = m * 5 * 4
    assert nbytes(**sparse) == m * k * 6 + table + d * 4 + gram_and_count
    assert (
        nbytes(**sparse, storage_dtype=jnp.bfloat16) == m * k * 4 + table + d * 2 + gram_and_count
    )


def test_bf16_window_is_never_copied_to_float32():
    """Compile only: a dense bf16 window of 128 MiB (d = 2^20, m = 64) needs a few MiB of
    temporaries per step, not a float32 copy of the window (XLA would hoist the conversion in
    front of the slot update, or share one converted copy between G x and G^T w)."""
    params = {"w": jax.ShapeDtypeStruct((1 << 20,), jnp.float32)}
    for layout in ("flat", "leaves"):
        tx = mfac(0.1, num_grads=64, storage_dtype=jnp.bfloat16, layout=layout)
        state = jax.eval_shape(tx.init, params)
        window_bytes = state_nbytes(state.window)
        assert window_bytes == 64 * (1 << 20) * 2
        step = jax.jit(tx.update, donate_argnums=1).lower(params, state).compile()
        assert step.memory_analysis().temp_size_in_bytes < 0.1 * window_bytes, layout


@pytest.mark.parametrize("bad", [jnp.int8, "float64", jnp.float64, None, "bf17"])
def test_bad_storage_dtype_raises(bad):
    with pytest.raises(ValueError, match="storage_dtype must be float32, bfloat16 or float16, got"):
        mfac(0.1, storage_dtype=bad)
    with pytest.raises(ValueError, match="storage_dtype"):
        scale_by_ggt(storage_dtype=bad)


# ------------------------------------------------------------------------------------------------
# layout="leaves": per-leaf windows sharded like the parameters
# ------------------------------------------------------------------------------------------------


def _sharded_problem(single_leaf=False):
    """Params on an 8-device Auto mesh: kernels sharded along their leading axis, a replicated
    bias; and a function drawing gradients with the params' shardings."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    shapes = {"w": (64, 48)} if single_leaf else {"w": (64, 48), "b": (48,), "v": (16, 4, 8)}
    specs = {"w": P("x", None), "b": P(), "v": P("x")}
    shard = {k: NamedSharding(mesh, specs[k]) for k in shapes}
    rng = np.random.default_rng(13)

    def draw():
        tree = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
        return jax.device_put(tree, shard)

    return draw(), draw, shard


LAYOUT_CASES = {
    "mfac": lambda layout: mfac(
        1.0, num_grads=4, damping=1e-2, momentum=0.5, weight_decay=1e-3, layout=layout
    ),
    # one leaf: the flat vector's 8 blocks are the leaf's 8 leading-axis blocks (= shards)
    "mfac_topk": lambda layout: mfac(
        1.0, num_grads=4, damping=1e-2, compressor=topk(0.1, num_blocks=8), layout=layout
    ),
    "mfac_bf16": lambda layout: scale_by_mfac(
        num_grads=4, damping=1e-2, storage_dtype=jnp.bfloat16, layout=layout
    ),
    "ggt": lambda layout: ggt(1.0, num_grads=4, eps=0.1, beta1=0.5, layout=layout),
    "ggt_topk": lambda layout: scale_by_ggt(
        num_grads=4, eps=1e-3, compressor=topk(0.1, num_blocks=8), layout=layout
    ),
    # P = orth(A Q) is another orthonormal basis in each layout, C(A) = P P^T A is the same
    "mfac_lowrank": lambda layout: mfac(
        1.0, num_grads=4, damping=1e-2, momentum=0.5, compressor=lowrank(4), layout=layout
    ),
    "ggt_lowrank": lambda layout: ggt(
        1.0, num_grads=4, eps=0.1, beta1=0.5, compressor=lowrank(4), layout=layout
    ),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_leaves_layout_on_sharded_params_equals_flat_layout(case):
    params, draw, shard = _sharded_problem(single_leaf=case in ("mfac_topk", "ggt_topk"))
    flat, leaves = LAYOUT_CASES[case]("flat"), LAYOUT_CASES[case]("leaves")
    sf, sl = flat.init(params), leaves.init(params)
    window_w = _leaf_window_array(sl.window["w"])
    assert window_w.shape[0] == 4 and window_w.sharding.spec == P(None, "x", None)
    before = [x.sharding for x in jax.tree.leaves(sl)]
    update_f, update_l = jax.jit(flat.update), jax.jit(leaves.update)
    for _ in range(6):  # wraps the ring buffer (m = 4)
        g = draw()
        uf, sf = update_f(g, sf, params)
        ul, sl = update_l(g, sl, params)
        tol = 1e-5 * max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(uf))
        if case.startswith("ggt") and "topk" not in case:  # with momentum u = x / eps - G^T w
            # cancels: a few float32 ulps of
            # x / eps (summation order differs between the layouts)
            tol = 2e-6 * max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g)) / 0.1
        for k in params:
            np.testing.assert_allclose(np.asarray(ul[k]), np.asarray(uf[k]), atol=tol)
            assert ul[k].sharding.is_equivalent_to(shard[k], ul[k].ndim)
    np.testing.assert_allclose(np.asarray(sl.gram), np.asarray(sf.gram), rtol=1e-5, atol=1e-4)
    for buffer in ("error", "momentum"):
        a, b = getattr(sl, buffer), getattr(sf, buffer)
        if not isinstance(b, optax.EmptyState):
            flat_a = np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(a)])
            np.testing.assert_allclose(flat_a, np.asarray(b, np.float32), rtol=1e-5, atol=1e-5)
    for b, a in zip(before, [x.sharding for x in jax.tree.leaves(sl)]):
        assert a.is_equivalent_to(b, 3), (b, a)


_COLLECTIVE = re.compile(
    r"= ([^=\n]*?) (all-gather|all-to-all|collective-permute|all-reduce)"
    r"(?:-start)?\("
)
_ARRAY = re.compile(r"\w+\[([\d,]*)\]")


def _collectives(hlo):
    """`(op, number of elements)` of every array that a collective in compiled HLO text returns
    (XLA combines several all-reduces into one with a tuple result: one entry per array)."""
    return [
        (op, int(np.prod([int(n) for n in dims.split(",") if n])))
        for result, op in _COLLECTIVE.findall(hlo)
        for dims in _ARRAY.findall(result)
    ]


@pytest.mark.parametrize("case", ["mfac", "mfac_topk_multi", "ggt", "mfac_bf16", "mfac_lowrank"])
def test_leaves_layout_gathers_nothing_of_size_d(case):
    """The compiled sharded step moves only O(m)-sized data between devices: no all-gather /
    all-to-all of a parameter-sized operand (the flat layout gathers the whole gradient)."""
    params, draw, _ = _sharded_problem()
    make = {
        "mfac": LAYOUT_CASES["mfac"],
        "mfac_topk_multi": lambda layout: mfac(
            1.0, num_grads=4, damping=1e-2, compressor=topk(0.1, num_blocks=8), layout=layout
        ),
        "ggt": LAYOUT_CASES["ggt"],
        "mfac_bf16": LAYOUT_CASES["mfac_bf16"],
        "mfac_lowrank": LAYOUT_CASES["mfac_lowrank"],
    }[case]
    hlo = {}
    for layout in ("flat", "leaves"):
        tx = make(layout)
        state = tx.init(params)
        hlo[layout] = _collectives(
            jax.jit(tx.update).lower(draw(), state, params).compile().as_text()
        )
    smallest_sharded_leaf = 16 * 4 * 8
    moved = [n for op, n in hlo["leaves"] if op != "all-reduce"]
    assert all(n <= 4 * 4 for n in moved), hlo["leaves"]
    # the psum of G x: all-reduces of a few m-sized vectors, nothing parameter-sized (low-rank:
    # also the (r, r) Gram matrices of CholeskyQR, A^T P (cols x r) and P_i^T P (m x r x r))
    reduced = [n for op, n in hlo["leaves"] if op == "all-reduce"]
    assert reduced and all(n < smallest_sharded_leaf for n in reduced), hlo["leaves"]
    # control: the parser sees the flat layout's gather of the d-vector (or of whole leaves)
    assert max(n for op, n in hlo["flat"] if op == "all-gather") >= smallest_sharded_leaf


def test_leaves_layout_topk_matches_numpy_per_leaf_blocks():
    """Per-leaf block-wise top-k with error feedback (leading axis cut into 5 blocks when it
    divides, else one block), against numpy and a float64 solve of the dense window."""
    shapes = {"b": (50,), "s": (3,), "w": (10, 15)}  # blocks: 5 x 10, 1 x 3, 5 x (2 x 15)
    m, damping, frac = 4, 1e-2, 0.2
    tx = mfac(
        1.0, num_grads=m, damping=damping, compressor=topk(frac, num_blocks=5), layout="leaves"
    )
    zeros = {k: jnp.zeros(s) for k, s in shapes.items()}
    state = tx.init(zeros)
    assert state.window["w"].values.shape == (m, 5, 6) and state.window["s"].values.shape == (
        m,
        1,
        1,
    )
    update = jax.jit(tx.update)
    rng = np.random.default_rng(14)
    d = sum(int(np.prod(s)) for s in shapes.values())
    window, error = np.zeros((m, d)), {k: np.zeros(int(np.prod(s))) for k, s in shapes.items()}
    for t in range(6):
        g = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        upd, state = update({k: jnp.asarray(v) for k, v in g.items()}, state)
        rows = []
        for k in sorted(shapes):  # jax.tree order
            a = error[k] + g[k].ravel()
            n = 5 if shapes[k][0] % 5 == 0 else 1
            size = a.size // n
            c = _block_topk_np(a, n * max(1, int(frac * size)), n)
            error[k] = a - c
            rows.append(c)
        window[t % m] = np.concatenate(rows)
        expected = np.linalg.solve(_fisher(window, damping), window[t % m])
        got = np.concatenate([np.asarray(upd[k], np.float64).ravel() for k in sorted(shapes)])
        np.testing.assert_allclose(-got, expected, atol=2e-5 * np.abs(expected).max())
    for k in shapes:
        np.testing.assert_allclose(np.asarray(state.error[k]).ravel(), error[k], atol=1e-5)


def test_bad_layout_raises():
    with pytest.raises(ValueError, match="layout must be 'flat' or 'leaves', got 'tree'"):
        mfac(0.1, layout="tree")
    no_leaf_form = lowrank(2)._replace(leaf=None)  # a compressor without a per-leaf form
    with pytest.raises(ValueError, match="layout='leaves' needs a compressor with a per-leaf"):
        ggt(0.1, compressor=no_leaf_form, layout="leaves")
    mfac(0.1, compressor=lowrank(2), layout="leaves")  # low-rank has one


@pytest.mark.parametrize("case", ["dense", "topk_blocks", "lowrank"])
def test_leaves_layout_through_shard_train_state_and_make_train_step(case):
    """`shard_train_state` keeps the per-leaf windows sharded like their parameters (dense: by
    shape; block-wise top-k and low-rank: with `tx=`), the jitted step keeps them so and equals
    the step on one device, and its compiled HLO gathers nothing of a parameter's size."""
    from jaxcomp.train import make_mesh, make_train_step, shard_train_state

    comp = {"dense": None, "topk_blocks": topk(0.1, num_blocks=8), "lowrank": lowrank(4)}[case]
    make_tx = lambda: mfac(0.05, num_grads=4, damping=1e-2, compressor=comp, layout="leaves")
    rng = np.random.default_rng(3)
    params = {
        "w": jnp.asarray(rng.normal(size=(64, 48)) * 0.1, jnp.float32),
        "b": jnp.zeros((48,), jnp.float32),
    }
    xs = jnp.asarray(rng.normal(size=(6, 16, 64)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(6, 16, 48)), jnp.float32)

    def loss_fn(p, state, batch):
        x, y = batch
        loss = jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2)
        return loss, (state, {})

    def run(mesh):
        tx = make_tx()
        p, s, o = params, {}, tx.init(params)
        shardings = None
        if mesh is not None:
            p, s, o, shardings = shard_train_state(
                mesh, p, s, o, fsdp_min_size=256, tx=None if case == "dense" else tx
            )
        step = make_train_step(loss_fn, tx, shardings, donate=False)
        for i in range(6):  # wraps the ring buffer (m = 4)
            p, s, o, _ = step(p, s, o, (xs[i], ys[i]))
        return p, o, step, s

    want, _, _, _ = run(None)
    mesh = make_mesh(data=1, fsdp=8)
    got, opt_state, step, s = run(mesh)
    window = _leaf_window_array(opt_state.window["w"])
    assert window.sharding.spec[1] == "fsdp", window.sharding
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-4, atol=1e-6)
    hlo = step.lower(got, s, opt_state, (xs[0], ys[0])).compile().as_text()
    gathered = [n for op, n in _collectives(hlo) if op in ("all-gather", "all-to-all")]
    # FSDP gathers `w` once for the forward pass; the optimizer gathers nothing more (with the
    # window replicated, the step gathers the gradient and window too)
    assert gathered == [64 * 48], _collectives(hlo)
