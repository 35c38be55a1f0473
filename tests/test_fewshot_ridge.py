"""FewSAR meta-learning heads R2-D2, Versa and LEO against numpy / hand-written loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from flax import nnx

from jaxcomp.fewshot import build_method, method_names
from jaxcomp.fewshot.meta import (
    LEO,
    R2D2,
    Versa,
    encoder_penalty,
    gaussian_params,
    gradient_steps,
    log_predictive,
    logit_distribution,
    orthogonality_penalty,
    r2d2_logits,
    relation_codes,
    ridge_form,
    ridge_regression,
    sample_logits,
    sample_with_kl,
)
from jaxcomp.fewshot.meta.leo import support_loss


def _onehot(way, shot):
    return np.repeat(np.eye(way), shot, axis=0)


def _np_ridge(x, y, lam):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


# ------------------------------------------------------------------ R2-D2
@pytest.mark.parametrize("shape", [(6, 10), (12, 5)])  # D > S: Woodbury; D <= S: primal
def test_ridge_regression_equals_numpy_in_both_forms(shape):
    s, d = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(s, d)).astype(np.float32)
    y = _onehot(3, s // 3).astype(np.float32)
    want = _np_ridge(x, y, 0.7)
    assert ridge_form(s, d) == ("dual" if d > s else "primal")
    for form in ("auto", "primal", "dual"):
        got = ridge_regression(jnp.asarray(x), jnp.asarray(y), 0.7, form=form)
        assert got.shape == (d, 3)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=form)


def test_ridge_tends_to_minimum_norm_least_squares():
    """lambda -> 0 with more features than samples: the min-norm interpolant (lstsq)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 12)).astype(np.float32)
    y = _onehot(2, 2).astype(np.float32)
    want = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    got = ridge_regression(jnp.asarray(x), jnp.asarray(y), 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(x @ np.asarray(got), y, atol=1e-3)  # interpolates


def test_r2d2_logits_with_bias_and_adjust_equal_numpy():
    rng = np.random.default_rng(2)
    sup = rng.normal(size=(3, 2, 5)).astype(np.float32)
    qry = rng.normal(size=(4, 5)).astype(np.float32)
    ones = lambda a: np.concatenate([a, np.ones((len(a), 1))], 1)
    for bias in (False, True):
        xs = sup.reshape(6, 5)
        xs, xq = (ones(xs), ones(qry)) if bias else (xs, qry)
        want = 2.5 * xq @ _np_ridge(xs, _onehot(3, 2), 3.0) - 0.4
        got = r2d2_logits(jnp.asarray(sup), jnp.asarray(qry), 3.0, 2.5, -0.4, bias=bias)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_r2d2_gradient_wrt_lambda_matches_finite_differences(form):
    rng = np.random.default_rng(3)
    sup = rng.normal(size=(3, 2, 4)).astype(np.float32)
    qry = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.repeat(np.arange(3), 2)

    def np_loss(lam):  # float64 closed form
        logits = 3.0 * qry @ _np_ridge(sup.reshape(6, 4), _onehot(3, 2), lam)
        return -np.mean(scipy.special.log_softmax(logits, -1)[np.arange(6), labels])

    def loss(lam):
        logits = r2d2_logits(jnp.asarray(sup), jnp.asarray(qry), lam, 3.0, form=form)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])

    lam, h = 0.8, 1e-5
    fd = (np_loss(lam + h) - np_loss(lam - h)) / (2 * h)
    assert abs(fd) > 1e-3  # the check is not vacuous
    assert float(jax.grad(loss)(lam)) == pytest.approx(fd, rel=1e-3)
    assert float(loss(lam)) == pytest.approx(np_loss(lam), rel=1e-5)


def test_r2d2_model_uses_exp_log_lambda_and_rejects_bad_input():
    model = R2D2(1, lambda_init=50.0, width=8, rngs=nnx.Rngs(0))
    assert float(model.ridge_lambda) == pytest.approx(50.0, rel=1e-6)
    rng = np.random.default_rng(4)
    s = jnp.asarray(rng.normal(size=(3, 2, 8)).astype(np.float32))
    q = jnp.asarray(rng.normal(size=(5, 8)).astype(np.float32))
    np.testing.assert_allclose(model.logits(s, q), r2d2_logits(s, q, 50.0), rtol=1e-4, atol=1e-5)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"lambda_init must be > 0.*{bad}"):
            R2D2(1, lambda_init=bad, width=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="feature dims differ: 8 vs 6"):
        model.logits(s, q[:, :6])
    with pytest.raises(ValueError, match="form must be one of.*'qr'"):
        ridge_regression(s.reshape(6, 8), jnp.ones((6, 3)), 1.0, form="qr")
    with pytest.raises(ValueError, match=r"\(6, 8\) and \(5, 3\)"):
        ridge_regression(s.reshape(6, 8), jnp.ones((5, 3)), 1.0)


# ------------------------------------------------------------------ Versa
def test_versa_log_predictive_equals_numpy_log_mean_softmax():
    rng = np.random.default_rng(5)
    samples = (3 * rng.normal(size=(7, 4, 5))).astype(np.float32)
    p = np.exp(samples - samples.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.log(p.mean(0))
    got = np.asarray(log_predictive(jnp.asarray(samples)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.log(np.exp(got).sum(-1)), 0.0, atol=1e-5)  # normalised


def test_versa_logit_distribution_and_samples_equal_numpy():
    rng = np.random.default_rng(6)
    h = rng.normal(size=(4, 6)).astype(np.float32)
    wm, wl = rng.normal(size=(3, 6)), rng.normal(size=(3, 6)) - 1
    bm, bl = rng.normal(size=3), rng.normal(size=3) - 1
    args = [jnp.asarray(a, jnp.float32) for a in (wm, wl, bm, bl)]
    mean, logvar = logit_distribution(jnp.asarray(h), *args)
    np.testing.assert_allclose(mean, h @ wm.T + bm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        logvar, np.log((h**2) @ np.exp(wl).T + np.exp(bl)), rtol=1e-5, atol=1e-5
    )
    key = jax.random.key(0)
    s = sample_logits(mean, logvar, key, 5)
    eps = np.asarray(jax.random.normal(key, (5, 4, 3)))
    np.testing.assert_allclose(s, mean + eps * np.exp(0.5 * logvar), rtol=1e-5, atol=1e-5)
    # no variance: every sample is the mean and the predictive is its softmax
    s0 = sample_logits(mean, jnp.full_like(logvar, -80.0), key, 5)
    np.testing.assert_allclose(log_predictive(s0), jax.nn.log_softmax(mean), atol=1e-5)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        sample_logits(mean, logvar, key, 0)


def test_versa_is_invariant_to_the_order_of_the_shots_and_samples_with_the_key():
    model = Versa(1, feat_dim=8, d_theta=16, num_samples=4, width=8, rngs=nnx.Rngs(0))
    model.eval()
    rng = np.random.default_rng(7)
    s = jnp.asarray(rng.normal(size=(3, 4, 8)).astype(np.float32))
    q = jnp.asarray(rng.normal(size=(5, 8)).astype(np.float32))
    pred = nnx.jit(lambda m, s, q, k: m.predict_features(s, q, k))
    key = jax.random.key(3)
    a = np.asarray(pred(model, s, q, key))
    b = np.asarray(pred(model, s[:, ::-1], q, key))
    assert a.shape == (5, 3) and np.isfinite(a).all()
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(pred(model, s, q, jax.random.key(4))), a)
    # the episode loss is -mean log p(y|x) of the predictive
    model.train()
    sx = jnp.asarray(rng.normal(size=(3, 2, 16, 16, 1)).astype(np.float32))
    qx = jnp.asarray(rng.normal(size=(3, 2, 16, 16, 1)).astype(np.float32))
    loss, metrics = nnx.jit(lambda m, s, q: m.episode_loss(s, q))(model, sx, qx)
    assert np.isfinite(float(loss)) and 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_versa_rejects_bad_input():
    kw = dict(feat_dim=8, width=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        Versa(1, num_samples=0, **kw)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        Versa(1, dropout=1.0, **kw)
    with pytest.raises(ValueError, match="d_theta must be >= 1, got 0"):
        Versa(1, d_theta=0, **kw)
    model = Versa(1, d_theta=4, **kw)
    with pytest.raises(ValueError, match="features have dim 6, the model expects 8"):
        model.predict_features(jnp.ones((2, 1, 6)), jnp.ones((3, 6)), jax.random.key(0))
    with pytest.raises(ValueError, match="feature dims differ: 8 vs 6"):
        model.predict_features(jnp.ones((2, 1, 8)), jnp.ones((3, 6)), jax.random.key(0))


# ------------------------------------------------------------------ LEO
def _leo(**kw):
    return LEO(1, **{"feat_dim": 8, "hid_dim": 4, "width": 8, **kw}, rngs=nnx.Rngs(0))


def test_leo_latent_inner_loop_equals_python_loop():
    model = _leo()
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(6, 8)).astype(np.float32))
    labels = jnp.repeat(jnp.arange(3), 2)
    z0 = jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32))
    lr = jnp.asarray([0.5, 0.1, 0.3, 0.2])
    loss = lambda z, k: support_loss(model.decode(z, k), x, labels)
    for key in (None, jax.random.key(1)):
        got = gradient_steps(loss, z0, lr, 4, key)
        keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
        z = z0
        for k in keys:
            z = z - lr * jax.grad(loss)(z, k)
        np.testing.assert_allclose(got, z, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, z0)
    np.testing.assert_array_equal(gradient_steps(loss, z0, lr, 0), z0)
    with pytest.raises(ValueError, match="num_steps must be >= 0, got -1"):
        gradient_steps(loss, z0, lr, -1)


def test_leo_gradient_through_the_inner_loop_matches_finite_differences():
    """Second order: d(query loss after the fine-tuning loop)/d(finetune lr)."""
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(6, 5)).astype(np.float32))
    xq = jnp.asarray(rng.normal(size=(9, 5)).astype(np.float32))
    labels = jnp.repeat(jnp.arange(3), 2)
    w0 = jnp.asarray(0.3 * rng.normal(size=(3, 5)).astype(np.float32))

    def outer(lr):
        w = gradient_steps(lambda w, _: support_loss(w, x, labels), w0, lr, 3)
        return support_loss(w, xq, jnp.repeat(jnp.arange(3), 3))

    h = 1e-2
    fd = (outer(0.5 + h) - outer(0.5 - h)) / (2 * h)
    assert float(jax.grad(outer)(0.5)) == pytest.approx(float(fd), rel=2e-2)


def test_leo_shapes_relation_codes_and_eval_determinism():
    model = _leo()
    rng = np.random.default_rng(10)
    z = jnp.asarray(rng.normal(size=(3, 4)).astype(np.float32))
    assert model.decode(z, None).shape == (3, 8)
    assert model.decode(z, jax.random.key(0)).shape == (3, 8)
    codes = rng.normal(size=(3, 2, 4)).astype(np.float32)
    g = lambda p: jnp.tanh(p[..., :4] * p[..., 4:]).repeat(2, -1)  # any pairwise function
    want = np.zeros((3, 8))
    for n in range(3):
        for k in range(2):
            for m in range(3):
                for l in range(2):
                    pair = np.concatenate([codes[n, k], codes[m, l]])
                    want[n] += np.asarray(g(jnp.asarray(pair))) / (2 * 3 * 2)
    np.testing.assert_allclose(relation_codes(jnp.asarray(codes), g), want, rtol=1e-5, atol=1e-6)
    s = jnp.asarray(rng.normal(size=(3, 2, 8)).astype(np.float32))
    q = jnp.asarray(rng.normal(size=(5, 8)).astype(np.float32))
    w, kl, pen = model.adapt(s, jax.random.key(2))
    assert w.shape == (3, 8) and kl.shape == () and pen.shape == ()
    pred = nnx.jit(lambda m, s, q, k: m.predict_features(s, q, k))
    a = np.asarray(pred(model, s, q, jax.random.key(0)))
    assert a.shape == (5, 3)
    assert not np.allclose(pred(model, s, q, jax.random.key(1)), a)  # training: sampled
    model.eval()
    e0, e1 = pred(model, s, q, jax.random.key(0)), pred(model, s, q, jax.random.key(1))
    np.testing.assert_array_equal(e0, e1)  # eval: the Gaussians' means


def test_leo_regularisers_equal_numpy():
    rng = np.random.default_rng(11)
    w = rng.normal(size=(4, 10)).astype(np.float32)
    cos = (w @ w.T) / np.outer(np.linalg.norm(w, axis=1), np.linalg.norm(w, axis=1))
    np.testing.assert_allclose(
        orthogonality_penalty(jnp.asarray(w)), np.mean((cos - np.eye(4)) ** 2), rtol=1e-5
    )
    q, _ = np.linalg.qr(rng.normal(size=(10, 4)))
    assert float(orthogonality_penalty(jnp.asarray(q.T, jnp.float32))) < 1e-10
    params = rng.normal(size=(3, 6)).astype(np.float32)
    mean, std = gaussian_params(jnp.asarray(params), 0.1)
    np.testing.assert_allclose(mean, params[:, :3])
    u = params[:, 3:]
    want = np.maximum(np.where(u > 0, u, np.exp(u) - 1) + 0.1, 1e-10)
    np.testing.assert_allclose(std, want, rtol=1e-6)
    m, sd = params[:, :3], np.exp(params[:, 3:])
    key = jax.random.key(5)
    z, kl = sample_with_kl(jnp.asarray(m), jnp.asarray(sd), key)
    eps = np.asarray(jax.random.normal(key, (3, 3)), np.float64)
    np.testing.assert_allclose(z, m + sd * eps, rtol=1e-5, atol=1e-6)
    z = np.asarray(z, np.float64)
    want = np.mean(scipy.stats.norm.logpdf(z, m, sd) - scipy.stats.norm.logpdf(z))
    assert float(kl) == pytest.approx(want, rel=1e-4)
    # std << |mean|: (z - mean) / std would cancel in float32; the estimate must not
    big, tiny = jnp.full((3, 3), 300.0), jnp.full((3, 3), 1e-6)
    _, kl = sample_with_kl(big, tiny, key)
    want = np.mean(0.5 * 300.0**2 - 0.5 * eps**2 - np.log(1e-6))  # z = mean to 1e-9 relative
    assert float(kl) == pytest.approx(want, rel=1e-5)
    z = rng.normal(size=(3, 3)).astype(np.float32)
    z0, z1 = jnp.asarray(z), jnp.asarray(params[:, :3])
    assert float(encoder_penalty(z0, z1)) == pytest.approx(np.mean((z - params[:, :3]) ** 2))
    g0, g1 = jax.grad(encoder_penalty, argnums=(0, 1))(z0, z1)
    np.testing.assert_allclose(g0, 2 * (z - params[:, :3]) / z.size, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(g1, 0.0)  # stop-gradient on the adapted codes


def test_leo_episode_loss_and_bad_input():
    model = _leo(inner_steps=2, finetune_steps=2)
    rng = np.random.default_rng(12)
    sx = jnp.asarray(rng.normal(size=(3, 2, 16, 16, 1)).astype(np.float32))
    qx = jnp.asarray(rng.normal(size=(3, 2, 16, 16, 1)).astype(np.float32))
    loss, m = nnx.jit(lambda m, s, q: m.episode_loss(s, q))(model, sx, qx)
    want = m["query_ce"] + 1e-3 * m["kl"] + 1e-3 * m["orthogonality"]  # + 1e-9 * penalty
    assert float(loss) == pytest.approx(float(want), rel=1e-4)
    frozen = _leo(freeze_backbone=True)
    grads = nnx.jit(nnx.grad(lambda m, s, q: m.episode_loss(s, q)[0]))(frozen, sx, qx)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["backbone"]))
    assert float(jnp.abs(grads["decoder"]["kernel"]).max()) > 0
    for kw, msg in (
        ({"inner_steps": -1}, "inner_steps must be an int >= 0, got -1"),
        ({"finetune_steps": 1.5}, "finetune_steps must be an int >= 0, got 1.5"),
        ({"kl_weight": -1.0}, "kl_weight must be >= 0, got -1.0"),
        ({"hid_dim": 0}, "hid_dim must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=msg):
            _leo(**kw)
    with pytest.raises(ValueError, match="features have dim 6, the model expects 8"):
        model.predict_features(jnp.ones((2, 1, 6)), jnp.ones((3, 6)), jax.random.key(0))


# ------------------------------------------------------------------ registry
def test_meta_methods_are_registered_and_build():
    assert {"r2d2", "versa", "leo"} <= set(method_names("meta"))
    for name, cls in (("r2d2", R2D2), ("versa", Versa), ("leo", LEO)):
        m = build_method(
            name, in_channels=1, image_hw=(16, 16), num_base_classes=5, rngs=nnx.Rngs(0), width=8
        )
        assert isinstance(m, cls) and m.training == "episodic" and m.test_on == "features"
