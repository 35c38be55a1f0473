"""FewSAR methods trained in phases (RFS, SKD, MTL): losses vs numpy, the test-time logistic
regression vs scikit-learn, the frozen teacher, meta-transfer's scaling/shifting, and the
protocol's phase loop (order, resume)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.fewshot import build_method, method_names, protocol
from jaxcomp.fewshot.base import Frozen, frozen_copy, run_in_eval_mode
from jaxcomp.fewshot.finetune.distill import (
    RFS,
    SKD,
    l2_normalize,
    logistic_regression,
    mean_l2_distance,
    rotations,
)
from jaxcomp.fewshot.meta.mtl import MTL, ScaleShiftConv, adapt_linear_head, meta_transfer
from jaxcomp.train.step import split_model


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(z, y):
    return -np.mean(_np_log_softmax(z)[np.arange(len(y)), y])


def _np_kd(zs, zt, t):
    ls, lt = _np_log_softmax(zs / t), _np_log_softmax(zt / t)
    return np.sum(np.exp(lt) * (lt - ls)) / zs.shape[0] * t * t


# ------------------------------------------------------------------ test-time head
@pytest.mark.parametrize("dim", [8, 40])  # primal (D < S) and span-of-samples (D > S) solves
def test_logistic_regression_equals_scikit_learn(dim):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 5)
    x = rng.normal(size=(25, dim))
    x[np.arange(25), y] += 1.5
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)  # float64: a converged reference
    w, b = logistic_regression(jnp.asarray(xn, jnp.float32), jnp.asarray(y), 5, C=1.0)
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(xn, y)
    q = rng.normal(size=(40, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p_ours = jax.nn.softmax(jnp.asarray(q, jnp.float32) @ w + b)
    np.testing.assert_allclose(np.asarray(p_ours), ref.predict_proba(q), atol=2e-5)
    np.testing.assert_allclose(np.asarray(w).T, ref.coef_, atol=2e-4)
    np.testing.assert_allclose(np.asarray(b), ref.intercept_ - ref.intercept_.mean(), atol=2e-4)


def test_rotations_are_the_rotation_group():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 5, 3)), jnp.float32)
    r90, r180, r270 = rotations(x)
    np.testing.assert_array_equal(r180, rotations(r90)[0])
    np.testing.assert_array_equal(r270, rotations(r180)[0])
    np.testing.assert_array_equal(x, rotations(r270)[0])
    np.testing.assert_array_equal(r90, np.rot90(np.asarray(x), k=1, axes=(1, 2)))


# ------------------------------------------------------------------ losses vs numpy
def _rfs(cls=RFS, **kw):
    return cls(1, feat_dim=4, num_classes=6, width=4, rngs=nnx.Rngs(0), **kw)


def _batch(n=8, seed=2):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.uniform(size=(n, 16, 16, 1)), jnp.float32),
        jnp.asarray(rng.integers(0, 6, n), jnp.int32),
    )


def test_rfs_losses_equal_numpy_and_teacher_is_frozen():
    m = _rfs()
    x, y = _batch()
    loss0, _ = m.classify_loss(x, y)
    z0 = np.asarray(m.net(x))
    assert float(loss0) == pytest.approx(0.5 * _np_ce(z0, np.asarray(y)), rel=1e-5)
    teacher_logits = np.asarray(run_in_eval_mode(m.net, x))
    m.start_phase(1, nnx.Rngs(5))
    assert m.phase == 1
    np.testing.assert_allclose(np.asarray(m.teacher_logits(x)), teacher_logits, rtol=1e-6)
    zs = np.asarray(m.net(x))
    assert not np.allclose(zs, z0)  # born-again: a fresh student
    loss1, _ = m.classify_loss(x, y)
    ref = 0.5 * _np_ce(zs, np.asarray(y)) + 0.5 * _np_kd(zs, teacher_logits, 4.0)
    assert float(loss1) == pytest.approx(ref, rel=1e-5)
    # the teacher's weights are model state, not trained parameters
    _, _, params, state = split_model(m)
    assert "teacher" not in params and "teacher" in state
    assert not jax.tree.leaves(nnx.state(m.teacher, nnx.Param))
    assert jax.tree.leaves(nnx.state(m.teacher, Frozen))


def test_skd_losses_equal_numpy():
    m = _rfs(SKD)
    x, y = _batch(6)
    b = x.shape[0]
    loss0, _ = m.classify_loss(x, y)
    xs = jnp.concatenate([x, *rotations(x)])
    z = np.asarray(m.net(xs))
    zr = z @ np.asarray(m.rot_head.kernel[...]) + np.asarray(m.rot_head.bias[...])
    t = np.eye(4)[np.repeat(np.arange(4), b)]
    bce = np.mean(np.logaddexp(0, zr) - zr * t)
    ref0 = _np_ce(z, np.tile(np.asarray(y), 4)) + 0.1 * bce
    assert float(loss0) == pytest.approx(ref0, rel=1e-5)
    teacher = np.asarray(run_in_eval_mode(m.net, x))
    m.start_phase(1, nnx.Rngs(5))
    z_s = np.asarray(m.net(x))
    np.testing.assert_allclose(z_s, np.asarray(m.net(x)))
    loss1, _ = m.classify_loss(x, y)
    z1 = np.asarray(m.net(jnp.concatenate([x, rotations(x)[1]])))
    inv = np.mean(np.linalg.norm(z1[b:] - z1[:b], axis=1)) / 3
    ref1 = _np_kd(z1[:b], teacher, 4.0) + 0.1 * inv
    assert float(loss1) == pytest.approx(ref1, rel=1e-5)
    assert float(mean_l2_distance(jnp.ones((2, 3)), jnp.zeros((2, 3)))) == pytest.approx(3**0.5)
    # a rotation-symmetric image gives equal rows: value 0, finite gradient (not sqrt'(0))
    a = jnp.asarray([[1.0, 2.0], [0.0, 0.0]])
    b = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    assert float(mean_l2_distance(a, b)) == pytest.approx(2.5)
    g = jax.grad(lambda a: mean_l2_distance(a, b))(a)
    np.testing.assert_allclose(g, [[0.0, 0.0], [-0.3, -0.4]], rtol=1e-6)


def test_skd_student_starts_from_the_teacher_unless_fresh():
    x, _ = _batch(4)
    for init, same in (("teacher", True), ("fresh", False)):
        m = _rfs(SKD, student_init=init)
        before = np.asarray(run_in_eval_mode(m.net, x))
        m.start_phase(1, nnx.Rngs(9))
        after = np.asarray(run_in_eval_mode(m.net, x))
        assert np.allclose(before, after) == same


def test_frozen_copy_has_own_buffers_and_no_params():
    lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    f = frozen_copy(lin)
    assert not jax.tree.leaves(nnx.state(f, nnx.Param))
    np.testing.assert_array_equal(f.kernel[...], lin.kernel[...])
    assert f.kernel[...] is not lin.kernel[...]


# ------------------------------------------------------------------ MTL
def test_scale_shift_conv_starts_as_the_conv_and_scales_per_channel_pair():
    conv = nnx.Conv(3, 5, (3, 3), padding="SAME", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
    ss = ScaleShiftConv(conv)
    np.testing.assert_allclose(ss(x), conv(x), rtol=1e-5, atol=1e-6)
    s = np.random.default_rng(1).uniform(0.5, 1.5, size=(1, 1, 3, 5)).astype(np.float32)
    ss.scale[...] = jnp.asarray(s)
    ss.shift[...] = jnp.arange(5, dtype=jnp.float32)
    ref = nnx.Conv(3, 5, (3, 3), padding="SAME", rngs=nnx.Rngs(0))
    ref.kernel[...] = conv.kernel[...] * s
    ref.bias[...] = conv.bias[...] + jnp.arange(5, dtype=jnp.float32)
    np.testing.assert_allclose(ss(x), ref(x), rtol=1e-5, atol=1e-5)


def test_mtl_phase_one_trains_only_scale_shift_bn_and_learner():
    m = MTL(1, feat_dim=4, num_classes=6, width=4, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 16, 16, 1)), jnp.float32)
    before = np.asarray(run_in_eval_mode(m.backbone, x))
    m.start_phase(1, nnx.Rngs(1))
    np.testing.assert_allclose(run_in_eval_mode(m.backbone, x), before, rtol=1e-5, atol=1e-6)
    _, _, params, _ = split_model(m)
    names = {str(p[-1]) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    names = {n.strip("[]'.") for n in names}
    assert names == {"scale", "shift", "learner_w", "learner_b", "bias"}  # bn: scale, bias
    paths = ["/".join(str(k) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert not any("kernel" in p for p in paths)
    assert meta_transfer(nnx.Sequential(nnx.Conv(1, 2, (3, 3), rngs=nnx.Rngs(0)))) == 1


def test_adapt_linear_head_equals_python_loop_and_first_order_drops_inner_curvature():
    rng = np.random.default_rng(3)
    f = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
    y = jnp.asarray(np.repeat(np.arange(5), 2))
    w0 = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    b0 = jnp.zeros(5)

    def ce(w, b):
        z = f @ w.T + b
        return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(10), y])

    w, b = w0, b0
    for _ in range(3):
        gw, gb = jax.grad(ce, argnums=(0, 1))(w, b)
        w, b = w - 0.1 * gw, b - 0.1 * gb
    got = adapt_linear_head(w0, b0, f, y, lr=0.1, steps=3)
    np.testing.assert_allclose(got[0], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], b, rtol=1e-5, atol=1e-6)

    def outer(w0, first_order):
        wa, ba = adapt_linear_head(w0, b0, f, y, lr=0.5, steps=3, first_order=first_order)
        return ce(wa, ba)

    g1 = jax.grad(outer)(w0, True)
    g2 = jax.grad(outer)(w0, False)
    # first order: d outer / d w0 is the outer gradient at the adapted weights (identity Jacobian)
    wa, ba = adapt_linear_head(w0, b0, f, y, lr=0.5, steps=3)
    np.testing.assert_allclose(g1, jax.grad(ce)(wa, ba), rtol=1e-5, atol=1e-7)
    assert not np.allclose(g1, g2, atol=1e-4)


# ------------------------------------------------------------------ protocol phases
def _clusters(num_classes=8, per_class=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(size=(num_classes, 16, 16, 1))
    x = centres[:, None] + 0.2 * rng.normal(size=(num_classes, per_class, 16, 16, 1))
    return x.reshape(-1, 16, 16, 1).astype(np.float32), np.repeat(np.arange(num_classes), per_class)


def test_protocol_runs_phases_in_order_with_a_frozen_teacher_and_resumes(tmp_path):
    x, y = _clusters()
    base, val = y < 5, y >= 5
    kw = dict(
        workdir=str(tmp_path / "run"),
        way=3,
        shot=1,
        query=2,
        episodes_per_epoch=3,
        epochs=2,
        batch_size=8,
        lr=1e-2,
        val=(x[val], y[val]),
        val_episodes=4,
        val_query=2,
        log=lambda *a: None,
    )
    logs = []
    out = protocol.train(
        RFS(1, feat_dim=4, num_classes=5, width=4, rngs=nnx.Rngs(0)),
        x[base],
        y[base],
        **{**kw, "log": logs.append},
    )
    assert [s for s in logs if "phase" in s] == ["  phase 0 (pretrain)", "  phase 1 (pretrain)"]
    hist = out["history"]
    assert len(hist["phases"]) == 2 and all(len(p["epochs"]) == 2 for p in hist["phases"])
    assert out["train_time_s"] == pytest.approx(sum(p["train_time_s"] for p in hist["phases"]))
    # the teacher is phase 0's selected model, untouched by phase 1's training
    from jaxcomp.train.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path / "run" / "phase0" / "best", max_to_keep=1)
    m0 = RFS(1, feat_dim=4, num_classes=5, width=4, rngs=nnx.Rngs(0))
    _, _, p0, s0 = split_model(m0)
    restored, _ = ck.restore({"params": p0, "model_state": s0})
    ck.close()
    teacher = {k: v for k, v in out["state"]["teacher"].items()}
    np.testing.assert_array_equal(
        teacher["head"]["kernel"], restored["params"]["net"]["head"]["kernel"]
    )
    np.testing.assert_array_equal(
        teacher["backbone"]["blocks"][0]["conv"]["kernel"],
        restored["params"]["net"]["backbone"]["blocks"][0]["conv"]["kernel"],
    )
    res = protocol.test(out, x[val], y[val], way=3, shot=1, query=2, num_episodes=6, seed=1)
    assert 0.0 <= res["accuracy"] <= 1.0
    # a second call finds both phases done and returns the same model
    again = protocol.train(
        RFS(1, feat_dim=4, num_classes=5, width=4, rngs=nnx.Rngs(0)), x[base], y[base], **kw
    )
    jax.tree.map(np.testing.assert_array_equal, again["params"], out["params"])
    jax.tree.map(np.testing.assert_array_equal, again["state"], out["state"])


def test_phase_registry_and_bad_input():
    assert {"rfs", "skd"} <= set(method_names("finetune"))
    assert "mtl" in method_names("meta")
    m = build_method("mtl", in_channels=1, image_hw=(28, 28), num_base_classes=5, rngs=nnx.Rngs(0))
    assert m.training == ("pretrain", "episodic")
    with pytest.raises(ValueError, match="-1"):
        _rfs(gamma=-1.0)
    with pytest.raises(ValueError, match="'both'"):
        _rfs(SKD, student_init="both")
    with pytest.raises(ValueError, match="C must be > 0, got 0"):
        logistic_regression(jnp.ones((2, 2)), jnp.zeros(2, jnp.int32), 2, C=0.0)
    with pytest.raises(ValueError, match="inner_iters must be >= 1, got 0"):
        MTL(1, feat_dim=4, num_classes=5, width=4, inner_iters=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="phases 0 and 1, got 2"):
        _rfs().start_phase(2, nnx.Rngs(0))
    mtl = MTL(1, feat_dim=4, num_classes=5, width=4, way=5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="3 ways"):
        mtl.logits(jnp.ones((3, 1, 4)), jnp.ones((6, 4)))

    class Odd(RFS):
        training = ("pretrain", "distill")

    with pytest.raises(ValueError, match="distill"):
        protocol.phases_of(Odd(1, feat_dim=4, num_classes=5, width=4, rngs=nnx.Rngs(0)))
    with pytest.raises(NotImplementedError, match="one training phase"):
        build_method(
            "protonet", in_channels=1, image_hw=(28, 28), num_base_classes=5, rngs=nnx.Rngs(0)
        ).start_phase(1, nnx.Rngs(0))
    assert float(jnp.linalg.norm(l2_normalize(jnp.asarray([3.0, 4.0])))) == pytest.approx(1.0)
