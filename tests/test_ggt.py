"""Tests for jaxcomp.optim.ggt against the explicit matrix square root (the optax battery for
ggt runs in tests/test_mfac.py, parametrised over both EFCP transforms)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.optim import GGTState, ggt, topk

D = 120


def _sqrt_solve(window, x, eps):
    """(sqrt(sum_i g_i g_i^T) + eps I)^{-1} x with the d x d matrix built densely (float64)."""
    window = np.asarray(window, np.float64)
    lam, vecs = np.linalg.eigh(window.T @ window)
    root = (vecs * np.sqrt(np.clip(lam, 0, None))) @ vecs.T
    return np.linalg.solve(root + eps * np.eye(window.shape[1]), x)


def _topk_np(a, k):
    c = np.zeros_like(a)
    idx = np.argsort(-np.abs(a))[:k]
    c[idx] = a[idx]
    return c


@pytest.mark.parametrize(
    "eps, beta1, compressed",
    [(1e-5, 0.0, False), (1e-1, 0.0, False), (1e-1, 0.7, False), (1e-5, 0.0, True)],
    ids=["eps1e-5", "eps0.1", "momentum", "topk"],
)
def test_direction_matches_explicit_matrix_square_root(eps, beta1, compressed):
    r = 6
    tx = ggt(1.0, num_grads=r, eps=eps, beta1=beta1, compressor=topk(0.1) if compressed else None)
    state = tx.init(jnp.zeros((D,)))
    assert isinstance(state, GGTState)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    window, error, x = np.zeros((r, D)), np.zeros(D), np.zeros(D)
    for t in range(9):  # wraps the ring buffer
        g = rng.normal(size=D).astype(np.float32)
        upd, state = update(jnp.asarray(g), state)
        c = g.astype(np.float64)
        if compressed:
            a = error + g
            c = _topk_np(a, 12)
            error = a - c
        window[t % r] = c
        x = beta1 * x + (1 - beta1) * c if beta1 else c
        expected = _sqrt_solve(window, x, eps)
        # with momentum, x leaves the window's span and its orthogonal part is scaled by 1/eps
        tol = 1e-5 if beta1 == 0 else 1e-5 / eps
        np.testing.assert_allclose(-np.asarray(upd), expected, atol=tol * np.abs(expected).max())


def test_general_formula_matches_in_window_formula():
    from jaxcomp.optim.ggt import inverse_sqrt_product, window_row_sqrt_direction

    rng = np.random.default_rng(1)
    window = jnp.asarray(rng.normal(size=(5, D)), jnp.float32)
    gram = jnp.matmul(window, window.T, precision="highest")
    combine = lambda w: jnp.matmul(w, window, precision="highest")
    eps = 0.5  # keeps the 1/eps cancellation of the general formula benign in float32
    general = inverse_sqrt_product(gram, gram[2], window[2], combine, eps)
    in_window = window_row_sqrt_direction(gram, 2, combine, eps)
    np.testing.assert_allclose(np.asarray(general), np.asarray(in_window), rtol=1e-4, atol=1e-5)
    expected = _sqrt_solve(window, np.asarray(window[2], np.float64), eps)
    np.testing.assert_allclose(np.asarray(in_window), expected, rtol=1e-4, atol=1e-6)


def test_zero_gradient_gives_zero_update():
    tx = ggt(1.0, num_grads=3)
    upd, state = jax.jit(tx.update)(jnp.zeros((D,)), tx.init(jnp.zeros((D,))))
    np.testing.assert_array_equal(np.asarray(upd), 0.0)
    assert int(state.count) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_grads=0), "num_grads must be an integer >= 1, got 0"),
        (dict(eps=0.0), "eps must be finite and > 0, got 0.0"),
        (dict(eps=-1.0), "eps must be finite and > 0, got -1.0"),
        (dict(beta1=1.0), "beta1 must be in \\[0, 1\\), got 1.0"),
        (dict(beta1=-0.1), "beta1 must be in \\[0, 1\\), got -0.1"),
        (dict(weight_decay=-1e-4), "weight_decay must be .*got -0.0001"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ggt(0.1, **kwargs)


def test_decoupled_weight_decay_adds_minus_wd_times_params():
    rng = np.random.default_rng(4)
    params = jnp.asarray(rng.normal(size=D), jnp.float32)
    grads = [jnp.asarray(rng.normal(size=D), jnp.float32) for _ in range(3)]
    plain, decayed = (
        ggt(0.3, num_grads=2, eps=1e-3),
        ggt(0.3, num_grads=2, eps=1e-3, weight_decay=0.01),
    )
    s_plain, s_decayed = plain.init(params), decayed.init(params)
    for g in grads:
        u_plain, s_plain = plain.update(g, s_plain, params)
        u_decayed, s_decayed = decayed.update(g, s_decayed, params)
        np.testing.assert_allclose(u_decayed, u_plain - 0.01 * params, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="needs params"):
        decayed.update(grads[0], s_decayed)


# ------------------------------------------------------------------------------------------------
# Windows whose rows differ in norm by many decades, or repeat: float64 SVD references
# ------------------------------------------------------------------------------------------------


def _ref_ggt_row(window, slot, eps):
    g = np.asarray(window, np.float64)
    _, s, vt = np.linalg.svd(g, full_matrices=False)
    c = g[slot]
    inside = vt.T @ ((vt @ c) / (s + eps))
    return inside + (c - vt.T @ (vt @ c)) / eps


def hard_windows(m=16, d=200):
    """`{name: (m, d) window}`: a 1e4x spike, norms over 6 decades, a repeated row with norms
    over 4 decades, a repeated spike."""
    rng = np.random.default_rng(0)
    spike = rng.normal(size=(m, d))
    spike[3] *= 1e4
    decades = rng.normal(size=(m, d)) * np.logspace(3, -3, m)[:, None]
    repeated = rng.normal(size=(m, d)) * np.logspace(2, -2, m)[:, None]
    repeated[2] = repeated[1]
    repeated_spike = rng.normal(size=(m, d))
    repeated_spike[1] *= 1e4
    repeated_spike[2] = repeated_spike[1]
    return {
        "spike": spike,
        "decades": decades,
        "repeated": repeated,
        "repeated_spike": repeated_spike,
    }


@pytest.mark.parametrize("name", sorted(hard_windows()))
def test_row_direction_is_accurate_whatever_the_row_norms(name):
    from jaxcomp.optim.ggt import window_row_sqrt_direction

    window = hard_windows()[name]
    g = jnp.asarray(window, jnp.float32)
    gram = jnp.matmul(g, g.T, precision="highest")
    combine = lambda w: jnp.matmul(w, g, precision="highest")
    direction = jax.jit(window_row_sqrt_direction, static_argnums=2)
    for eps in (1e-5, 1e-2):
        for slot in range(window.shape[0]):
            got = np.asarray(direction(gram, slot, combine, eps))
            want = _ref_ggt_row(window, slot, eps)
            err = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert err < 2e-4, (name, eps, slot, err)


def test_updates_do_not_freeze_after_a_gradient_spike():
    # One gradient 1e4x larger, then ordinary ones: every later update keeps its exact size
    # (~1 for a gradient in the window) instead of collapsing to ~1e-6.
    rng = np.random.default_rng(1)
    tx = ggt(1.0, num_grads=32, eps=1e-2)
    state = tx.init(jnp.zeros(D))
    step = jax.jit(tx.update)
    rows = []
    for t in range(40):
        g = rng.normal(size=D) * (1e4 if t == 0 else 1.0)
        rows.append(g)
        u, state = step(jnp.asarray(g, jnp.float32), state)
        window = np.stack(rows[-32:])
        want = -_ref_ggt_row(window, window.shape[0] - 1, 1e-2)
        np.testing.assert_allclose(np.asarray(u), want, rtol=2e-3, atol=2e-4 * np.abs(want).max())
