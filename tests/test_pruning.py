"""Pruning operators against numpy brute force: exact counts, ties, N:M validity, channels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcomp import pruning
from jaxcomp.models import ResNet20, SmallCNN


def make_params(seed=0, ties=False):
    rng = np.random.default_rng(seed)

    def arr(*shape):
        x = rng.standard_normal(shape).astype(np.float32)
        if ties:  # few distinct magnitudes -> many ties
            x = np.round(x * 2) / 2
        return jnp.asarray(x)

    return {
        "conv": {"kernel": arr(3, 3, 4, 8), "bias": arr(8)},
        "dense": {"kernel": arr(32, 10), "bias": arr(10)},
        "norm": {"scale": arr(8)},
    }


def np_topk(arrays, k):
    """Reference: stable argsort of -|x| over the concatenation; first k kept."""
    flat = np.concatenate([np.abs(np.asarray(a, np.float32)).ravel() for a in arrays])
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    out, off = [], 0
    for a in arrays:
        out.append(keep[off : off + a.size].reshape(a.shape))
        off += a.size
    return out


def expected_k(n, s):
    return math.ceil(round(n * (1 - s), 6))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 0.99])
def test_topk_global_matches_argsort(sparsity, ties):
    params = make_params(ties=ties)
    mask = jax.jit(lambda p, s: pruning.topk_mask(p, s))(params, sparsity)
    kernels = [params["conv"]["kernel"], params["dense"]["kernel"]]
    n = sum(k.size for k in kernels)
    ref = np_topk(kernels, expected_k(n, sparsity))
    np.testing.assert_array_equal(mask["conv"]["kernel"], ref[0])
    np.testing.assert_array_equal(mask["dense"]["kernel"], ref[1])
    assert int(mask["conv"]["kernel"].sum() + mask["dense"]["kernel"].sum()) == expected_k(
        n, sparsity
    )
    for leaf in (mask["conv"]["bias"], mask["dense"]["bias"], mask["norm"]["scale"]):
        assert bool(leaf.all())  # not selected -> all True


@pytest.mark.parametrize("ties", [False, True])
def test_topk_layer_matches_argsort(ties):
    params = make_params(seed=1, ties=ties)
    for s in (0.3, 0.8):
        mask = pruning.topk_mask(params, s, scope="layer")
        for name in ("conv", "dense"):
            w = params[name]["kernel"]
            (ref,) = np_topk([w], expected_k(w.size, s))
            np.testing.assert_array_equal(mask[name]["kernel"], ref)


def test_topk_traced_sparsity_one_compile():
    params = make_params(seed=2)
    f = jax.jit(lambda p, s: pruning.topk_mask(p, s))
    n = params["conv"]["kernel"].size + params["dense"]["kernel"].size
    for s in (0.1, 0.5, 0.9, 0.95):
        m = f(params, jnp.float32(s))
        kept = int(m["conv"]["kernel"].sum() + m["dense"]["kernel"].sum())
        assert kept == expected_k(n, s)
    assert f._cache_size() == 1


def test_topk_custom_scores_and_all_equal():
    params = {"a": {"kernel": jnp.ones((10, 10))}}
    m = pruning.topk_mask(params, 0.75)  # all tied: the first 25 in row-major order
    assert np.asarray(m["a"]["kernel"]).ravel().tolist() == [True] * 25 + [False] * 75
    scores = {"a": {"kernel": jnp.arange(100.0).reshape(10, 10)}}
    m = pruning.topk_mask(params, 0.9, scores=scores)
    assert np.flatnonzero(np.asarray(m["a"]["kernel"]).ravel()).tolist() == list(range(90, 100))


def test_keep_count_decimal_sparsities():
    assert pruning.keep_count(100, 0.7) == 30
    assert pruning.keep_count(10, 0.95) == 1
    assert pruning.keep_count(7, 0.5) == 4
    assert int(pruning.keep_count(100, jnp.float32(0.7))) == 30
    assert int(jax.jit(lambda s: pruning.keep_count(1000, s))(0.9)) == 100


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_groups_along_input_dim(n, m):
    params = make_params(seed=3)
    where = None if m <= 4 else "dense"  # the conv has only 4 input channels
    mask = jax.jit(lambda p: pruning.nm_mask(p, n, m, where=where))(params)
    # Conv (kh, kw, in, out): groups along axis 2; Dense (in, out): along axis 0.
    conv = np.asarray(mask["conv"]["kernel"])
    w = np.abs(np.asarray(params["conv"]["kernel"]))
    g = conv.reshape(3, 3, 4 // m if m <= 4 else 1, min(m, 4), 8) if m <= 4 else None
    if g is not None:
        assert (g.sum(axis=3) == n).all()
        # the kept ones are the n largest of each group
        wg = w.reshape(3, 3, 4 // m, m, 8)
        kth = -np.sort(-wg, axis=3)[:, :, :, n - 1 : n, :]
        assert (wg[g] >= np.broadcast_to(kth, wg.shape)[g]).all()
    dense = np.asarray(mask["dense"]["kernel"]).reshape(32 // m, m, 10)
    assert (dense.sum(axis=1) == n).all()
    wd = np.abs(np.asarray(params["dense"]["kernel"])).reshape(32 // m, m, 10)
    ref = np.argsort(np.argsort(-wd, axis=1, kind="stable"), axis=1, kind="stable") < n
    np.testing.assert_array_equal(dense, ref)


def test_channel_mask_l1_l2():
    params = make_params(seed=4)
    for norm in ("l1", "l2"):
        mask = pruning.channel_mask(params, 0.5, norm=norm)
        for name, out in (("conv", 8), ("dense", 10)):
            w = np.asarray(params[name]["kernel"]).reshape(-1, out)
            score = np.abs(w).mean(0) if norm == "l1" else np.sqrt((w**2).mean(0))
            keep = np.zeros(out, bool)
            keep[np.argsort(-score, kind="stable")[: math.ceil(out * 0.5)]] = True
            m = np.asarray(mask[name]["kernel"]).reshape(-1, out)
            assert (m == keep[None, :]).all()  # whole output channels
    g = pruning.channel_mask(params, 0.5, scope="global")
    kept = int(g["conv"]["kernel"][0, 0, 0].sum() + g["dense"]["kernel"][0].sum())
    assert kept == 9


def test_apply_mask_report_and_one_shot():
    params = make_params(seed=5)
    pruned, mask = pruning.one_shot(params, 0.8)
    rep = pruning.sparsity_report(pruned)
    n = rep["total"]
    assert rep["zeros"] == n - expected_k(n, 0.8)
    assert set(rep["layers"]) == {"conv/kernel", "dense/kernel"}
    np.testing.assert_array_equal(pruned["conv"]["bias"], params["conv"]["bias"])
    nm, _ = pruning.one_shot(params, method="nm")
    assert pruning.sparsity_report(nm)["global"] == pytest.approx(0.5)
    layer, _ = pruning.one_shot(params, 0.5, method="layer")
    for v in pruning.sparsity_report(layer)["layers"].values():
        assert v == pytest.approx(0.5, abs=0.01)


def test_default_where_on_nnx_models():
    model = nnx.eval_shape(lambda: ResNet20(rngs=nnx.Rngs(0)))  # abstract: no compute
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    flags = pruning.select(params)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    chosen = [pruning.path_str(p) for (p, _), f in zip(leaves, jax.tree.leaves(flags)) if f]
    assert len(chosen) == 20  # 19 convs + the head
    assert all(p.endswith("kernel") for p in chosen)
    only_head = pruning.select(params, r"^head/")
    assert sum(jax.tree.leaves(only_head)) == 1


def test_schedules():
    s = pruning.schedules.cubic(0.0, 0.9, 100, warmup_steps=10, cooldown_steps=20)
    assert float(s(0)) == 0.0 and float(s(10)) == 0.0
    assert float(s(80)) == pytest.approx(0.9) and float(s(100)) == pytest.approx(0.9)
    t = 45
    expected = 0.9 + (0.0 - 0.9) * (1 - (t - 10) / 70) ** 3
    assert float(jax.jit(s)(t)) == pytest.approx(expected, rel=1e-6)
    assert float(pruning.schedules.constant(0.5)(7)) == 0.5


def test_recalibrate_batch_stats_equals_average_of_batch_stats():
    model = SmallCNN(rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.random((16, 28, 28, 1), np.float32) * (i + 1)) for i in range(3)]
    pruning.recalibrate_batch_stats(model, batches, mode="average")
    # Reference: bn1's running mean = average over batches of conv1 outputs' per-channel means.
    means = [model.conv1(x).mean(axis=(0, 1, 2)) for x in batches]
    np.testing.assert_allclose(model.bn1.mean.value, np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    variances = [model.conv1(x).var(axis=(0, 1, 2)) for x in batches]
    np.testing.assert_allclose(model.bn1.var.value, np.mean(variances, 0), rtol=1e-3, atol=1e-5)
    assert model.bn1.momentum == 0.9 and model.bn1.use_running_average


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: pruning.topk_mask(p, 1.0), r"sparsity must be in \[0, 1\), got 1.0"),
        (lambda p: pruning.topk_mask(p, -0.1), r"got -0.1"),
        (lambda p: pruning.topk_mask(p, 0.5, scope="rows"), "scope"),
        (lambda p: pruning.nm_mask(p, 4, 2), "n <= m, got n=4, m=2"),
        (
            lambda p: pruning.nm_mask(p, 2, 3),
            r"'conv/kernel' has shape \(3, 3, 4, 8\) \(input dim 4\)",
        ),
        (lambda p: pruning.topk_mask(p, 0.5, where=r"^decoder/"), "'\\^decoder/' selects no leaf"),
        (lambda p: pruning.channel_mask(p, 0.5, norm="l3"), "l3"),
        (lambda p: pruning.one_shot(p, 0.5, method="random"), "random"),
        (lambda p: pruning.schedules.cubic(0.0, 1.5, 10), "final must be in"),
        (lambda p: pruning.schedules.cubic(0.0, 0.5, 10, warmup_steps=10), "warmup_steps=10"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_params())


_topk_jit = jax.jit(lambda w, s: pruning.topk_mask({"d": {"kernel": w}}, s)["d"]["kernel"])


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.integers(-4, 4), min_size=64, max_size=64),
    sparsity=st.floats(0.0, 0.99),
)
def test_topk_property_against_argsort(data, sparsity):
    """Heavily tied integer-valued weights, any (traced) sparsity: exactly the argsort top-k."""
    w = jnp.asarray(np.array(data, np.float32).reshape(32, 2))
    mask = _topk_jit(w, sparsity)
    (ref,) = np_topk([w], int(pruning.keep_count(w.size, jnp.float32(sparsity))))
    np.testing.assert_array_equal(mask, ref)
