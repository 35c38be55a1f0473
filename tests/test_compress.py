"""Tests for jaxcomp.optim.compress: top-k / low-rank compressors, error feedback, windows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.optim import lowrank, state_nbytes, topk
from jaxcomp.optim.compress import error_feedback, topk_size

# d spans four 2^16 blocks, so the block-local uint16 indices are exercised across boundaries
BIG = ((3, 65536), (1000,))
SMALL = ((12, 20), (3, 3, 4, 6), (7,), (2, 50))


def _numel(shapes):
    return sum(int(np.prod(s)) for s in shapes)


def _window_roundtrip(comp, shapes, m, steps, seed):
    """Write `steps` compressed random vectors; return (window, dense rows as numpy)."""
    rng = np.random.default_rng(seed)
    d = _numel(shapes)
    window = comp.window_init(m, shapes)
    aux = comp.init(shapes)
    dense = np.zeros((m, d))
    set_row = jax.jit(comp.window_set)
    compress = jax.jit(comp.compress, static_argnums=2)
    for t in range(steps):
        a = jnp.asarray(rng.normal(size=d), jnp.float32)
        payload, c, aux = compress(a, aux, shapes)
        window = set_row(window, jnp.int32(t % m), payload)
        dense[t % m] = np.asarray(c)
    return window, dense


def test_topk_keeps_exactly_k_largest():
    rng = np.random.default_rng(0)
    d = _numel(BIG)
    a = rng.permutation(np.arange(1, d + 1)).astype(np.float32) * rng.choice([-1, 1], size=d)
    comp = topk(0.01)
    (values, idx), c, _ = jax.jit(comp.compress, static_argnums=2)(jnp.asarray(a), (), BIG)
    k = topk_size(0.01, d)
    assert k == int(0.01 * d) and values.shape == (k,) and idx.shape == (k,)
    assert int(jnp.count_nonzero(c)) == k
    expected = np.sort(np.argsort(-np.abs(a))[:k])
    np.testing.assert_array_equal(np.asarray(idx), expected)
    np.testing.assert_array_equal(np.asarray(c)[expected], a[expected])


@pytest.mark.parametrize("make", [lambda: topk(0.05), lambda: lowrank(2)], ids=["topk", "lowrank"])
def test_error_feedback_invariant(make):
    comp = make()
    rng = np.random.default_rng(1)
    d = _numel(SMALL)
    error = jnp.zeros((d,), jnp.float32)
    aux = comp.init(SMALL)
    step = jax.jit(lambda g, e, x: error_feedback(comp, g, e, x, SMALL))
    total_g, total_c = np.zeros(d), np.zeros(d)
    for _ in range(5):
        g = jnp.asarray(rng.normal(size=d), jnp.float32)
        a = np.asarray(error + g)
        _, c, error, aux = step(g, error, aux)
        c, e = np.asarray(c), np.asarray(error)
        if isinstance(aux, tuple) and aux:  # low-rank: c + (a - c) rounds back to a
            np.testing.assert_allclose(c + e, a, rtol=0, atol=1e-6 * np.abs(a).max())
        else:
            np.testing.assert_array_equal(c + e, a)
        assert np.linalg.norm(e) > 0  # something was really dropped
        total_g += np.asarray(g, np.float64)
        total_c += c
    # telescoping: the compressed stream equals the gradient stream minus the final error
    np.testing.assert_allclose(total_c, total_g - e, atol=1e-4)


def test_topk_window_products_match_dense():
    comp = topk(0.001)
    m = 3
    window, dense = _window_roundtrip(comp, BIG, m, steps=5, seed=2)  # wraps the ring buffer
    assert window.low.dtype == jnp.uint16 and window.block_ends.shape == (m, 4)
    x = np.random.default_rng(3).normal(size=dense.shape[1])
    w = np.array([0.5, -2.0, 1.5])
    dots = jax.jit(comp.window_dots, static_argnums=3)(
        window, jnp.asarray(x, jnp.float32), None, BIG
    )
    comb = jax.jit(comp.window_combine, static_argnums=2)(window, jnp.asarray(w, jnp.float32), BIG)
    np.testing.assert_allclose(np.asarray(dots), dense @ x, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(comb), w @ dense, rtol=1e-5, atol=1e-5)
    # storage: 4 bytes of value + 2 bytes of index per kept entry (+ tiny block table)
    k = topk_size(0.001, dense.shape[1])
    assert state_nbytes(window) == m * (6 * k + 4 * 4)


def test_lowrank_window_products_match_dense():
    comp = lowrank(2)
    m = 4
    window, dense = _window_roundtrip(comp, SMALL, m, steps=6, seed=4)
    rng = np.random.default_rng(5)
    x = rng.normal(size=dense.shape[1])
    w = rng.normal(size=m)
    dots = jax.jit(comp.window_dots, static_argnums=3)(
        window, jnp.asarray(x, jnp.float32), None, SMALL
    )
    comb = jax.jit(comp.window_combine, static_argnums=2)(
        window, jnp.asarray(w, jnp.float32), SMALL
    )
    np.testing.assert_allclose(np.asarray(dots), dense @ x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(comb), w @ dense, rtol=1e-4, atol=1e-4)

    # the factored scalar product (used for the Gram row) agrees with the dense one
    @jax.jit
    def factored(window, x):
        payload, c, _ = comp.compress(x, comp.init(SMALL), SMALL)
        return comp.window_dots(window, c, payload, SMALL), c

    fact, c = factored(window, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(fact), dense @ np.asarray(c), rtol=1e-4, atol=1e-4)
    # (12,20) and (36,6) are stored as rank-2 factors, the vector and (2,50) stay dense
    assert [len(leaf) if isinstance(leaf, tuple) else 0 for leaf in window] == [2, 2, 0, 0]


def test_lowrank_error_shrinks_with_warm_started_power_iteration():
    rng = np.random.default_rng(6)
    u, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    v, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    spectrum = 0.6 ** np.arange(30)
    mat = (u[:, :30] * spectrum) @ v.T
    shapes = ((40, 30),)
    comp = lowrank(3)
    aux = comp.init(shapes)
    compress = jax.jit(comp.compress, static_argnums=2)
    a = jnp.asarray(mat.reshape(-1), jnp.float32)
    errors = []
    for _ in range(12):
        _, c, aux = compress(a, aux, shapes)
        errors.append(np.linalg.norm(mat.reshape(-1) - np.asarray(c)))
    optimal = np.sqrt(np.sum(spectrum[3:] ** 2))  # Eckart-Young
    assert errors[-1] < 0.7 * errors[0]
    assert all(e2 <= e1 * (1 + 1e-4) for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] == pytest.approx(optimal, rel=1e-2)


def test_lowrank_is_exact_on_rank_r_matrices():
    rng = np.random.default_rng(7)
    mat = rng.normal(size=(16, 2)) @ rng.normal(size=(2, 9))
    comp = lowrank(2)
    _, c, _ = comp.compress(
        jnp.asarray(mat.reshape(-1), jnp.float32), comp.init(((16, 9),)), ((16, 9),)
    )
    np.testing.assert_allclose(np.asarray(c), mat.reshape(-1), atol=1e-4)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_topk_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="fraction"):
        topk(bad)


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_lowrank_rejects_bad_rank(bad):
    with pytest.raises(ValueError, match=f"rank must be an integer >= 1, got {bad!r}"):
        lowrank(bad)


def test_topk_indices_equal_brute_force_including_empty_blocks():
    from jaxcomp.optim.compress import _topk_indices

    comp = topk(0.0005)
    shapes = ((5, 65536),)  # five blocks
    d, k, m = 5 * 65536, topk_size(0.0005, 5 * 65536), 4
    rng = np.random.default_rng(0)
    rows = [
        np.sort(rng.choice(d, k, replace=False)),  # spread over all blocks
        np.sort(rng.choice(65536, k, replace=False)) + 4 * 65536,  # all in the last block
        np.sort(rng.choice(2 * 65536, k, replace=False)),  # blocks 2-4 empty
        np.sort(np.r_[np.arange(k // 2), d - k + k // 2 + np.arange(k - k // 2)]),  # two ends
    ]
    window = comp.window_init(m, shapes)
    for i, idx in enumerate(rows):
        payload = (jnp.asarray(rng.normal(size=k), jnp.float32), jnp.asarray(idx, jnp.int32))
        window = comp.window_set(window, jnp.int32(i), payload)
    np.testing.assert_array_equal(np.asarray(jax.jit(_topk_indices)(window)), np.stack(rows))


def test_topk_window_products_memory_is_linear_in_the_window():
    # d = 2^23, m = 1024 at 1%: a 515 MB window. Compile only (nothing is allocated): the
    # temporaries of G x and G^T w must stay within a few windows (the old (m, k, d/2^16)
    # comparison needed ~43 GB).
    comp = topk(0.01)
    shapes = ((1 << 23,),)
    m = 1024
    window = jax.eval_shape(lambda: comp.window_init(m, shapes))
    x = jax.ShapeDtypeStruct((1 << 23,), jnp.float32)
    w = jax.ShapeDtypeStruct((m,), jnp.float32)

    def products(window, x, w):
        return comp.window_dots(window, x, None, shapes), comp.window_combine(window, w, shapes)

    stats = jax.jit(products).lower(window, x, w).compile().memory_analysis()
    window_bytes = state_nbytes(window)
    assert window_bytes > 500e6
    assert stats.temp_size_in_bytes < 4 * window_bytes, stats.temp_size_in_bytes


@pytest.mark.parametrize("make", [lambda: topk(0.05), lambda: lowrank(2)], ids=["topk", "lowrank"])
def test_bf16_error_feedback_bookkeeping(make):
    """bf16 storage: `c` is exactly representable in bf16 (what the window holds), `e` is
    `a - c` rounded once to bf16, and the stream telescopes up to those roundings."""
    comp = make()
    rng = np.random.default_rng(11)
    d = _numel(SMALL)
    error = jnp.zeros((d,), jnp.bfloat16)
    aux = comp.init(SMALL)
    step = jax.jit(lambda g, e, x: error_feedback(comp, g, e, x, SMALL, jnp.bfloat16))
    total_g, total_c, slack = np.zeros(d), np.zeros(d), np.zeros(d)
    for _ in range(6):
        g = jnp.asarray(rng.normal(size=d), jnp.float32)
        a = np.asarray(error, np.float64) + np.asarray(g, np.float64)
        payload, c, error, aux = step(g, error, aux)
        assert error.dtype == jnp.bfloat16 and c.dtype == jnp.float32
        for leaf in jax.tree.leaves(payload):
            assert leaf.dtype in (jnp.bfloat16, jnp.int32)
        c, e = np.asarray(c, np.float64), np.asarray(error, np.float64)
        if comp.decode is None:  # top-k: c is a bf16-rounded subset of a
            np.testing.assert_array_equal(c, np.asarray(jnp.asarray(c, jnp.bfloat16), np.float64))
        exact = a - c  # float32 arithmetic on these values is exact here up to 2^-24
        np.testing.assert_allclose(e, exact, rtol=2.0**-8, atol=1e-6 * np.abs(a).max())
        assert np.abs(e - exact).max() > 0  # bf16 really rounded the error
        slack += 2.0**-8 * np.abs(exact) + 1e-6
        total_g += np.asarray(g, np.float64)
        total_c += c
    # telescoping: sum c = sum g - e_T + (the bf16 roundings of the stored errors)
    assert np.all(np.abs(total_c - (total_g - e)) <= slack)


def _blockwise_topk_np(a, num_blocks, fraction):
    """Brute force: per contiguous block, the int(fraction * B) largest |entries| (no ties)."""
    size = a.size // num_blocks
    k_b = max(1, int(fraction * size))
    keep = []
    for b in range(num_blocks):
        block = a[b * size : (b + 1) * size]
        keep.append(b * size + np.sort(np.argsort(-np.abs(block), kind="stable")[:k_b]))
    return np.concatenate(keep)


@pytest.mark.parametrize("num_blocks", [1, 4, 5])
def test_blockwise_topk_equals_brute_force_per_block(num_blocks):
    # d = 262204 (4 blocks of 65551) or 262205 (5 blocks): block and uint16 boundaries differ
    shapes = ((4, 65536), (60 if num_blocks != 5 else 61,))
    d = _numel(shapes)
    rng = np.random.default_rng(12)
    a = (rng.permutation(np.arange(1, d + 1)) * rng.choice([-1, 1], size=d)).astype(np.float32)
    # one block holds all the largest entries: a global top-k would take nothing elsewhere
    a[: d // num_blocks] *= 1e3
    comp = topk(0.001, num_blocks=num_blocks)
    (values, idx), c, _ = jax.jit(comp.compress, static_argnums=2)(jnp.asarray(a), (), shapes)
    want = _blockwise_topk_np(a, num_blocks, 0.001)
    np.testing.assert_array_equal(np.asarray(idx), want)
    np.testing.assert_array_equal(np.asarray(values), a[want])
    dense = np.zeros(d, np.float32)
    dense[want] = a[want]
    np.testing.assert_array_equal(np.asarray(c), dense)
    if num_blocks == 1:  # the global top-k
        np.testing.assert_array_equal(want, np.sort(np.argsort(-np.abs(a))[: topk_size(0.001, d)]))
    else:  # every block keeps its share, unlike the global top-k
        per_block = np.bincount(want // (d // num_blocks), minlength=num_blocks)
        assert (per_block == len(want) // num_blocks).all()
    # the window stores them like a global top-k: products equal the dense ones
    window = comp.window_set(comp.window_init(2, shapes), jnp.int32(1), (values, idx))
    x = jnp.asarray(rng.normal(size=d), jnp.float32)
    dots = jax.jit(comp.window_dots, static_argnums=3)(window, x, None, shapes)
    np.testing.assert_allclose(np.asarray(dots), [0.0, dense @ np.asarray(x)], rtol=1e-5)


def test_blockwise_topk_bad_blocks_raise():
    with pytest.raises(ValueError, match="num_blocks must be an integer >= 1, got 0"):
        topk(0.1, num_blocks=0)
    with pytest.raises(ValueError, match="num_blocks must be an integer >= 1, got 2.0"):
        topk(0.1, num_blocks=2.0)
    comp = topk(0.1, num_blocks=3)
    with pytest.raises(ValueError, match="topk num_blocks=3 must divide the vector size d=100"):
        comp.window_init(2, ((10, 10),))
