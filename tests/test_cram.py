"""CrAM against the update computed by hand with jax.grad on least squares."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_battery
import pytest
from flax import nnx

from jaxcomp import pruning
from jaxcomp.models import SmallCNN
from jaxcomp.optim import cram
from jaxcomp.train import classification_loss, make_train_step, split_model
from jaxcomp.train.recipes import make_optimizer

RHO = 0.3


def lsq(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((64, 6)), jnp.float32)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.standard_normal((16, 6)), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(6), jnp.float32),
        },
    }

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2, -1))

    def grad(p):  # closed form: X^T r / n, mean r
        r = x @ p["dense"]["kernel"] + p["dense"]["bias"] - y
        return {"dense": {"kernel": x.T @ r / 64, "bias": r.mean(0)}}

    return params, loss, grad


def by_hand(params, grad, s, *, plus, sparse_grad, normalize, nm=None):
    g = grad(params)
    scale = (
        RHO / np.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(g))) if normalize else RHO
    )
    theta = jax.tree.map(lambda p, gg: p + scale * gg, params, g)
    w = np.asarray(theta["dense"]["kernel"])
    if nm is None:
        k = int(np.ceil(round(w.size * (1 - s), 6)))
        keep = np.zeros(w.size, bool)
        keep[np.argsort(-np.abs(w).ravel(), kind="stable")[:k]] = True
        keep = keep.reshape(w.shape)
    else:
        n, m = nm
        grp = np.abs(w).reshape(w.shape[0] // m, m, w.shape[1])
        keep = (np.argsort(np.argsort(-grp, 1, kind="stable"), 1, kind="stable") < n).reshape(
            w.shape
        )
    masked = {
        "dense": {
            "kernel": jnp.where(keep, theta["dense"]["kernel"], 0.0),
            "bias": theta["dense"]["bias"],
        }
    }
    gh = grad(masked)
    if sparse_grad:
        gh["dense"]["kernel"] = jnp.where(keep, gh["dense"]["kernel"], 0.0)
    if plus:
        gh = jax.tree.map(lambda a, b: a + b, gh, g)
    return gh


@pytest.mark.parametrize(
    "plus,sparse_grad,normalize",
    [(False, False, False), (True, False, False), (True, True, False), (False, True, True)],
)
def test_update_matches_hand_formula(plus, sparse_grad, normalize):
    params, loss, grad = lsq()
    tx = cram(
        optax.sgd(1.0),
        rho=RHO,
        sparsities=(0.7,),
        plus=plus,
        sparse_grad=sparse_grad,
        normalize=normalize,
    )
    state = tx.init(params)
    updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, grad_fn=jax.grad(loss)))(
        jax.grad(loss)(params), state, params
    )
    ref = by_hand(params, grad, 0.7, plus=plus, sparse_grad=sparse_grad, normalize=normalize)
    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
        np.testing.assert_allclose(u, -np.asarray(r), rtol=1e-4, atol=1e-6)
    assert int(state.count) == 1 and float(state.sparsity) == pytest.approx(0.7)


def test_nm_update_matches_hand_formula():
    params, loss, grad = lsq(1)
    tx = cram(optax.sgd(1.0), rho=RHO, compression="nm", plus=True, sparse_grad=True)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, grad_fn=jax.grad(loss)))
    seen = set()
    for _ in range(8):  # the key is folded with count: the level varies step to step
        updates, new_state = step(jax.grad(loss)(params), state, params)
        nm = [(2, 4), (4, 8)][int(new_state.level)]
        seen.add(nm)
        ref = by_hand(params, grad, None, plus=True, sparse_grad=True, normalize=False, nm=nm)
        for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
            np.testing.assert_allclose(u, -np.asarray(r), rtol=1e-4, atol=1e-6)
        state = new_state
    assert seen == {(2, 4), (4, 8)}
    assert step._cache_size() == 1
    # the experiments' "cram_plus_nm" is exactly this transform
    named = make_optimizer("cram_plus_nm", optax.sgd(1.0), rho=RHO)
    for _ in range(3):
        g = jax.grad(loss)(params)
        want, new_state = step(g, state, params)
        got, _ = named.update(g, state, params, grad_fn=jax.grad(loss))
        for u, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(u, r, rtol=1e-6, atol=1e-7)
        state = new_state


def test_sampled_levels_cover_the_list_without_recompiling():
    params, loss, _ = lsq()
    levels = (0.5, 0.7, 0.8, 0.9, 0.95)
    tx = cram(optax.sgd(0.01), rho=RHO, sparsities=levels, plus=True, seed=3)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, grad_fn=jax.grad(loss)))
    drawn = []
    for _ in range(60):
        u, state = step(params, state)
        drawn.append(round(float(state.sparsity), 4))
    counts = {lv: drawn.count(lv) for lv in levels}
    assert set(drawn) == set(levels) and min(counts.values()) >= 4, counts
    assert step._cache_size() == 1


def test_cram_train_loop_converges_on_quadratic():
    params, loss, _ = lsq(2)
    tx = cram(
        optax.sgd(0.1, momentum=0.9), rho=0.05, sparsities=(0.5, 0.7), plus=True, sparse_grad=True
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p, grad_fn=jax.grad(loss))
        return optax.apply_updates(p, u), s

    l0 = float(loss(params))
    for _ in range(300):
        params, state = step(params, state)
    # compare against the exact least-squares optimum (normal equations)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 16))
    y = rng.standard_normal((64, 6))
    xa = np.hstack([x, np.ones((64, 1))])
    sol = np.linalg.lstsq(xa, y, rcond=None)[0]
    best = 0.5 * np.mean(np.sum((xa @ sol - y) ** 2, -1))
    final = float(loss(params))
    assert final < 0.2 * l0 and final < 1.5 * best, (l0, final, best)
    # robust to pruning: 50% magnitude pruning costs less than it does at the LSQ optimum
    pruned, _ = pruning.one_shot(params, 0.5)
    sol_p = {
        "dense": {
            "kernel": jnp.asarray(sol[:16], jnp.float32),
            "bias": jnp.asarray(sol[16], jnp.float32),
        }
    }
    pruned_opt, _ = pruning.one_shot(sol_p, 0.5)
    assert float(loss(pruned)) - final < float(loss(pruned_opt)) - best


def test_batchnorm_stats_move_only_on_the_clean_pass():
    model = SmallCNN(rngs=nnx.Rngs(0), widths=(4, 8), hidden=16, input_hw=(8, 8))
    graphdef, _, params, state = split_model(model)
    loss_fn = classification_loss(graphdef)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.random((16, 8, 8, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    sgd = optax.sgd(0.1)
    tx = cram(sgd, rho=0.5, sparsities=(0.9,), plus=True)
    _, s_cram, _, _ = make_train_step(loss_fn, tx, donate=False)(
        params, state, tx.init(params), batch
    )
    _, s_sgd, _, _ = make_train_step(loss_fn, sgd, donate=False)(
        params, state, sgd.init(params), batch
    )
    # A compressed pass through BatchNorm would give different (sparse-model) statistics.
    for a, b in zip(jax.tree.leaves(s_cram), jax.tree.leaves(s_sgd)):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.allclose(a, b) for a, b in zip(jax.tree.leaves(s_sgd), jax.tree.leaves(state))
    )


def cram_factory(rho):
    return cram(
        optax.sgd(0.05, momentum=0.9), rho=rho, sparsities=(0.5, 0.8), plus=True, sparse_grad=True
    )


@pytest.mark.parametrize("check", optax_battery.CHECKS, ids=lambda c: c.__name__)
def test_battery(check):
    assert check(cram_factory, {"rho": 0.05})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": -0.1}, "rho must be finite and >= 0, got -0.1"),
        ({"rho": 0.1, "sparsities": ()}, "non-empty"),
        ({"rho": 0.1, "sparsities": (0.5, 1.0)}, r"in \[0, 1\), got 1.0"),
        ({"rho": 0.1, "compression": "svd"}, "'svd'"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cram(optax.sgd(0.1), **kwargs)


def test_missing_grad_fn_and_params():
    params, loss, _ = lsq()
    tx = cram(optax.sgd(0.1), rho=0.1)
    state = tx.init(params)
    g = jax.grad(loss)(params)
    with pytest.raises(ValueError, match="grad_fn"):
        tx.update(g, state, params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(g, state, grad_fn=jax.grad(loss))
