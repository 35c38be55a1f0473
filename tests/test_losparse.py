"""LoSparse: decomposition, conversion, importance/EMA/schedule, pruning counts, export."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_battery
import pytest
from flax import nnx

from jaxcomp.models import bert
from jaxcomp.nn import losparse as ls
from jaxcomp.pruning.schedules import cubic

TINY = bert.BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=10,
)
IDS = jnp.array([[1, 4, 9, 3, 2, 0], [1, 7, 2, 0, 0, 0]])
MASK = (IDS > 0).astype(jnp.int32)


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, mask)


@pytest.fixture(scope="module")
def tiny_bert():
    model = bert.BertModel(TINY, rngs=nnx.Rngs(0))
    return lambda: nnx.clone(model)


def test_rank_for_ratio_and_decompose():
    assert ls.rank_for_ratio((384, 1536), 0.2) == math.ceil(0.2 * 384 * 1536 / 1920) == 62
    assert ls.rank_for_ratio((384, 384), 0.0) == 0
    with pytest.raises(ValueError, match="1.5"):
        ls.rank_for_ratio((4, 4), 1.5)
    w = jax.random.normal(jax.random.key(0), (12, 7))
    a, b, s = ls.decompose(w, 3)
    assert a.shape == (12, 3) and b.shape == (3, 7) and s.shape == (12, 7)
    np.testing.assert_allclose(a @ b + s, w, atol=1e-5)
    # A B is the best rank-3 approximation (Eckart-Young): its error is the tail singular values.
    sv = np.linalg.svd(np.asarray(w), compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(s), np.sqrt((sv[3:] ** 2).sum()), rtol=1e-4)
    # A = U_r sqrt(s), B = sqrt(s) V_r^T: both factors carry the same singular values.
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        ls.decompose(w, 8)


def test_convert_reproduces_dense_bert_and_selects_encoder_only(tiny_bert):
    model = tiny_bert()
    dense = _forward(model, IDS, MASK)
    ls.convert(model, 0.3)
    for layer in model.layers:
        for name in ("query", "key", "value", "attention_output", "intermediate", "output"):
            assert isinstance(getattr(layer, name), ls.LoSparseLinear), name
    assert isinstance(model.pooler, nnx.Linear)  # pooler and embeddings untouched
    assert model.layers[0].intermediate.rank == ls.rank_for_ratio((16, 32), 0.3)
    np.testing.assert_allclose(_forward(model, IDS, MASK), dense, atol=2e-5)
    # The special variables are their own types, so filters pick them.
    n_s = len(jax.tree.leaves(nnx.state(model, ls.LoSparseS)))
    assert n_s == 6 * TINY.num_hidden_layers
    assert len(jax.tree.leaves(nnx.state(model, ls.LoSparseA))) == n_s


def _reference_importance(s_seq, g_seq, beta1, beta2, delta_t):
    """Hand computation of the reference Pruner.update_ipt_with_local_window + scores."""
    ipt = np.zeros_like(s_seq[0])
    avg = np.zeros_like(ipt)
    unc = np.zeros_like(ipt)
    for t, (s, g) in enumerate(zip(s_seq, g_seq)):
        local = t % delta_t
        if local == 0:
            avg = beta1 * avg + (1 - beta1) * ipt
            if 0 < beta2 < 1:
                unc = beta2 * unc + (1 - beta2) * np.abs(ipt - avg)
            ipt = np.abs(s * g)
        else:
            ipt = (ipt * local + np.abs(s * g)) / (local + 1)
    return ipt, avg, unc


@pytest.mark.parametrize("beta2", [1.0, 0.7])
def test_importance_ema_uncertainty_match_hand_computation(beta2):
    rng = np.random.default_rng(0)
    s0 = rng.normal(size=(3, 4)).astype(np.float32)
    params = {"S": jnp.asarray(s0), "w": jnp.ones(2)}
    lr, delta_t, steps = 0.1, 3, 7
    tx = ls.losparse_pruning(
        lambda t: 0.0, beta1=0.85, beta2=beta2, delta_t=delta_t, inner=optax.sgd(lr)
    )
    state = tx.init(params)
    s_seq, g_seq = [], []
    step = jax.jit(tx.update)
    for _ in range(steps):
        g = {"S": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "w": jnp.ones(2)}
        s_after = np.asarray(params["S"]) - lr * np.asarray(g["S"])  # S' after the SGD step
        s_seq.append(s_after)
        g_seq.append(np.asarray(g["S"]))
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
    ipt, avg, unc = _reference_importance(s_seq, g_seq, 0.85, beta2, delta_t)
    np.testing.assert_allclose(state.ipt[0], ipt, rtol=1e-5)
    np.testing.assert_allclose(state.exp_avg_ipt[0], avg, rtol=1e-5)
    np.testing.assert_allclose(state.exp_avg_unc[0], unc, rtol=1e-5, atol=1e-7)
    assert state.count.dtype == jnp.int32 and int(state.count) == steps
    score = avg if beta2 == 1.0 else avg * unc
    np.testing.assert_allclose(ls.neuron_scores(jnp.asarray(score)), score.mean(0), rtol=1e-5)


def test_cubic_schedule_values():
    sched = cubic(0.0, 0.5, 10, warmup_steps=2, cooldown_steps=3)
    got = [float(sched(t)) for t in range(11)]
    # warm-up (t <= 2), cubic over span 5, final phase (t > 7)
    want = [0, 0, 0] + [0.5 - 0.5 * (1 - (t - 2) / 5) ** 3 for t in range(3, 8)] + [0.5] * 3
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert abs(got[3] - 0.244) < 1e-6
    with pytest.raises(ValueError, match="total_steps=5"):
        cubic(0.0, 0.5, 5, warmup_steps=3, cooldown_steps=2)


def test_global_threshold_exact_neuron_counts():
    # Two S matrices with different input sizes: neurons cost 4 and 2 parameters.
    scores = [jnp.array([0.9, 0.1, 0.5]), jnp.array([0.8, 0.2, 0.7, 0.05, 0.3])]
    keep = ls._global_keep(scores, [4, 2], 0.5)  # budget: 11 of 22 parameters
    # Ranked: .9 (4) .8 (2) .7 (2) -> 8 params; .5 (4) would make 12 > 11, so the threshold is .7
    np.testing.assert_array_equal(keep[0], [True, False, False])
    np.testing.assert_array_equal(keep[1], [True, False, True, False, False])
    keep = ls._global_keep(scores, [4, 2], 1.0)
    assert all(bool(k.all()) for k in keep)


def _pruning_run(tx, steps, shapes=((4, 6), (4, 10)), seed=0):
    rng = np.random.default_rng(seed)
    params = {
        f"l{i}": {"S": jnp.asarray(rng.normal(size=s), jnp.float32), "b": jnp.zeros(s[1])}
        for i, s in enumerate(shapes)
    }
    target = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    loss = lambda p: sum(
        jnp.sum((a - b) ** 2 * (1 + b)) for a, b in zip(*map(jax.tree.leaves, (p, target)))
    )
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(loss)(params)
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    history = []
    for _ in range(steps):
        params, state = step(params, state)
        history.append((params, state))
    return history


def test_pruned_neurons_exact_count_and_stay_zero_with_adam():
    delta_t = 3
    sched = cubic(0.0, 0.75, 14, warmup_steps=2, cooldown_steps=3)
    tx = ls.losparse_pruning(sched, delta_t=delta_t, inner=optax.adam(0.05))
    history = _pruning_run(tx, 16)
    for t, (params, state) in enumerate(history):
        s_leaves = [params["l0"]["S"], params["l1"]["S"]]
        for s, keep in zip(s_leaves, state.keep):
            # every pruned column is exactly zero after apply_updates, at every step
            assert np.all(np.asarray(s)[:, ~np.asarray(keep)] == 0.0), t
        n_kept = sum(int(k.sum()) for k in state.keep)
        if t % delta_t == 0:  # refresh step: exact global count (all neurons cost 4 params)
            assert n_kept == math.floor((1 - float(sched(t))) * 16 + 1e-3 / 4), t
    final_params, final_state = history[-1]
    assert sum(int(k.sum()) for k in final_state.keep) == 4  # 25% of 16 neurons
    nonzero_cols = sum(
        int(np.any(np.asarray(final_params[k]["S"]) != 0, 0).sum()) for k in ("l0", "l1")
    )
    assert nonzero_cols == 4
    # biases (not S) are trained, not pruned
    assert np.all(np.asarray(final_params["l1"]["b"]) != 0)


def test_no_mask_refresh_before_the_first_scores_exist():
    # A schedule already at 50% at step 0: the first window's importance is not in the EMA yet,
    # so step 0 must prune nothing (all scores would be 0 and ties would go by tree order).
    delta_t = 3
    pruned = _pruning_run(
        ls.losparse_pruning(lambda t: 0.5, delta_t=delta_t, inner=optax.sgd(0.1)), 7
    )
    plain = _pruning_run(optax.sgd(0.1), delta_t)
    for t in range(delta_t):
        assert all(bool(k.all()) for k in pruned[t][1].keep), t
        for x, y in zip(jax.tree.leaves(pruned[t][0]), jax.tree.leaves(plain[t][0])):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # at t = delta_t the first refresh prunes half of the S parameters, by score
    params, state = pruned[delta_t]
    assert sum(int(k.sum()) for k in state.keep) == 8
    scores = [ls.neuron_scores(a) for a in state.exp_avg_ipt]
    flat = np.concatenate([np.asarray(s) for s in scores])
    kept = np.concatenate([np.asarray(k) for k in state.keep])
    assert flat[kept].min() >= flat[~kept].max()


def test_chain_last_mode_matches_wrapped_sgd():
    sched = lambda t: jnp.where(t >= 3, 0.5, 0.0)
    wrapped = ls.losparse_pruning(sched, delta_t=3, inner=optax.sgd(0.1))
    chained = optax.chain(optax.sgd(0.1), ls.losparse_pruning(sched, delta_t=3))
    a = _pruning_run(wrapped, 7)[-1]
    b = _pruning_run(chained, 7)[-1]
    for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    np.testing.assert_array_equal(a[1].keep[0], b[1][1].keep[0])
    assert sum(int(k.sum()) for k in a[1].keep) == 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta1"):
        ls.losparse_pruning(lambda t: 0.0, beta1=1.0)
    with pytest.raises(ValueError, match="delta_t"):
        ls.losparse_pruning(lambda t: 0.0, delta_t=0)
    with pytest.raises(ValueError, match="no S matrix"):
        ls.losparse_pruning(lambda t: 0.0).init({"w": jnp.ones((2, 2))})


def test_nnx_state_training_and_export_equals_masked_model(tiny_bert):
    model = tiny_bert()
    ls.convert(model, 0.25)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = ls.losparse_pruning(lambda t: 0.6, delta_t=2, inner=optax.adam(1e-3))
    state = tx.init(params)
    ids = IDS

    @jax.jit
    def step(params, state):
        def loss(p):
            h = nnx.merge(graphdef, p, rest)(ids, MASK)
            return jnp.mean(h**2)

        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    masked = nnx.merge(graphdef, params, rest)
    s_all = jax.tree.leaves(nnx.state(masked, ls.LoSparseS))
    kept_cols = sum(int(np.any(np.asarray(s) != 0, axis=0).sum()) for s in s_all)
    assert kept_cols == sum(int(k.sum()) for k in state.keep)
    total_s = sum(s.size for s in s_all)
    kept_params = sum(int(np.asarray(s)[:, np.asarray(k)].size) for s, k in zip(s_all, state.keep))
    assert kept_params <= 0.4 * total_s and kept_params > 0.3 * total_s

    exported = ls.export(masked)
    assert isinstance(exported.layers[0].query, ls.LoSparseExported)
    np.testing.assert_allclose(
        _forward(exported, IDS, MASK), _forward(masked, IDS, MASK), atol=1e-5
    )
    # the exported S stores only the kept columns: the report counts exactly that
    rep_masked = ls.parameter_report(masked, ls.LoSparseS)
    rep_export = ls.parameter_report(exported, ls.LoSparseS)
    assert rep_masked["params"] == total_s and rep_export["params"] == kept_params
    assert rep_export["bytes"] == 4 * kept_params


def test_sparse_only_and_lowrank_only_layers_export():
    w = jax.random.normal(jax.random.key(1), (6, 5))
    b = jnp.arange(5.0)
    x = jax.random.normal(jax.random.key(2), (3, 6))

    class Net(nnx.Module):
        def __init__(self, layer):
            self.layer = layer

        def __call__(self, x):
            return self.layer(x)

    sparse_only = ls.LoSparseLinear.from_kernel(w, b, 0)  # rank 0: S == W
    np.testing.assert_allclose(sparse_only(x), x @ w + b, atol=1e-5)
    sparse_only.S.set_value(sparse_only.S[...].at[:, jnp.array([1, 3])].set(0.0))
    net = Net(sparse_only)
    exported = ls.export(net)
    np.testing.assert_allclose(exported(x), net(x), atol=1e-5)
    assert exported.layer.S[...].shape == (6, 3)
    np.testing.assert_array_equal(exported.layer.index[...], [0, 2, 4])

    lowrank = Net(ls.LoSparseLinear.from_kernel(w, b, 2, sparse=False))
    u, s, vt = np.linalg.svd(np.asarray(w), full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vt[:2]
    np.testing.assert_allclose(lowrank(x), x @ best + b, atol=1e-5)
    exported = ls.export(lowrank)
    np.testing.assert_allclose(exported(x), lowrank(x), atol=1e-5)
    assert ls.parameter_report(exported)["params"] == 6 * 2 + 2 * 5 + 5


def _battery_factory(learning_rate):
    """losparse_pruning around SGD; the battery's (16, 8) kernel plays the role of S."""
    return ls.losparse_pruning(
        cubic(0.0, 0.5, 4, warmup_steps=1, cooldown_steps=1),
        delta_t=2,
        inner=optax.sgd(learning_rate),
        where=lambda p: [k[-1].key == "kernel" for k, _ in jax.tree_util.tree_leaves_with_path(p)],
    )


@pytest.mark.parametrize("check", optax_battery.CHECKS)
def test_optax_battery(check):
    assert check(_battery_factory, {"learning_rate": 0.1})


def test_save_load_compressed_roundtrip(tiny_bert, tmp_path):
    model = tiny_bert()
    ls.convert(model, 0.25)
    rng = np.random.default_rng(0)
    for _, m in nnx.iter_modules(model):  # prune about half of the neurons of every S
        if isinstance(m, ls.LoSparseLinear):
            cut = rng.random(m.out_features) < 0.5
            m.S.set_value(m.S[...].at[:, cut].set(0.0))
    m = model.layers[0].value
    m.S.set_value(jnp.zeros_like(m.S[...]))  # a layer without S columns at all
    want = _forward(model, IDS, MASK)
    info = ls.save_compressed(model, tmp_path / "c.safetensors")
    assert isinstance(model.layers[0].query, ls.LoSparseLinear)  # the model is not modified
    exported = ls.export(model)
    assert info["params"] == ls.parameter_report(exported, nnx.Not(nnx.RngState))["params"]
    assert 0 < info["bytes"] == (tmp_path / "c.safetensors").stat().st_size
    print(f"compressed tiny BERT: {info['bytes']} bytes, {info['params']} values")

    # Rebuilt from the stored shapes into a dense model of the same config (other weights).
    loaded = ls.load_compressed(bert.BertModel(TINY, rngs=nnx.Rngs(9)), tmp_path / "c.safetensors")
    assert isinstance(loaded.layers[0].query, ls.LoSparseExported)
    assert loaded.layers[0].value.S is None
    for name in ("query", "intermediate", "output"):
        a, b = getattr(loaded.layers[0], name), getattr(exported.layers[0], name)
        assert a.S[...].shape == b.S[...].shape
        np.testing.assert_array_equal(a.index[...], b.index[...])
    np.testing.assert_allclose(_forward(loaded, IDS, MASK), want, atol=1e-5)

    other = dataclasses.replace(TINY, intermediate_size=24)
    with pytest.raises(
        ValueError, match=r"intermediate.*maps 16 -> 32 features, the model.s maps 16 -> 24"
    ):
        ls.load_compressed(bert.BertModel(other, rngs=nnx.Rngs(0)), tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="no LoSparseLinear"):
        ls.save_compressed(bert.BertModel(TINY, rngs=nnx.Rngs(0)), tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="save_compressed"):
        bert.hf_state_dict(model)


class _GeneralNet(nnx.Module):
    """Attention-style projections as LinearGeneral / Einsum, plus layers convert must skip."""

    def __init__(self, rngs):
        self.qkv = nnx.LinearGeneral(8, (2, 4), rngs=rngs)  # (..., 8) -> (..., 2, 4)
        self.out = nnx.LinearGeneral((2, 4), 8, axis=(-2, -1), rngs=rngs)
        self.proj = nnx.Einsum("bsd,dnh->bsnh", (8, 2, 3), (2, 3), rngs=rngs)
        self.diag = nnx.Einsum(  # no matrix form
            "bsd,d->bsd", (8,), None, kernel_init=nnx.initializers.ones, rngs=rngs
        )
        self.head = nnx.Linear(8, 3, rngs=rngs)  # blocked by name

    def __call__(self, x):
        y = self.out(self.qkv(x))
        return self.head(self.diag(y)), self.proj(y)


def test_convert_linear_general_and_einsum_reports_skipped(tmp_path):
    net = _GeneralNet(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    want = net(x)
    with pytest.warns(UserWarning, match=r"left diag dense: einsum 'bsd,d->bsd'"):
        net, report = ls.convert(net, 0.5, report=True)
    assert sorted(report.converted) == ["out", "proj", "qkv"]
    assert report.skipped["head"] == "not selected"
    assert (
        report.skipped["diag"]
        == "einsum 'bsd,d->bsd' is not a product over the input's trailing axes"
    )
    assert isinstance(net.qkv, ls.LoSparseLinear) and net.qkv.S[...].shape == (8, 8)
    assert net.proj.in_shape == (8,) and net.proj.out_shape == (2, 3)
    assert isinstance(net.diag, nnx.Einsum) and isinstance(net.head, nnx.Linear)
    got = net(x)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the kernels are reshaped, not permuted: pruning acts on output neurons (h, n) flattened
    net.proj.S.set_value(net.proj.S[...].at[:, :3].set(0.0))
    exported = ls.export(net)
    np.testing.assert_allclose(exported(x)[1], net(x)[1], atol=1e-5)
    ls.save_compressed(net, tmp_path / "g.safetensors")
    loaded = ls.load_compressed(_GeneralNet(nnx.Rngs(7)), tmp_path / "g.safetensors")
    for a, b in zip(loaded(x), net(x)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # without report= the return value is the model, as before
    assert isinstance(
        ls.convert(_GeneralNet(nnx.Rngs(0)), 0.5, select=lambda p, m: p == ("qkv",)), _GeneralNet
    )
