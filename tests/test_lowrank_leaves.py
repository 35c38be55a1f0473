"""The per-leaf low-rank (PowerSGD) compressor of `layout="leaves"`: shifted CholeskyQR, equality
with the flat layout, sharding (8 fake CPU devices), bf16 storage, the zero accumulator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_mfac import _collectives, _fisher  # noqa: I001  (tests/ is on sys.path)

import jaxcomp.optim.compress as compress
from jaxcomp.optim import ggt, lowrank, mfac
from jaxcomp.optim.compress import LeafLowrankWindow, _cholesky_qr, push_gradient

# a vector, a matrix, a conv-like kernel (rows = 3 * 3 * 4), a 3-D leaf and a matrix too small to
# gain from rank 2 (2 * (3 + 2) >= 6): the last and the vector stay dense
SHAPES = {"b": (20,), "k": (3, 3, 4, 8), "s": (3, 2), "v": (4, 3, 12), "w": (10, 15)}


def _draw(rng, shapes=SHAPES):
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


MAKERS = {
    "mfac": lambda layout, fb: mfac(
        1.0,
        num_grads=4,
        damping=1e-2,
        momentum=0.5,
        weight_decay=1e-3,
        compressor=lowrank(2),
        error_feedback=fb,
        layout=layout,
    ),
    "ggt": lambda layout, fb: ggt(
        1.0, num_grads=4, eps=1e-2, compressor=lowrank(2), error_feedback=fb, layout=layout
    ),
    # with beta1 the preconditioned vector leaves the window: G x without the payload's factors
    "ggt_beta1": lambda layout, fb: ggt(
        1.0,
        num_grads=4,
        eps=0.1,
        beta1=0.5,
        compressor=lowrank(2),
        error_feedback=fb,
        layout=layout,
    ),
}


@pytest.mark.parametrize("feedback", [True, False], ids=["ef", "no_ef"])
@pytest.mark.parametrize("family", sorted(MAKERS))
def test_leaves_layout_equals_flat_layout(family, feedback):
    """`C(A) = P P^T A` and the next `A' Q = A' A^T P` depend only on the span of `P`: the leaves
    layout (CholeskyQR on the leaf's axes) follows the flat layout (Householder QR on the
    flattened layers) step by step, through the window turning over (m = 4, 7 steps)."""
    rng = np.random.default_rng(0)
    params = _draw(rng)
    flat, leaves = MAKERS[family]("flat", feedback), MAKERS[family]("leaves", feedback)
    sf, sl = flat.init(params), leaves.init(params)
    # factors in the leaf's own axes; the warm-start Q per compressed leaf, () for dense ones
    assert sl.window["k"].p.shape == (4, 3, 3, 4, 2) and sl.window["k"].q.shape == (4, 8, 2)
    assert sl.window["s"].shape == (4, 3, 2) and sl.window["b"].shape == (4, 20)
    assert sl.compressor_state["s"] == () and sl.compressor_state["b"] == ()
    qs = [sl.compressor_state[k] for k in ("k", "v", "w")]
    for a, b in zip(qs, sf.compressor_state):  # the flat state holds the same initial Qs
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    update_f, update_l = jax.jit(flat.update), jax.jit(leaves.update)
    for _ in range(7):
        g = _draw(rng)
        uf, sf = update_f(g, sf, params)
        ul, sl = update_l(g, sl, params)
        want, got = _flat(uf), _flat(ul)
        tol = 1e-5 * np.abs(want).max()
        if family == "ggt_beta1":  # u = x / eps - G^T w cancels: a few float32 ulps of x / eps
            tol = 2e-6 * np.abs(_flat(g)).max() / 0.1
        np.testing.assert_allclose(got, want, atol=tol)
    gram = np.asarray(sf.gram)  # entries are sums of products: float32 rounding of the largest
    np.testing.assert_allclose(np.asarray(sl.gram), gram, atol=1e-6 * np.abs(gram).max())
    if feedback:
        np.testing.assert_allclose(_flat(sl.error), np.asarray(sf.error), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# shifted CholeskyQR
# ------------------------------------------------------------------------------------------------


def _basis(rng, n, k):
    return np.linalg.qr(rng.normal(size=(n, k)))[0]


def test_cholesky_qr_is_an_orthonormal_basis_of_the_span_of_householder_qr():
    rng = np.random.default_rng(1)
    n, r = 300, 4
    u = _basis(rng, n, r)
    cases = {
        "random": rng.normal(size=(n, r)),
        # columns of norms 1 ... 1e-6 (condition 1e6), orthogonal: the span is well-determined
        "column_scaled": u * np.logspace(0, -6, r),
    }
    orth = jax.jit(_cholesky_qr)
    for name, x in cases.items():
        x = jnp.asarray(x, jnp.float32)
        p = np.asarray(orth(x), np.float64)
        h = np.asarray(jnp.linalg.qr(x)[0], np.float64)
        np.testing.assert_allclose(p.T @ p, np.eye(r), atol=1e-5, err_msg=name)
        np.testing.assert_allclose(p @ p.T, h @ h.T, atol=1e-5, err_msg=name)
        # in the leaf's axes (rows (10, 30)): the same basis
        p3 = np.asarray(orth(x.reshape(10, 30, r)), np.float64).reshape(n, r)
        np.testing.assert_allclose(p3, p, atol=1e-5, err_msg=name)


def test_cholesky_qr_on_an_ill_conditioned_matrix():
    """`A Q` of condition 1e6 with rotated columns (nearly dependent): plain CholeskyQR2 fails in
    float32 (the Gram matrix has condition 1e12); the shifted first round makes the result
    orthonormal to float32 rounding. Its smallest direction is determined only to about
    `eps * cond` by float32 data, so its projector is compared with a float64 QR of the same
    float32 matrix (CholeskyQR: ~1e-3; Householder QR in float32: ~1e-2)."""
    rng = np.random.default_rng(2)
    n, r = 300, 4
    x = (_basis(rng, n, r) * np.logspace(0, -6, r)) @ _basis(rng, r, r).T
    x = jnp.asarray(x, jnp.float32)
    a = np.asarray(x, np.float64)
    assert np.linalg.cond(a) > 5e5
    p = np.asarray(jax.jit(_cholesky_qr)(x), np.float64)
    np.testing.assert_allclose(p.T @ p, np.eye(r), atol=1e-5)
    np.testing.assert_allclose(p @ (p.T @ a), a, atol=1e-6 * np.abs(a).max())  # spans x
    ref = np.linalg.qr(a)[0]
    assert np.abs(p @ p.T - ref @ ref.T).max() < 1e-2
    h = np.asarray(jnp.linalg.qr(x)[0], np.float64)
    assert np.abs(p @ p.T - h @ h.T).max() < 2e-2  # both float32 bases of the same span


def test_cholesky_qr_rank_deficient_and_zero():
    rng = np.random.default_rng(3)
    n, r = 300, 4
    orth = jax.jit(_cholesky_qr)
    # rank 2 (and exactly repeated columns): finite, spans x, singular values <= 1 (the
    # numerically null directions are filled with orthonormal rounding noise, as by Householder)
    low_rank = (_basis(rng, n, 2) * [1.0, 0.3]) @ _basis(rng, r, 2).T
    repeated = np.repeat(rng.normal(size=(n, 1)), r, axis=1)
    for x in (low_rank, repeated):
        x = jnp.asarray(x, jnp.float32)
        a = np.asarray(x, np.float64)
        p = np.asarray(orth(x), np.float64)
        assert np.isfinite(p).all()
        np.testing.assert_allclose(p @ (p.T @ a), a, atol=1e-6 * np.abs(a).max())
        assert np.linalg.svd(p, compute_uv=False).max() < 1 + 1e-5
    # a zero matrix gives zeros, not NaN
    z = np.asarray(orth(jnp.zeros((n, r), jnp.float32)))
    np.testing.assert_array_equal(z, 0.0)


def test_cholesky_qr_falls_back_to_the_safe_shift(monkeypatch):
    """With the small shifts set to zero, the Cholesky of the singular Gram matrix of repeated
    columns is NaN; the fallback shift `(rows + r) eps trace(G)` keeps the result finite."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(np.repeat(rng.normal(size=(300, 1)), 4, axis=1), jnp.float32)
    assert np.isnan(np.asarray(jnp.linalg.cholesky(x.T @ x))).any()
    monkeypatch.setattr(compress, "_CHOLQR_SHIFTS", (0.0, 0.0, 0.0))
    p = np.asarray(_cholesky_qr(x), np.float64)
    a = np.asarray(x, np.float64)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p @ (p.T @ a), a, atol=1e-6 * np.abs(a).max())


def test_zero_accumulator_keeps_the_previous_q():
    op = lowrank(2).leaf((10, 15))
    q_old = op.init(3)
    (p, q), c, q_new = jax.jit(op.compress)(jnp.zeros((10, 15)), q_old)
    for x in (p, q, c):
        np.testing.assert_array_equal(np.asarray(x), 0.0)
    np.testing.assert_array_equal(np.asarray(q_new), np.asarray(q_old))
    # inside mfac: a leaf whose gradient is zero for two steps keeps its warm start, no NaN
    tx = mfac(1.0, num_grads=3, damping=1e-2, compressor=lowrank(2), layout="leaves")
    params = {"w": jnp.zeros((10, 15)), "b": jnp.zeros(4)}
    state = tx.init(params)
    q0 = np.asarray(state.compressor_state["w"])
    update = jax.jit(tx.update)
    rng = np.random.default_rng(5)
    for t in range(4):
        w = jnp.zeros((10, 15)) if t < 2 else jnp.asarray(rng.normal(size=(10, 15)), jnp.float32)
        upd, state = update({"w": w, "b": jnp.ones(4)}, state)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((upd, state)))
        q = np.asarray(state.compressor_state["w"])
        if t < 2:
            np.testing.assert_array_equal(q, q0)
            np.testing.assert_array_equal(np.asarray(upd["w"]), 0.0)
    assert not np.allclose(q, q0)  # a nonzero gradient moves it


# ------------------------------------------------------------------------------------------------
# sharded leaves (8 fake CPU devices)
# ------------------------------------------------------------------------------------------------

SHARDED = {  # shape, spec: rows sharded, last axis sharded, a 3-D leaf, a replicated vector
    "w": ((64, 48), P("x", None)),
    "u": ((48, 64), P(None, "x")),
    "v": ((16, 4, 8), P("x")),
    "b": ((48,), P()),
}


@pytest.mark.parametrize("family", ["mfac", "ggt"])
def test_sharded_leaves_equal_unsharded_and_gather_nothing(family):
    """Sharded like the parameters, the low-rank leaves step equals the one-device step; the
    window factors and the warm-start `Q` carry the leaf's sharding (`P` its leading axes, `Q`
    its last axis) from step to step; the compiled step moves no leaf-sized array."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    shard = {k: NamedSharding(mesh, spec) for k, (_, spec) in SHARDED.items()}
    shapes = {k: s for k, (s, _) in SHARDED.items()}
    m, rank = 4, 4

    def make():
        if family == "mfac":
            return mfac(
                1.0,
                num_grads=m,
                damping=1e-2,
                momentum=0.5,
                compressor=lowrank(rank),
                layout="leaves",
            )
        return ggt(1.0, num_grads=m, eps=1e-2, compressor=lowrank(rank), layout="leaves")

    rng = np.random.default_rng(6)
    grads = [_draw(rng, shapes) for _ in range(6)]
    params = _draw(rng, shapes)
    tx = make()
    one = tx.init(params)
    sharded_params = jax.device_put(params, shard)
    state = tx.init(sharded_params)
    want_specs = {
        "w": (P(None, "x", None), P(None, None, None), P(None, None)),
        "u": (P(None, None, None), P(None, "x", None), P("x", None)),
        "v": (P(None, "x", None, None), P(None, None, None), P(None, None)),
    }

    def check_specs(state):
        def has(x, spec):
            return x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim)

        for k, (p_spec, q_spec, state_spec) in want_specs.items():
            window = state.window[k]
            assert isinstance(window, LeafLowrankWindow)
            assert has(window.p, p_spec), (k, window.p.sharding)
            assert has(window.q, q_spec), (k, window.q.sharding)
            assert has(state.compressor_state[k], state_spec), k
        assert has(state.window["b"], P())

    check_specs(state)
    update = jax.jit(tx.update)
    for g in grads:  # wraps the ring buffer (m = 4)
        u1, one = update(g, one, params)
        us, state = update(jax.device_put(g, shard), state, sharded_params)
        want, got = _flat(u1), _flat(us)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
        for k in shapes:
            assert us[k].sharding.is_equivalent_to(shard[k], us[k].ndim)
    check_specs(state)
    hlo = _collectives(
        update.lower(jax.device_put(grads[0], shard), state, sharded_params).compile().as_text()
    )
    smallest_sharded_leaf = 16 * 4 * 8
    moved = [n for op, n in hlo if op != "all-reduce"]
    assert all(n <= m * m for n in moved), hlo
    # all-reduces: Gram matrices (r x r), A^T P (cols x r), A Q (rows x r), P_i^T P (m r r), G x
    reduced = [n for op, n in hlo if op == "all-reduce"]
    assert reduced and max(reduced) <= 64 * rank < smallest_sharded_leaf, hlo


# ------------------------------------------------------------------------------------------------
# bf16 storage
# ------------------------------------------------------------------------------------------------


def _dense_rows(window):
    """The stored window rows as a float64 `(m, d)` matrix (leaves in jax.tree order)."""
    rows = []
    for w in jax.tree.leaves(window, is_leaf=lambda x: isinstance(x, LeafLowrankWindow)):
        if isinstance(w, LeafLowrankWindow):
            p, q = np.asarray(w.p, np.float64), np.asarray(w.q, np.float64)
            w = np.einsum("m...r,mlr->m...l", p, q)
        w = np.asarray(w, np.float64)
        rows.append(w.reshape(w.shape[0], -1))
    return np.concatenate(rows, axis=1)


def test_bf16_storage_stores_rounded_factors_and_c_is_their_decode():
    m, damping = 4, 1e-1
    comp = lowrank(2)
    bf16 = jnp.bfloat16
    tx = mfac(
        1.0, num_grads=m, damping=damping, compressor=comp, layout="leaves", storage_dtype=bf16
    )
    rng = np.random.default_rng(7)
    params = _draw(rng)
    state = tx.init(params)
    assert state.window["w"].p.dtype == bf16 and state.window["w"].q.dtype == bf16
    assert state.window["b"].dtype == bf16 and state.error["w"].dtype == bf16
    assert state.compressor_state["w"].dtype == jnp.float32  # the warm start is not stored
    push = jax.jit(lambda g, s: push_gradient(comp, g, s, m, True, bf16, "leaves")[:2])
    update = jax.jit(tx.update)
    for t in range(6):
        g = _draw(rng)
        new, slot = push(g, state)
        # the window holds the float32 factors of the accumulator rounded to bf16 (to one bf16
        # ulp: the float32 factors computed here may differ from the jitted step's in the last
        # bit), and c is the product of those stored factors, not of the float32 ones
        a = state.error["w"].astype(jnp.float32) + g["w"]
        (p32, q32), c32, _ = comp.leaf((10, 15)).compress(a, state.compressor_state["w"])
        p16, q16 = new.window["w"].p[slot], new.window["w"].q[slot]
        assert p16.dtype == bf16 and q16.dtype == bf16
        for stored, exact in ((p16, p32), (q16, q32)):
            exact = np.asarray(exact)
            np.testing.assert_allclose(
                np.asarray(stored, np.float32), exact, rtol=2**-8, atol=1e-6 * np.abs(exact).max()
            )
        decoded = np.asarray(p16, np.float64) @ np.asarray(q16, np.float64).T
        np.testing.assert_allclose(np.asarray(new.c["w"]), decoded, atol=1e-6)
        assert np.abs(decoded - np.asarray(c32)).max() > 1e-4  # really the rounded factors
        np.testing.assert_array_equal(  # the error fed back is a - c, rounded once
            np.asarray(new.error["w"]), np.asarray((a - new.c["w"]).astype(bf16))
        )
        upd, state = update(g, state)
        # the direction is the float64 solve with the stored (rounded) window
        rows = _dense_rows(state.window)
        want = np.linalg.solve(_fisher(rows, damping), rows[t % m])
        np.testing.assert_allclose(-_flat(upd), want, atol=2e-5 * np.abs(want).max())
