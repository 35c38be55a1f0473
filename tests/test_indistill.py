"""InDistill pieces: PKT and MSE against numpy, the curriculum as data, auxiliary pruning,
and exact resume mid-curriculum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.data import DataStream
from jaxcomp.distill.curriculum import (
    Curriculum,
    Stage,
    fit_curriculum,
    indistill_curriculum,
    single_curriculum,
)
from jaxcomp.distill.indistill import PrunedBlocks, layerwise_targets, restrict, select_channels
from jaxcomp.distill.pkt import feature_mse, pkt_loss
from jaxcomp.models.cnn32 import Cnn32, auxiliary_cnn, student_cnn
from jaxcomp.train import split_model

# ---------------------------------------------------------------- numpy transcriptions


def _np_cos(x, eps=1e-6):
    x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
    return (x @ x.T + 1) / 2


def _np_pkt_reference(t, s, eps=1e-6):
    """methods/pkt.py of gsarridis/InDistill, in numpy (float64)."""

    def dist_kernel(x):
        sq = (x**2).sum(1)
        d = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0, None) + eps)
        return 1 / (1 + d)

    loss = 0.0
    for k in (_np_cos, dist_kernel):
        a, b = k(t), k(s)
        a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
        loss += np.mean((a - b) * (np.log(a) - np.log(b)))
    return loss


def _np_pkt_original(t, s, eps=1e-6):
    """Passalis & Tefas' cosine PKT (KL divergence), in numpy."""
    a, b = _np_cos(t, eps), _np_cos(s, eps)
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    return np.mean(a * np.log((a + eps) / (b + eps)))


def test_pkt_matches_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(12, 7)).astype(np.float32)
    s = rng.normal(size=(12, 3, 2)).astype(np.float32)  # flattened per sample
    t[3] = 0.0  # a zero row: cosine 0, as the reference's NaN -> 0
    s64, t64 = s.reshape(12, -1).astype(np.float64), t.astype(np.float64)
    got = pkt_loss(t, s, kernel="combined")
    np.testing.assert_allclose(got, _np_pkt_reference(t64, s64), rtol=2e-5)
    got = pkt_loss(t, s, kernel="cosine")
    np.testing.assert_allclose(got, _np_pkt_original(t64, s64), rtol=2e-5)
    # identical features give zero loss; the jitted gradient is finite
    np.testing.assert_allclose(pkt_loss(t, t, kernel="combined"), 0.0, atol=1e-7)
    g = jax.jit(jax.grad(lambda x: pkt_loss(t, x, kernel="combined")))(jnp.asarray(s))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


def test_feature_mse_matches_numpy_and_validates():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 3, 3, 2)), rng.normal(size=(4, 3, 3, 2))
    np.testing.assert_allclose(feature_mse(a, b), np.mean((a - b) ** 2), rtol=1e-6)
    with pytest.raises(ValueError, match=r"same batch size.*\(4, 5\).*\(3, 5\)"):
        pkt_loss(np.ones((4, 5)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="same batch size"):
        feature_mse(np.ones((4, 5)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="shapes differ"):
        feature_mse(np.ones((4, 5)), np.ones((4, 6)))
    with pytest.raises(ValueError, match="'rbf'"):
        pkt_loss(np.ones((4, 5)), np.ones((4, 5)), kernel="rbf")


# ---------------------------------------------------------------- curriculum


def test_indistill_curriculum_switches_at_reference_epochs():
    spe = 7
    cur = indistill_curriculum(spe)
    assert cur.epoch_boundaries == (0, 3, 7, 12, 60, 70)
    assert cur.total_steps == 70 * spe
    expected = {0: (0, "mse"), 2: (0, "mse"), 3: (1, "mse"), 6: (1, "mse"), 7: (2, "mse")}
    expected.update({11: (2, "mse"), 12: (3, "pkt"), 59: (3, "pkt"), 60: (3, "pkt")})
    for epoch, (feature, loss) in expected.items():
        for step in (epoch * spe, epoch * spe + spe - 1):
            st = cur.stage_at(step)
            assert (st.features, st.losses) == ((feature,), (loss,)), (epoch, step)
    assert cur.stage_at(59 * spe).lr_scale == 1.0 and cur.stage_at(60 * spe).lr_scale == 0.1
    # the traced stage index agrees with the Python one at every step
    steps = np.arange(cur.total_steps)
    traced = jax.jit(jax.vmap(cur.stage_index))(jnp.asarray(steps))
    np.testing.assert_array_equal(traced, [cur.stage_index(int(s)) for s in steps])
    with pytest.raises(ValueError, match="step must be in"):
        cur.stage_index(70 * spe)


def test_curriculum_validation_names_the_value():
    with pytest.raises(ValueError, match="unknown feature index 7"):
        Curriculum((Stage(7, "mse", 1),), 10)
    with pytest.raises(ValueError, match="unknown loss 'kl'"):
        Stage(0, "kl", 1)
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        Stage(0, "mse", 0)
    with pytest.raises(ValueError, match="one loss per feature"):
        Stage((0, 1), ("mse",), 2)
    with pytest.raises(ValueError, match="final_epochs must exceed"):
        indistill_curriculum(5, final_epochs=10)
    cur = single_curriculum(4, (0, 1, 2, 3), ("mse", "mse", "mse", "pkt"), epochs=6)
    assert cur.boundaries == (0, 24, 64) and cur.stages[1].lr_scale == 0.1


# ---------------------------------------------------------------- networks and pruning


def _trained_like(model: Cnn32, seed: int) -> Cnn32:
    """Give BatchNorm non-trivial statistics/affine parameters and the convs non-zero biases."""
    rng = np.random.default_rng(seed)
    for conv, bn in zip(model.convs, model.bns):
        c = bn.scale.value.shape[0]
        conv.bias.value = jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32)
        bn.scale.value = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
        bn.bias.value = jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32)
        bn.mean.value = jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32)
        bn.var.value = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
    return model


def test_cnn_shapes_match_the_reference():
    x = jnp.ones((2, 32, 32, 1))

    def shapes(make):  # traced only: no parameter is materialised
        return [
            f.shape
            for f in nnx.eval_shape(lambda: make(10, in_channels=1, rngs=nnx.Rngs(0)).features(x))
        ]

    assert shapes(auxiliary_cnn) == [
        (2, 15, 15, 16),
        (2, 6, 6, 32),
        (2, 2, 2, 64),
        (2, 128),
        (2, 10),
    ]
    assert shapes(student_cnn) == [(2, 15, 15, 8), (2, 6, 6, 16), (2, 2, 2, 32), (2, 64), (2, 10)]
    aux = nnx.eval_shape(lambda: auxiliary_cnn(10, in_channels=1, rngs=nnx.Rngs(0)))
    stu = nnx.eval_shape(lambda: student_cnn(10, in_channels=1, rngs=nnx.Rngs(0)))
    assert aux.fc1.kernel.value.shape == (256, 128) and stu.fc1.kernel.value.shape == (128, 64)
    with pytest.raises(ValueError, match="too small"):
        Cnn32(input_hw=8, rngs=nnx.Rngs(0))


def test_l1_channel_selection_and_bad_widths():
    aux = nnx.jit(lambda: auxiliary_cnn(10, in_channels=1, rngs=nnx.Rngs(3)))()
    keep = select_channels(aux, (8, 16, 32))
    for k, idx in enumerate(keep):
        w = np.asarray(aux.convs[k].kernel.value)
        l1 = np.abs(w).reshape(-1, w.shape[-1]).sum(0)
        np.testing.assert_array_equal(idx, np.sort(np.argsort(-l1, kind="stable")[: len(idx)]))
    rand = select_channels(aux, (8, 16, 32), method="random", key=jax.random.key(0))
    assert [len(r) for r in rand] == [8, 16, 32] and all(np.all(np.diff(r) > 0) for r in rand)
    with pytest.raises(ValueError, match=r"auxiliary widths \(16, 32, 64\).*\(8, 40, 32\)"):
        select_channels(aux, (8, 40, 32))
    with pytest.raises(ValueError, match="method"):
        select_channels(aux, (8, 16, 32), method="l2")


def test_pruned_targets_equal_eval_mode_auxiliary_on_kept_channels():
    aux = nnx.jit(lambda: auxiliary_cnn(10, in_channels=1, rngs=nnx.Rngs(1)))()
    aux = _trained_like(aux, seed=2)
    keep = select_channels(aux, (8, 16, 32))
    pruned = PrunedBlocks(aux, keep)
    aux.eval()
    x = jax.random.uniform(jax.random.key(0), (5, 32, 32, 1))
    both = nnx.jit(lambda a, p, x: (a.features(x), layerwise_targets(a, p, x)))
    feats, targets = both(aux, pruned, x)
    for got, want in zip(targets[:3], restrict(feats[:3], keep)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets[3], feats[3])  # fc1 comes from the unpruned auxiliary
    # the targets use the running statistics: batch statistics would give something else
    aux.train()
    train_feats, _ = both(aux, pruned, x)
    assert not np.allclose(train_feats[0][..., keep[0]], targets[0], atol=1e-3)


# ---------------------------------------------------------------- resume


def _tiny_setup():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 64).astype(np.int32)
    aux = _trained_like(Cnn32((4, 4, 4), 8, 3, in_channels=1, rngs=nnx.Rngs(0)), seed=1)
    keep = select_channels(aux, (2, 2, 2))
    pruned = PrunedBlocks(aux, keep)
    aux.eval()
    a_gd, a_st = nnx.split(aux)
    p_gd, p_st = nnx.split(pruned)

    def target_fn(images):
        return layerwise_targets(nnx.merge(a_gd, a_st), nnx.merge(p_gd, p_st), images)

    cur = indistill_curriculum(2, block_epochs=(1, 1, 1), final_epochs=5, finetune_epochs=1)
    return x, y, target_fn, cur


_STEPS: dict = {}  # compiled steps shared by the three runs below


def _train(cur, x, y, target_fn, workdir, stop_at=None):
    student = Cnn32((2, 2, 2), 4, 3, in_channels=1, rngs=nnx.Rngs(5))
    graphdef, _, params, state = split_model(student)
    return fit_curriculum(
        graphdef,
        params,
        state,
        cur,
        DataStream(x, y, 8, seed=3),
        target_fn=target_fn,
        learning_rate=1e-2,
        workdir=str(workdir),
        ckpt_every=1000,
        log_every=1,
        stop_at=stop_at,
        progress=False,
        step_cache=_STEPS,
    )


@pytest.mark.slow  # > 30 s on 2 cores; CI runs it (the README test command runs all)
def test_resume_mid_curriculum_equals_straight_run(tmp_path):
    x, y, target_fn, cur = _tiny_setup()
    assert cur.boundaries == (0, 2, 4, 6, 10, 12)
    p_straight, s_straight, o_straight, hist = _train(cur, x, y, target_fn, tmp_path / "a")
    assert [h["stage"] for h in hist] == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 4, 4]
    assert "mse_0" in hist[0] and "mse_2" in hist[5] and "pkt_3" in hist[-1]
    _, _, o_mid, _ = _train(cur, x, y, target_fn, tmp_path / "b", stop_at=7)  # stage 3, step 1
    assert int(o_mid.count) == 7  # one optimizer across stages: 7 updates so far
    p_resumed, s_resumed, o_resumed, _ = _train(cur, x, y, target_fn, tmp_path / "b")
    for a, b in zip(
        jax.tree.leaves((p_straight, s_straight)), jax.tree.leaves((p_resumed, s_resumed))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(o_resumed.hyperparams["learning_rate"], 1e-3)  # lr / 10 stage
