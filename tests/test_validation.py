"""Input validation of the library's public entry points (issue #12): every bad input is a
``ValueError`` that names the offending value, leaf, key, file or line; counts are exact."""

from __future__ import annotations

import json
import math
import os

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
    sizes = [0, 1, 99, 100, 2**21 + 3, 25_557_032, 999_999_937, 2**31 - 1]
    all_traced = jax.jit(jax.vmap(lambda x: jnp.stack([keep_count(n, x) for n in sizes])))(
        jnp.float32(sparsities)
    )  # (sparsity, size), one compilation
    for n, traced in zip(sizes, np.asarray(all_traced).T):
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
        step = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p, grad_fn=lambda q: grads))
        upd, _ = step(grads, state, params)
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
    raw, raw_step = inner.init(params), jax.jit(inner.update)
    _, raw = raw_step({"w": jnp.full((2, 4), jnp.nan)}, raw, params)
    _, raw = raw_step({"w": jnp.ones((2, 4))}, raw, params)
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
    with pytest.raises(ValueError, match=r"quad_points=3 under-integrates degree 10"):
        galerkin(near, 10, quad_points=3)


# ---------------------------------------------------------------------------------------------
# BERT / CLIP: inputs, checkpoints, configs, tokenizers
# ---------------------------------------------------------------------------------------------

TINY_CLIP = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_clip")


def _tiny_bert():
    from flax import nnx

    from jaxcomp.models import bert

    cfg = bert.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=24, max_position_embeddings=12, type_vocab_size=2,
    )  # fmt: skip
    return bert.BertModel(cfg, rngs=nnx.Rngs(1))


def _write_bert(tmp_path, model, mutate=None, config_edit=None):
    from safetensors.numpy import save_file

    from jaxcomp.models import bert

    tensors = bert.hf_state_dict(model)
    if mutate:
        mutate(tensors)
    config = {k: v for k, v in model.config.__dict__.items() if k != "add_pooler"}
    config.update(config_edit or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_bert_input_ranges():
    model = _tiny_bert()
    ok = jnp.array([[1, 5, 7, 2]])
    with pytest.raises(ValueError, match=r"sequence length 13 exceeds max_position_embeddings 12"):
        model(jnp.ones((1, 13), jnp.int32))
    with pytest.raises(ValueError, match=r"input_ids\[0, 2\] = 50 is outside \[0, vocab_size=50\)"):
        model(jnp.array([[1, 5, 50, 2]]))
    with pytest.raises(ValueError, match=r"input_ids\[0, 0\] = -1"):
        model(np.array([[-1, 5, 7, 2]]))
    with pytest.raises(ValueError, match=r"token_type_ids\[0, 1\] = 2 .*type_vocab_size=2"):
        model(ok, token_type_ids=jnp.array([[0, 2, 0, 0]]))
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids"):
        model(ok, jnp.ones((1, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"integer token ids, got dtype float32"):
        model(ok.astype(jnp.float32))
    out = model(ok, jnp.ones((1, 4), bool))
    assert out.shape == (1, 4, 16) and bool(jnp.all(jnp.isfinite(out)))
    # under jit the sequence length is static and still checked; out-of-range ids give NaN, never
    # a clamped embedding
    from flax import nnx

    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        run(state, jnp.ones((1, 13), jnp.int32))
    bad = run(state, jnp.array([[1, 5, 50, 2], [1, 5, 7, 2]]))
    assert bool(jnp.all(jnp.isnan(bad[0]))) and bool(jnp.all(jnp.isfinite(bad[1])))


def test_bert_loader_rejects_int_bool_tensors_and_bad_config(tmp_path):
    from jaxcomp.models import bert

    model = _tiny_bert()
    key = "encoder.layer.0.attention.self.query.weight"

    def to_int(t):
        t[key] = t[key].astype(np.int32)

    path = _write_bert(tmp_path / "int", model, to_int)
    with pytest.raises(ValueError, match=rf"int.*model.safetensors.*{key}|{key}.*int32"):
        bert.load_pretrained(path)

    def to_bool(t):
        t["embeddings.LayerNorm.weight"] = t["embeddings.LayerNorm.weight"] > 0

    path = _write_bert(tmp_path / "bool", model, to_bool)
    with pytest.raises(ValueError, match=r"'embeddings.LayerNorm.weight'.*dtype bool"):
        bert.load_pretrained(path)
    for field, value in (("hidden_size", "24"), ("num_hidden_layers", 1.5),
                         ("layer_norm_eps", "1e-12"), ("vocab_size", True)):  # fmt: skip
        path = _write_bert(tmp_path / field, model, config_edit={field: value})
        with pytest.raises(ValueError, match=rf"config.json.*field '{field}' must be"):
            bert.load_pretrained(path)
    path = _write_bert(tmp_path / "json", model)
    (path / "config.json").write_text('{"hidden_size": 16,')
    with pytest.raises(ValueError, match=r"config.json' is not valid JSON"):
        bert.load_pretrained(path)
    (path / "config.json").write_bytes(b'{"hidden_size": "\xff"}')
    with pytest.raises(ValueError, match=r"config.json' is not UTF-8"):
        bert.load_pretrained(path)
    (path / "tokenizer.json").write_text('{"version": "1.0", "model": {')
    with pytest.raises(ValueError, match=r"could not read tokenizer file .*tokenizer.json"):
        bert.load_tokenizer(path)


def _copy_clip(tmp_path):
    import shutil

    dst = tmp_path / "clip"
    shutil.copytree(TINY_CLIP, dst)
    return dst


def test_clip_loader_errors_name_the_file(tmp_path):
    from safetensors.numpy import load_file, save_file

    from jaxcomp.models import clip

    path = _copy_clip(tmp_path)
    good = clip.load_pretrained(path)
    weights = path / "model.safetensors"
    tensors = load_file(str(weights))
    key = sorted(k for k in tensors if k.endswith("weight"))[0]
    bad = {**tensors, key: tensors[key].astype(np.int64)}
    save_file(bad, str(weights))
    with pytest.raises(ValueError, match=rf"model.safetensors'.*{key!r}.*dtype int64"):
        clip.load_pretrained(path)
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match=r"could not read safetensors file .*model.safetensors"):
        clip.load_pretrained(path)
    save_file(tensors, str(weights))
    cfg = path / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"config.json' is not valid JSON"):
        clip.load_pretrained(path)
    conf = json.loads(text)
    conf["vision_config"]["hidden_size"] = str(conf["vision_config"].get("hidden_size", 768))
    cfg.write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"config.json'.*field 'vision_width' must be an integer"):
        clip.load_pretrained(path)
    cfg.write_text(text)
    (path / "tokenizer.json").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"could not read tokenizer file .*tokenizer.json"):
        clip.load_tokenizer(path)
    # a failed load into an existing model leaves it unchanged (no partial model)
    before = jax.tree.map(np.asarray, jax.tree.leaves(nnx_state(good)))
    with pytest.raises(ValueError, match="dtype int64"):
        clip.load_state_dict(good, bad)
    after = jax.tree.map(np.asarray, jax.tree.leaves(nnx_state(good)))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def nnx_state(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)
