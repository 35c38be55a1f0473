"""MAML / ANIL (jaxcomp.fewshot.meta): meta-gradients against finite differences and the
first-order formula, the scanned inner loop against a Python loop, the vmapped meta-batch
against per-task losses, ANIL's head-only adaptation, predictions, bad arguments."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.fewshot import build_method, method_names
from jaxcomp.fewshot.meta import ANIL, MAML, inner_loop, meta_batch_loss, meta_loss


# ------------------------------------------------------------------ pure functions
def _linear_ce(params, batch):
    """Softmax cross-entropy of a linear model: curved, so second-order terms matter."""
    x, y = batch
    logits = x @ params["w"] + params["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _task(rng, n, dim=3, way=3, dtype=np.float64):
    return (rng.normal(size=(n, dim)).astype(dtype), rng.integers(0, way, n))


def test_second_order_meta_gradient_equals_finite_differences_first_order_differs():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = {"w": jnp.asarray(rng.normal(size=(3, 3))), "b": jnp.asarray(rng.normal(size=3))}
        support, query = _task(rng, 6), _task(rng, 9)
        kw = dict(inner_steps=3, inner_lr=0.7)
        f = jax.jit(lambda p: meta_loss(_linear_ce, p, support, query, **kw))
        g2 = jax.jit(jax.grad(f))(params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        eps = 1e-5
        fd = np.array(
            [
                (f(unravel(flat.at[i].add(eps))) - f(unravel(flat.at[i].add(-eps)))) / (2 * eps)
                for i in range(flat.size)
            ]
        )
        g2_flat = np.asarray(jax.flatten_util.ravel_pytree(g2)[0])
        assert g2_flat.dtype == np.float64
        np.testing.assert_allclose(g2_flat, fd, rtol=1e-6, atol=1e-9)

        # first order: the query gradient at the adapted parameters (Sec. 5.2)
        g1 = jax.grad(lambda p: meta_loss(_linear_ce, p, support, query, first_order=True, **kw))(
            params
        )
        adapted = inner_loop(_linear_ce, params, support, **kw)
        analytic = jax.grad(_linear_ce)(adapted, query)
        g1_flat = np.asarray(jax.flatten_util.ravel_pytree(g1)[0])
        np.testing.assert_allclose(
            g1_flat, np.asarray(jax.flatten_util.ravel_pytree(analytic)[0]), rtol=1e-12, atol=1e-14
        )
        assert np.max(np.abs(g1_flat - g2_flat)) > 1e-2  # the second-order terms are real


def _mlp(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def test_inner_loop_equals_python_loop_of_sgd_steps():
    rng = np.random.default_rng(1)
    params = {
        "w1": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
        "b1": jnp.zeros(6, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
    }
    batch = (
        jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
        jnp.asarray(rng.normal(size=(8, 2)), jnp.float32),
    )
    got = jax.jit(lambda p: inner_loop(_mlp, p, batch, inner_steps=4, inner_lr=0.05))(params)
    want = params
    for _ in range(4):
        g = jax.grad(_mlp)(want, batch)
        want = jax.tree.map(lambda w, gw: w - 0.05 * gw, want, g)
    for k in params:
        assert got[k].dtype == jnp.float32
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
        assert not np.allclose(got[k], params[k])  # it did move
    # a rolled or partly unrolled scan computes the same steps (and the same meta-gradient)
    qb = (batch[0][::-1], batch[1][::-1])
    kw = dict(inner_steps=4, inner_lr=0.05)
    g_unrolled = jax.grad(lambda p: meta_loss(_mlp, p, batch, qb, **kw))(params)
    for unroll in (1, 3, False):
        rolled = jax.jit(
            lambda p, u=unroll: inner_loop(_mlp, p, batch, inner_steps=4, inner_lr=0.05, unroll=u)
        )(params)
        for k in params:
            np.testing.assert_allclose(rolled[k], got[k], rtol=1e-6, atol=1e-6)
        g_rolled = jax.grad(lambda p, u=unroll: meta_loss(_mlp, p, batch, qb, unroll=u, **kw))(
            params
        )
        for k in params:
            np.testing.assert_allclose(g_rolled[k], g_unrolled[k], rtol=1e-5, atol=1e-6)


def test_vmapped_meta_batch_equals_mean_of_per_task_losses():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32), "b": jnp.zeros(3)}
    tasks = 4
    sx, sy = rng.normal(size=(tasks, 5, 3)).astype(np.float32), rng.integers(0, 3, (tasks, 5))
    qx, qy = rng.normal(size=(tasks, 7, 3)).astype(np.float32), rng.integers(0, 3, (tasks, 7))
    kw = dict(inner_steps=2, inner_lr=0.3)
    got = jax.jit(lambda p: meta_batch_loss(_linear_ce, p, (sx, sy), (qx, qy), **kw))(params)
    one = jax.jit(jax.value_and_grad(lambda p, s, q: meta_loss(_linear_ce, p, s, q, **kw)))
    each, gs = zip(*[one(params, (sx[t], sy[t]), (qx[t], qy[t])) for t in range(tasks)])
    assert float(got) == pytest.approx(float(np.mean(each)), rel=1e-6)
    assert np.std(each) > 1e-3  # the tasks differ, so the mean is a real average
    # and the meta-gradient of the batch is the mean of the per-task meta-gradients
    g = jax.jit(jax.grad(lambda p: meta_batch_loss(_linear_ce, p, (sx, sy), (qx, qy), **kw)))(
        params
    )
    for k in params:
        np.testing.assert_allclose(g[k], np.mean([x[k] for x in gs], 0), rtol=1e-5, atol=1e-6)


def test_maml_module_meta_batch_equals_per_episode_losses():
    model = MAML(1, feat_dim=4, width=4, inner_steps=2, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    sx = jnp.asarray(rng.uniform(size=(3, 5, 1, 16, 16, 1)), jnp.float32)
    qx = jnp.asarray(rng.uniform(size=(3, 5, 2, 16, 16, 1)), jnp.float32)
    batch = nnx.jit(lambda m, s, q: m.meta_batch_loss(s, q))
    one = nnx.jit(lambda m, s, q: m.episode_loss(s, q))
    loss, metrics = batch(model, sx, qx)
    each = [one(model, sx[t], qx[t]) for t in range(3)]
    assert float(loss) == pytest.approx(float(np.mean([e[0] for e in each])), rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(
        float(np.mean([e[1]["accuracy"] for e in each])), abs=1e-6
    )


# ------------------------------------------------------------------ modules
def _toy_images(way=5, n=2, size=16, seed=4):
    """Class c: a bright 4x4 square at its own position, plus a little noise."""
    rng = np.random.default_rng(seed)
    x = 0.05 * rng.uniform(size=(way, n, size, size, 1))
    for c in range(way):
        r, col = divmod(c, 3)
        x[c, :, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] += 1.0
    return jnp.asarray(x, jnp.float32)


def test_maml_predict_images_adapts_to_the_support_set():
    model = MAML(1, feat_dim=8, width=8, inner_lr=0.2, test_inner_steps=10, rngs=nnx.Rngs(1))
    model.eval()  # the protocol's mode: MAML's BatchNorm still uses batch statistics
    sx = _toy_images()
    labels = np.repeat(np.arange(5), 2)

    @nnx.jit
    def run(m, s):
        apply, params = m.functional()
        before = apply(params, s.reshape(10, 16, 16, 1))
        return before, m.predict_images(s, s, jax.random.key(0)), params, m.adapt(s)

    before, logits, params, adapted = run(model, sx)
    assert logits.shape == (10, 5)
    assert np.mean(np.argmax(before, -1) == labels) <= 0.4
    np.testing.assert_array_equal(np.argmax(logits, -1), labels)
    ce = lambda z: float(-jnp.mean(jax.nn.log_softmax(z)[np.arange(10), labels]))  # noqa: E731
    assert ce(logits) < 0.5 * ce(before)
    # the whole network moved, the backbone included
    k0 = params["backbone"]["blocks"][0]["conv"]["kernel"]
    assert np.max(np.abs(adapted["backbone"]["blocks"][0]["conv"]["kernel"] - k0)) > 1e-4


def test_anil_inner_loop_touches_only_the_head_and_meta_gradient_reaches_backbone():
    model = ANIL(1, feat_dim=4, width=4, inner_lr=0.1, inner_steps=2, rngs=nnx.Rngs(2))
    sx = _toy_images(n=1)
    adapted = model.adapt(sx)
    original = nnx.as_pure(nnx.state(model, nnx.Param))
    leaves = jax.tree_util.tree_leaves_with_path(original["backbone"])
    assert len(leaves) == 16  # 4 blocks x (conv kernel, bias, bn scale, bias)
    for (path, a), b in zip(leaves, jax.tree.leaves(adapted["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    for k in ("kernel", "bias"):
        assert np.max(np.abs(np.asarray(adapted["head"][k]) - original["head"][k])) > 1e-4

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)

    def loss(p):
        return nnx.merge(graphdef, p, rest).episode_loss(sx, _toy_images(n=2, seed=5))[0]

    g = jax.jit(jax.grad(loss))(params)
    for i in range(4):
        assert float(jnp.abs(g["backbone"]["blocks"][i]["conv"]["kernel"]).max()) > 1e-6
    assert float(jnp.abs(g["head"]["kernel"]).max()) > 1e-6


def test_anil_predict_features_on_separable_features():
    rng = np.random.default_rng(6)
    centres = 3 * rng.normal(size=(5, 16))
    sup = jnp.asarray(centres[:, None] + 0.3 * rng.normal(size=(5, 3, 16)), jnp.float32)
    qry = jnp.asarray((centres[:, None] + 0.3 * rng.normal(size=(5, 4, 16))).reshape(20, 16))
    model = ANIL(1, feat_dim=16, width=4, inner_lr=0.5, test_inner_steps=20, rngs=nnx.Rngs(3))
    predict = nnx.jit(lambda m, s, q: m.predict_features(s, q, jax.random.key(0)))
    logits = predict(model, sup, qry)
    assert logits.shape == (20, 5)
    labels = np.repeat(np.arange(5), 4)
    np.testing.assert_array_equal(np.argmax(logits, -1), labels)
    unadapted = np.argmax(model.head(qry), -1)
    assert np.mean(unadapted == labels) < 1.0
    # support accuracy rises from the unadapted head to the adapted one
    s_flat = sup.reshape(15, 16)
    s_labels = np.repeat(np.arange(5), 3)
    assert np.mean(np.argmax(model.head(s_flat), -1) == s_labels) < 1.0
    assert np.mean(np.argmax(predict(model, sup, s_flat), -1) == s_labels) == 1.0


def test_registry_builds_meta_methods():
    assert set(method_names("meta")) >= {"maml", "anil"}
    for name, cls, lr, steps in (("maml", MAML, 1e-2, 5), ("anil", ANIL, 1e-3, 10)):
        m = build_method(
            name, in_channels=1, image_hw=(32, 32), num_base_classes=5, rngs=nnx.Rngs(0), width=2
        )
        assert isinstance(m, cls) and m.feat_dim == 2 * 2 * 2 and m.way == 5
        assert (m.inner_lr, m.inner_steps, m.test_inner_steps) == (lr, steps, steps)
        assert not m.first_order
    assert (
        build_method(
            "maml", in_channels=1, image_hw=(16, 16), num_base_classes=5, rngs=nnx.Rngs(0), way=3
        ).head.out_features
        == 3
    )


# ------------------------------------------------------------------ bad input
def test_bad_meta_arguments_raise():
    p = {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}
    batch = _task(np.random.default_rng(0), 4, dtype=np.float32)
    with pytest.raises(ValueError, match="inner_steps must be >= 1, got 0"):
        inner_loop(_linear_ce, p, batch, inner_steps=0, inner_lr=0.1)
    with pytest.raises(ValueError, match="inner_steps must be an int >= 1, got 2.0"):
        inner_loop(_linear_ce, p, batch, inner_steps=2.0, inner_lr=0.1)
    for u in (0, -2, 1.5, "yes"):
        with pytest.raises(ValueError, match=f"unroll must be a bool or an int >= 1, got {u!r}"):
            inner_loop(_linear_ce, p, batch, inner_steps=2, inner_lr=0.1, unroll=u)
    for lr in (0.0, -0.01, float("nan")):
        with pytest.raises(ValueError, match=f"inner_lr must be finite and > 0, got {lr}"):
            meta_loss(_linear_ce, p, batch, batch, inner_steps=1, inner_lr=lr)
    bx = (np.zeros((2, 4, 3), np.float32), np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match=r"same size >= 1.*\[2, 3\]"):
        meta_batch_loss(_linear_ce, p, bx, bx, inner_steps=1, inner_lr=0.1)
    rngs = nnx.Rngs(0)
    for cls in (MAML, ANIL):
        with pytest.raises(ValueError, match="inner_steps must be >= 1, got 0"):
            cls(1, feat_dim=4, width=4, inner_steps=0, rngs=rngs)
        with pytest.raises(ValueError, match="test_inner_steps must be >= 1, got 0"):
            cls(1, feat_dim=4, width=4, test_inner_steps=0, rngs=rngs)
        with pytest.raises(ValueError, match="inner_lr must be finite and > 0, got -1.0"):
            cls(1, feat_dim=4, width=4, inner_lr=-1.0, rngs=rngs)
        with pytest.raises(ValueError, match="way must be an int >= 2, got 1"):
            cls(1, feat_dim=4, width=4, way=1, rngs=rngs)
    maml = MAML(1, feat_dim=4, width=4, rngs=rngs)
    s3, q3 = jnp.zeros((3, 1, 16, 16, 1)), jnp.zeros((3, 2, 16, 16, 1))
    with pytest.raises(ValueError, match="episode way=3 .* head's way=5"):
        maml.episode_loss(s3, q3)
    with pytest.raises(ValueError, match="episode way=3 .* head's way=5"):
        maml.predict_images(s3, q3, jax.random.key(0))
    with pytest.raises(ValueError, match=r"query must be \(way, query, \.\.\.\)"):
        maml.episode_loss(jnp.zeros((5, 1, 16, 16, 1)), q3)
    anil = ANIL(1, feat_dim=4, width=4, rngs=rngs)
    with pytest.raises(ValueError, match="episode way=3 .* head's way=5"):
        anil.predict_features(jnp.zeros((3, 1, 4)), jnp.zeros((6, 4)), jax.random.key(0))
    with pytest.raises(ValueError, match="episode way=3 .* head's way=5"):
        anil.episode_loss(s3, q3)
