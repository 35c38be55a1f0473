"""Input validation of the library's public entry points (issue #12): every bad input is a
``ValueError`` that names the offending value, leaf, key, file or line; counts are exact."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


# ---------------------------------------------------------------------------------------------
# optimizers: hyperparameters and non-finite gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda O: O.mfac(0.1, damping=math.inf), "damping must be finite and > 0, got inf"),
        (lambda O: O.mfac(0.1, momentum=1.5), r"momentum must be in \[0, 1\), got 1.5"),
        (lambda O: O.mfac(0.1, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (lambda O: O.mfac(0.1, weight_decay=math.nan), "weight_decay must be finite"),
        (lambda O: O.mfac(math.inf), "learning_rate must be finite, got inf"),
        (lambda O: O.ggt(0.1, eps=math.inf), "eps must be finite and > 0, got inf"),
        (lambda O: O.ggt(0.1, beta1=np.float32(1.5)), r"beta1 must be in \[0, 1\)"),
        (lambda O: O.cram(optax.sgd(0.1), rho=math.inf), "rho must be finite and >= 0, got inf"),
        (lambda O: O.cram(optax.sgd(0.1), rho=math.nan), "rho must be finite and >= 0, got nan"),
        (lambda O: O.topk(np.float32(1.5)), r"fraction must be in \(0, 1\], got np.float32"),
    ],
)
def test_optimizer_hyperparameters_rejected(make, match):
    from jaxcomp import optim

    with pytest.raises(ValueError, match=match):
        make(optim)


def test_optimizers_accept_numpy_hyperparameters():
    from jaxcomp import optim

    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    grads = {"w": jnp.ones((2, 3))}
    txs = [
        optim.mfac(
            np.float32(0.1),
            num_grads=np.int32(2),
            damping=np.float32(1e-2),
            momentum=np.float32(0.5),
            compressor=optim.topk(np.float32(0.5)),
        ),
        optim.ggt(
            np.float32(0.1),
            num_grads=np.int64(2),
            eps=np.float32(1e-3),
            beta1=np.float32(0.5),
            compressor=optim.lowrank(np.int64(1)),
        ),
        optim.cram(optax.sgd(0.1), rho=np.float32(0.1), sparsities=(np.float32(0.5),)),
    ]
    for tx in txs:
        state = tx.init(params)
        upd, _ = tx.update(grads, state, params, grad_fn=lambda p: grads)
        assert upd["w"].shape == (2, 3) and upd["w"].dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(upd["w"])))


def _tree_equal(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_apply_if_finite_protects_mfac_state():
    from jaxcomp import optim

    params = {"w": jnp.arange(8.0).reshape(2, 4) / 8}
    inner = optim.mfac(0.1, num_grads=3, damping=1e-2, momentum=0.9, compressor=optim.topk(0.5))
    tx = optax.apply_if_finite(inner, max_consecutive_errors=3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(2):
        _, state = step({"w": jnp.cos(jnp.arange(8.0) + i).reshape(2, 4)}, state, params)
    before = state.inner_state
    for bad in (jnp.nan, jnp.inf):
        upd, state = step({"w": jnp.full((2, 4), 1.0).at[0, 1].set(bad)}, state, params)
        assert bool(jnp.all(upd["w"] == 0))
        assert _tree_equal(state.inner_state, before)  # window, gram, EF buffer, momentum
    upd, state = step({"w": jnp.ones((2, 4))}, state, params)
    assert bool(jnp.all(jnp.isfinite(upd["w"]))) and bool(jnp.any(upd["w"] != 0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
    # unguarded, the same NaN poisons the momentum and the error-feedback buffer for good
    raw = inner.init(params)
    _, raw = inner.update({"w": jnp.full((2, 4), jnp.nan)}, raw, params)
    _, raw = inner.update({"w": jnp.ones((2, 4))}, raw, params)
    assert not bool(jnp.all(jnp.isfinite(raw.momentum)))


def test_apply_if_finite_protects_cram_base_state():
    from jaxcomp import optim

    params = {"w": jnp.arange(8.0).reshape(2, 4) / 8 - 0.3}
    base = optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), max_consecutive_errors=3)
    tx = optim.cram(base, rho=0.05, sparsities=(0.5,), plus=True)
    state = tx.init(params)
    good = lambda p: jax.tree.map(lambda x: 2 * x, p)  # gradient of sum(x^2)
    nan_hat = lambda p: jax.tree.map(lambda x: x * jnp.nan, p)  # the compressed pass blows up
    _, state = tx.update(good(params), state, params, grad_fn=good)
    before = state.base_state.inner_state
    for g, g_fn in ((good(params), nan_hat), ({"w": jnp.full((2, 4), jnp.inf)}, good)):
        upd, state = tx.update(g, state, params, grad_fn=g_fn)
        assert bool(jnp.all(upd["w"] == 0))
        assert _tree_equal(state.base_state.inner_state, before)
    upd, state = tx.update(good(params), state, params, grad_fn=good)
    assert bool(jnp.all(jnp.isfinite(upd["w"]))) and bool(jnp.any(upd["w"] != 0))


# ---------------------------------------------------------------------------------------------
# knowledge-graph files and prover inputs
# ---------------------------------------------------------------------------------------------


def test_kg_non_utf8_names_file_and_line(tmp_path):
    from jaxcomp.data import kg

    f = tmp_path / "train.tsv"
    f.write_bytes(b"a\tp\tb\nc\tp\td\n\xffe\tp\tf\n")
    with pytest.raises(ValueError, match=r"train.tsv: line 3: not UTF-8"):
        kg.load_triples(f)
    nl = tmp_path / "facts.nl"
    nl.write_bytes(b"p(a, b).\nq(\xe9, c).\n")
    with pytest.raises(ValueError, match=r"facts.nl: line 2: not UTF-8"):
        kg.load_nl_facts(nl)


def test_kg_bom_stripped(tmp_path):
    from jaxcomp.data import kg

    f = tmp_path / "train.tsv"
    f.write_bytes("\ufeffa\tp\tb\nb\tp\tc\n".encode())
    assert kg.load_triples(f) == [("a", "p", "b"), ("b", "p", "c")]
    t = tmp_path / "rules.nlt"
    t.write_bytes("\ufeff3  #1(X, Y) :- #1(Y, X).\n".encode())
    from jaxcomp.prover import load_templates

    assert load_templates(t)[0].count == 3


def test_kg_empty_files_rejected(tmp_path):
    from jaxcomp.data import kg
    from jaxcomp.prover import KnowledgeBase, load_templates

    f = tmp_path / "train.tsv"
    f.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"train.tsv: no triples"):
        kg.load_triples(f)
    nl = tmp_path / "c.nl"
    nl.write_text("% only a comment\n")
    with pytest.raises(ValueError, match=r"c.nl: no facts"):
        kg.load_nl_facts(nl)
    with pytest.raises(ValueError, match="at least one fact or mention"):
        KnowledgeBase.from_triples([])
    bad = tmp_path / "bad.nlt"
    bad.write_text("3  #1(X, Y) :- #1(Y, Z).\n")
    with pytest.raises(ValueError, match=r"bad.nlt: line 1: head variable"):
        load_templates(bad)


def test_prover_goals_checked():
    from flax import nnx

    from jaxcomp import prover

    kb = prover.KnowledgeBase.from_triples([("a", "p", "b"), ("b", "p", "c")])
    tpl = prover.parse_templates("3  #1(X, Y) :- #1(Y, X).")
    model = prover.GNTP(kb, tpl, 4, rngs=nnx.Rngs(0))
    cfg = prover.ProverConfig()
    with pytest.raises(ValueError, match=r"goals is empty"):
        model(jnp.zeros((0, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"goals\[1\] = \[0, 1, 3\] has object index 3"):
        prover.score_triples(
            model.params(), kb.arrays(), np.array([[0, 0, 1], [0, 1, 3]]), tpl, cfg
        )
    with pytest.raises(ValueError, match=r"predicate index -1"):
        prover.explain(model.params(), kb.arrays(), np.array([[-1, 0, 1]]), tpl, cfg)
    with pytest.raises(ValueError, match=r"shape \(B, 3\).*got shape \(3,\)"):
        model(jnp.array([0, 0, 1]))
    with pytest.raises(ValueError, match="integer indices, got dtype float32"):
        model(jnp.zeros((1, 3), jnp.float32))
    scores = prover.score_triples(model.params(), kb.arrays(), np.array([[0, 0, 1]]), tpl, cfg)
    assert scores.shape == (1,) and 0.0 <= float(scores[0]) <= 1.0


# ---------------------------------------------------------------------------------------------
# Bernstein-Galerkin: convergence by residual, singular problems
# ---------------------------------------------------------------------------------------------


def test_galerkin_accepts_converged_high_degree():
    from jaxcomp.numerics import galerkin
    from jaxcomp.numerics.examples import classic_problems

    problem = classic_problems()["cubic"]  # exact solution is a polynomial of degree 2
    for degree in (16, 24):
        sol = galerkin(problem, degree)  # stopped on the step size only: refused before
        assert 1 <= sol.iterations < 50
        with jax.enable_x64(True):
            x = np.linspace(problem.a, problem.b, 17)
            err = np.max(np.abs(np.asarray(sol(x)) - np.asarray(problem.exact(jnp.asarray(x)))))
        assert err < 1e-12, (degree, err)


def test_galerkin_singular_problems_raise():
    from jaxcomp.numerics import BVP, galerkin, solve_bvp
    from jaxcomp.numerics.galerkin import SINGULAR_TOL

    neumann = BVP(lambda x, u, du: jnp.ones_like(x), 0.0, 1.0, (0, 1, 0), (0, 1, 0), is_linear=True)
    resonant = BVP.linear(1.0, 0.0, math.pi**2, 0.0, 0.0, 1.0, (1, 0, 0), (1, 0, 1))
    nonlinear_neumann = BVP(lambda x, u, du: 1.0 + 0.0 * u**3, 0.0, 2.0, (0, 1, 0), (0, 1, 2))
    for problem in (neumann, resonant, nonlinear_neumann):
        with pytest.raises(ValueError, match="singular .*left=.*right="):
            galerkin(problem, 10)
        with pytest.raises(ValueError, match="singular"):
            solve_bvp(problem, 10, 16)
    near = BVP.linear(1.0, 0.0, 9.0, 0.0, 0.0, 1.0, (1, 0, 0), (1, 0, 1))  # 9 < pi^2: unique
    sol = galerkin(near, 16)
    with jax.enable_x64(True):  # u = sin(3x) / sin(3)
        x = np.linspace(0, 1, 9)
        np.testing.assert_allclose(np.asarray(sol(x)), np.sin(3 * x) / np.sin(3), atol=1e-10)
    assert SINGULAR_TOL < 1e-3
