"""LoSparse's baselines at equal budget: movement / magnitude pruning against brute-force numpy,
low-rank-only and structured-sparse-only layers, and the budget arithmetic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_battery
import pytest
from flax import nnx
from test_losparse import TINY

from jaxcomp.models import bert
from jaxcomp.nn import losparse as ls
from jaxcomp.optim import gmp, gmp_sparsity, movement_pruning
from jaxcomp.pruning.masks import keep_count

SCHEDULE = dict(final_sparsity=0.6, begin_step=1, end_step=5, update_every=2)
SHAPES = {"a": (4, 3), "b": (5, 2)}


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    params["bias"] = np.zeros(3, np.float32)
    grads = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        for _ in range(7)
    ]
    return params, grads


def _run(tx, params, grads):
    state = tx.init(jax.tree.map(jnp.asarray, params))
    step = jax.jit(tx.update)
    p = jax.tree.map(jnp.asarray, params)
    out = []
    for g in grads:
        u, state = step(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, u)
        out.append((jax.tree.map(np.asarray, p), state))
    return out


def _brute_force(params, grads, lr, kind, scope):
    """numpy: scores (|w| or -sum g w), exact top-k at the gmp steps, SGD on masked grads."""
    p = {k: v.copy() for k, v in params.items()}
    score = {k: np.zeros_like(p[k]) for k in SHAPES}
    mask = {k: np.ones(v.shape, bool) for k, v in p.items()}
    history = []
    for t, g in enumerate(grads):
        for k in SHAPES:
            score[k] -= g[k] * p[k]
        if SCHEDULE["begin_step"] <= t <= SCHEDULE["end_step"] and (t - 1) % 2 == 0:
            s = float(gmp_sparsity(t, initial_sparsity=0.0, **SCHEDULE))
            rank = {k: (np.abs(p[k]) if kind == "magnitude" else score[k]) for k in SHAPES}
            groups = [list(SHAPES)] if scope == "global" else [[k] for k in SHAPES]
            for keys in groups:
                flat = np.concatenate([rank[k].ravel() for k in keys])
                keep = keep_count(flat.size, s)
                chosen = np.zeros(flat.size, bool)
                chosen[np.argsort(-flat, kind="stable")[:keep]] = True
                start = 0
                for k in keys:
                    mask[k] = chosen[start : start + p[k].size].reshape(p[k].shape)
                    start += p[k].size
        for k in p:
            p[k] = np.where(mask[k], p[k] - lr * g[k] * mask[k], 0.0)
        history.append(
            ({k: v.copy() for k, v in p.items()}, {k: v.copy() for k, v in mask.items()})
        )
    return history


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_movement_pruning_matches_brute_force(scope):
    params, grads = _problem()
    tx = movement_pruning(optax.sgd(0.1), scope=scope, **SCHEDULE)
    ours = _run(tx, params, grads)
    want = _brute_force(params, grads, 0.1, "movement", scope)
    for t, ((p, state), (wp, wm)) in enumerate(zip(ours, want)):
        for k in SHAPES:
            np.testing.assert_array_equal(np.asarray(state.mask[k]), wm[k], err_msg=f"{k} @ {t}")
            np.testing.assert_allclose(p[k], wp[k], rtol=1e-5, atol=1e-6)
        assert state.scores["bias"].shape == ()  # biases are not selected: no score buffer
    n = sum(math.prod(s) for s in SHAPES.values())
    kept = sum(int(np.asarray(ours[-1][1].mask[k]).sum()) for k in SHAPES)
    if scope == "global":
        assert kept == keep_count(n, 0.6)
    np.testing.assert_allclose(float(ours[-1][1].sparsity), 0.6)


def test_magnitude_baseline_is_gmp_and_matches_brute_force():
    params, grads = _problem(1)
    ours = _run(gmp(optax.sgd(0.1), distribution="global", **SCHEDULE), params, grads)
    want = _brute_force(params, grads, 0.1, "magnitude", "global")
    for (p, state), (wp, wm) in zip(ours, want):
        for k in SHAPES:
            np.testing.assert_array_equal(np.asarray(state.mask[k]), wm[k])
            np.testing.assert_allclose(p[k], wp[k], rtol=1e-5, atol=1e-6)


def test_movement_pruning_bad_arguments():
    with pytest.raises(ValueError, match="scope"):
        movement_pruning(optax.sgd(0.1), scope="row", **SCHEDULE)
    with pytest.raises(ValueError, match="multiple of update_every"):
        movement_pruning(
            optax.sgd(0.1), final_sparsity=0.5, begin_step=0, end_step=5, update_every=2
        )


@pytest.mark.parametrize("check", optax_battery.CHECKS)
def test_movement_optax_battery(check):
    factory = lambda learning_rate: movement_pruning(
        optax.sgd(learning_rate), final_sparsity=0.5, begin_step=0, end_step=2, update_every=1
    )
    assert check(factory, {"learning_rate": 0.1})


def test_sparsity_for_budget_brute_force():
    shapes = [(16, 16), (16, 32), (32, 16)]
    for keep, ratio in [(0.5, 0.2), (0.3, 0.1), (0.2, 0.0), (0.6, 0.3)]:
        s = ls.sparsity_for_budget(shapes, keep, ratio)
        total = sum(a * b for a, b in shapes)
        lowrank = 0
        for a, b in shapes:  # smallest rank whose factors hold ratio of the matrix
            r = next(r for r in range(min(a, b) + 1) if r * (a + b) >= ratio * a * b)
            lowrank += r * (a + b)
        assert abs(lowrank + (1 - s) * total - keep * total) < 1e-6 * total
    assert ls.sparsity_for_budget(shapes, 0.3, 0.0) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="more than the budget"):
        ls.sparsity_for_budget(shapes, 0.1, 0.3)


def test_lowrank_only_and_sparse_only_baselines_convert_a_bert():
    cfg = TINY
    ids = jnp.array([[1, 4, 9, 3, 2, 0]])
    dense = bert.BertModel(cfg, rngs=nnx.Rngs(0))
    want = dense(ids)
    sparse_only = ls.convert(nnx.clone(dense), 0.0)  # rank 0: S = W, pruned by neuron
    layer = sparse_only.layers[0].intermediate
    assert layer.rank == 0 and layer.S is not None
    np.testing.assert_allclose(sparse_only(ids), want, atol=1e-5)
    lowrank = ls.convert(nnx.clone(dense), 0.3, sparse=False)
    layer = lowrank.layers[0].intermediate
    assert layer.S is None and layer.rank == ls.rank_for_ratio((16, 32), 0.3)
    n = ls.parameter_report(lowrank, ls.LoSparseA)["params"]
    n += ls.parameter_report(lowrank, ls.LoSparseB)["params"]
    assert n == sum(
        ls.rank_for_ratio(s, 0.3) * (s[0] + s[1]) for s in [(16, 16)] * 4 + [(16, 32), (32, 16)]
    )
