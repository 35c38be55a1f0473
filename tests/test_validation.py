"""Input validation of the library's public entry points (issue #12): every bad input is a
``ValueError`` that names the offending value, leaf, key, file or line; counts are exact."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp import pruning
from jaxcomp.pruning.masks import SPARSITY_GRID, keep_count

# ---------------------------------------------------------------------------------------------
# pruning: exact counts at any size
# ---------------------------------------------------------------------------------------------


def test_keep_count_resnet50_size_exact():
    # ResNet-50 has 25,557,032 weights; 0.9 keeps ceil(2,555,703.2) = 2,555,704.
    assert keep_count(25_557_032, 0.9) == 2_555_704
    assert keep_count(25_557_032, np.float32(0.9)) == 2_555_704
    traced = jax.jit(lambda s: keep_count(25_557_032, s))
    assert int(traced(jnp.float32(0.9))) == 2_555_704


def test_keep_count_integer_formula():
    sparsities = [0.0, 0.1, 0.5, 0.7, 0.9, 0.95, 0.975, 0.999999]
    for n in [0, 1, 99, 100, 2**21 + 3, 25_557_032, 999_999_937, 2**31 - 1]:
        traced = jax.jit(jax.vmap(lambda x, n=n: keep_count(n, x)))(jnp.float32(sparsities))
        for s, t in zip(sparsities, traced):
            q = round(s * SPARSITY_GRID)
            want = -((-n * (SPARSITY_GRID - q)) // SPARSITY_GRID)  # exact ceil in Python ints
            assert want == math.ceil(n * (1 - s) - 1e-6)  # 1 - s in float64, n <= 2^31
            assert keep_count(n, s) == want
            assert keep_count(n, np.float32(s)) == want
            assert int(t) == want


def test_topk_mask_exact_above_2_pow_21():
    # 2,500,001 entries at 0.9: exact ceil(250,000.1) = 250,001 (the float formula gave 250,000).
    n = 2_500_001
    x = jax.random.normal(jax.random.key(0), (1, n))

    @jax.jit
    def masks(p, s):
        return pruning.topk_mask(p, 0.9)["w"], pruning.topk_mask(p, s)["w"]

    concrete, traced = masks({"w": x}, jnp.float32(0.9))
    assert int(jnp.sum(concrete)) == int(jnp.sum(traced)) == 250_001
    assert bool(jnp.all(concrete == traced))
    mags = jnp.abs(x[0])  # the kept entries are the largest magnitudes
    assert float(mags[traced[0]].min()) >= float(mags[~traced[0]].max())


def test_keep_count_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        keep_count(2**31, 0.5)


# ---------------------------------------------------------------------------------------------
# pruning: malformed trees and leaves
# ---------------------------------------------------------------------------------------------


def _params():
    return {"a": jnp.arange(12.0).reshape(3, 4), "b": jnp.arange(8.0).reshape(2, 4) - 3.0}


def test_topk_scores_tree_mismatch_names_leaf():
    p = _params()
    with pytest.raises(ValueError, match="scores lacks \\['b'\\]"):
        pruning.topk_mask(p, 0.5, scores={"a": p["a"]})
    with pytest.raises(ValueError, match="scores leaf 'b' has shape \\(4, 2\\)"):
        pruning.topk_mask(p, 0.5, scores={"a": p["a"], "b": p["b"].T})


def test_topk_zero_size_and_scalar_leaves():
    p = {"a": jnp.arange(12.0).reshape(3, 4) - 5.5, "e": jnp.zeros((0, 4)), "s": jnp.float32(7)}
    everything = lambda path, x: True
    m = pruning.topk_mask(p, 0.5, where=everything)
    assert m["e"].shape == (0, 4) and m["s"].shape == ()
    assert int(sum(jnp.sum(v) for v in jax.tree.leaves(m))) == keep_count(13, 0.5) == 7
    assert bool(m["s"])  # 7 is the largest magnitude
    m = pruning.topk_mask(p, 0.5, where=everything, scope="layer")
    assert m["e"].shape == (0, 4) and int(jnp.sum(m["a"])) == 6 and bool(m["s"])
    only_empty = pruning.topk_mask({"e": jnp.zeros((0, 3))}, 0.3, where=everything)
    assert only_empty["e"].shape == (0, 3)


def test_nm_and_channel_reject_degenerate_leaves():
    everything = lambda path, x: True
    with pytest.raises(ValueError, match="leaf 'v' has shape \\(8,\\)"):
        pruning.nm_mask({"v": jnp.ones(8)}, 2, 4, where=everything)
    with pytest.raises(ValueError, match="leaf 's' has shape \\(\\)"):
        pruning.channel_mask({"s": jnp.float32(1)}, 0.5, where=everything)
    with pytest.raises(ValueError, match="leaf 'e' has shape \\(0, 4\\)"):
        pruning.channel_mask({"e": jnp.zeros((0, 4)), "w": jnp.ones((2, 4))}, 0.5)


def test_apply_mask_rejects_wrong_shape_structure_dtype():
    p = _params()
    good = pruning.topk_mask(p, 0.5)
    bad_shape = {**good, "a": good["a"][:1]}  # (1, 4) would broadcast silently
    with pytest.raises(ValueError, match="mask leaf 'a' has shape \\(1, 4\\)"):
        pruning.apply_mask(p, bad_shape)
    with pytest.raises(ValueError, match="mask lacks \\['b'\\]"):
        pruning.apply_mask(p, {"a": good["a"]})
    with pytest.raises(ValueError, match="mask leaf 'a' must be bool, got dtype float32"):
        pruning.apply_mask(p, {**good, "a": good["a"].astype(jnp.float32)})
    out = jax.jit(pruning.apply_mask)(p, good)
    assert int(jnp.sum(out["a"] != 0)) == int(jnp.sum(good["a"] & (p["a"] != 0)))
