"""CrAM's library pieces against numpy references: BatchNorm tuning, ResNet-20 shortcuts,
train_classifier's hand-back, fresh dropout in the compressed pass, sparse fine-tuning and
gradual magnitude pruning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_battery
import pytest
from flax import nnx

from jaxcomp import pruning
from jaxcomp.models import SmallCNN

# --- 1. BatchNorm tuning (CrAM utils/eval_utils.py:fix_bn_stats) -------------------------------


def test_calibration_batches_follow_crams_loader():
    images = np.arange(5000)[:, None]
    got = list(pruning.calibration_batches(images, seed=3))
    assert len(got) == 100  # iterations
    assert [len(b) for b in got[:16]] == ([128] * 7 + [104]) * 2  # shuffle=True, drop_last=False
    subset = np.concatenate(got[:8])[:, 0]
    assert len(np.unique(subset)) == 1000  # one epoch = the 1000-image subset, each once
    for e in range(12):  # every full epoch is a fresh permutation of the same subset
        epoch = np.concatenate(got[8 * e : 8 * e + 8])[:, 0]
        assert sorted(epoch) == sorted(subset)
        if e:
            assert not np.array_equal(epoch, np.concatenate(got[8 * e - 8 : 8 * e])[:, 0])
    assert np.isin(np.concatenate(got[96:])[:, 0], subset).all()  # the half epoch at the end
    again = list(pruning.calibration_batches(images, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(got, again))
    other = np.concatenate(list(pruning.calibration_batches(images, seed=4))[:8])[:, 0]
    assert sorted(other) != sorted(subset)


def _bn_train(h, bn):
    mu, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    return (h - mu) / np.sqrt(var + bn.epsilon) * np.asarray(bn.scale.value) + np.asarray(
        bn.bias.value
    )


def _numpy_bn_tuning(model, batches, momentum):
    """Reset, then per batch the PyTorch EMA r <- (1 - m) r + m stat on both BatchNorms, with
    each layer's input computed in training mode (batch statistics), in float64."""
    stats = {k: [np.zeros(c), np.ones(c)] for k, c in (("bn1", 4), ("bn2", 8))}
    for x in batches:
        h1 = np.asarray(model.conv1(jnp.asarray(x)), np.float64)
        a1 = nnx.max_pool(
            jnp.asarray(np.maximum(_bn_train(h1, model.bn1), 0), jnp.float32), (2, 2), (2, 2)
        )
        h2 = np.asarray(model.conv2(a1), np.float64)
        for k, h in (("bn1", h1), ("bn2", h2)):
            for i, stat in enumerate((h.mean((0, 1, 2)), h.var((0, 1, 2)))):
                stats[k][i] = (1 - momentum) * stats[k][i] + momentum * stat
    return stats


def _flip(batch, rng):
    return batch[:, :, ::-1] if rng.random() < 0.5 else batch


@pytest.mark.parametrize("source", ["array", "iterable"])
def test_bn_tuning_is_an_ema_over_crams_batches(source):
    model = SmallCNN(rngs=nnx.Rngs(0), widths=(4, 8), hidden=16, input_hw=(8, 8))
    rng = np.random.default_rng(0)
    images = (rng.random((300, 8, 8, 1)) * np.linspace(0.5, 2.0, 8)[None, :, None, None]).astype(
        np.float32
    )
    kw = dict(calibration_size=200, batch_size=64, iterations=11, seed=1)
    ref_batches = list(pruning.calibration_batches(images, **kw))
    aug_rng = np.random.default_rng(1)
    ref_batches = [_flip(b, aug_rng) for b in ref_batches]
    ref = _numpy_bn_tuning(model, ref_batches, 0.2)
    if source == "array":
        pruning.recalibrate_batch_stats(model, images, momentum=0.2, augment=_flip, **kw)
    else:  # batches as given, at most `iterations` of them
        given = list(pruning.calibration_batches(images, **{**kw, "iterations": 15}))
        pruning.recalibrate_batch_stats(
            model, iter(given), momentum=0.2, augment=_flip, iterations=11, seed=1
        )
    for k in ("bn1", "bn2"):
        bn = getattr(model, k)
        np.testing.assert_allclose(bn.mean.value, ref[k][0], rtol=2e-4, atol=1e-5)
        np.testing.assert_allclose(bn.var.value, ref[k][1], rtol=2e-4, atol=1e-5)
    # 11 steps at 0.2 keep 0.8^11 = 8.6% of the reset values: far from the plain average
    assert np.abs(np.asarray(model.bn1.var.value) - ref_batches[0].var()).max() > 1e-3
    assert model.bn1.momentum == 0.9 and model.bn1.use_running_average


def test_bn_tuning_default_is_crams_100_steps_of_momentum_0_1():
    model = SmallCNN(rngs=nnx.Rngs(1), widths=(4, 8), hidden=16, input_hw=(8, 8))
    images = np.random.default_rng(2).random((1200, 8, 8, 1)).astype(np.float32) * 3
    ref = _numpy_bn_tuning(model, list(pruning.calibration_batches(images)), 0.1)
    pruning.recalibrate_batch_stats(model, images)
    np.testing.assert_allclose(model.bn2.mean.value, ref["bn2"][0], rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(model.bn2.var.value, ref["bn2"][1], rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "sum"}, "mode must be 'ema' or 'average', got 'sum'"),
        ({"momentum": 0.0}, r"momentum must be in \(0, 1\], got 0.0"),
        ({"iterations": 0}, "iterations must be a positive integer, got 0"),
        ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
        ({"calibration_size": 301}, r"calibration_size must be <= len\(images\) = 300, got 301"),
    ],
)
def test_bn_tuning_bad_input(kwargs, match):
    model = SmallCNN(rngs=nnx.Rngs(0), widths=(4, 8), hidden=16, input_hw=(8, 8))
    with pytest.raises(ValueError, match=match):
        pruning.recalibrate_batch_stats(model, np.zeros((300, 8, 8, 1), np.float32), **kwargs)


# --- 2. ResNet-20 shortcuts --------------------------------------------------------------------


def _n_params(model):
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _resnet20_count(option_b, classes=10, cin=3):
    """The parameter count written out layer by layer (conv k*k*in*out, BN 2*c, head)."""
    conv = lambda k, i, o: k * k * i * o  # noqa: E731
    n = conv(3, cin, 16) + 2 * 16
    for i, o in ((16, 16), (16, 32), (32, 64)):
        n += conv(3, i, o) + conv(3, o, o) + 4 * o  # first block of the stage
        n += 2 * (2 * conv(3, o, o) + 4 * o)  # two more blocks
        if option_b and i != o:
            n += conv(1, i, o) + 2 * o
    return n + 64 * classes + classes


@pytest.mark.parametrize("shortcut, count", [("A", 269_722), ("B", 272_474)])
def test_resnet20_parameter_counts_and_shapes(shortcut, count):
    from jaxcomp.models import ResNet20

    model = ResNet20(shortcut=shortcut, rngs=nnx.Rngs(0))
    assert _n_params(model) == count == _resnet20_count(shortcut == "B")
    projections = [b for b in model.blocks if b.down_conv is not None]
    assert len(projections) == (2 if shortcut == "B" else 0)
    for b in projections:
        assert b.down_conv.kernel.value.shape[:2] == (1, 1) and b.down_conv.strides == 2
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3)), jnp.float32)
    h = nnx.relu(model.stem_bn(model.stem_conv(x)))
    shapes = []
    for blk in model.blocks:
        h = blk(h)
        shapes.append(h.shape[1:])
    assert shapes == [(32, 32, 16)] * 3 + [(16, 16, 32)] * 3 + [(8, 8, 64)] * 3
    assert model(x).shape == (2, 10)
    m1 = ResNet20(3, in_channels=1, shortcut=shortcut, rngs=nnx.Rngs(0))
    assert _n_params(m1) == _resnet20_count(shortcut == "B", 3, 1)


def test_resnet20_shortcuts_compute_option_a_and_b():
    from jaxcomp.models import ResNet20

    x = np.random.default_rng(1).standard_normal((2, 8, 8, 16)).astype(np.float32)
    a = ResNet20(shortcut="A", rngs=nnx.Rngs(0)).blocks[3]  # 16 -> 32, stride 2
    ref = np.pad(x[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (8, 8)))  # 8 zero channels per side
    np.testing.assert_array_equal(a.shortcut(jnp.asarray(x)), ref)
    b = ResNet20(shortcut="B", rngs=nnx.Rngs(0)).blocks[3]
    b.eval()  # fresh running stats: mean 0, variance 1
    w = np.asarray(b.down_conv.kernel.value)[0, 0]  # (16, 32)
    ref = x[:, ::2, ::2] @ w / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(b.shortcut(jnp.asarray(x)), ref, rtol=1e-5, atol=1e-5)


def test_resnet_bad_shortcut():
    from jaxcomp.models import ResNet20

    with pytest.raises(ValueError, match="shortcut must be 'A' or 'B', got 'C'"):
        ResNet20(shortcut="C", rngs=nnx.Rngs(0))


# --- 3. train_classifier gives the trained state back -----------------------------------------


def _digits():
    from jaxcomp.data import load_digits

    return load_digits("train")


def test_train_classifier_hands_the_trained_state_back_to_the_model():
    from jaxcomp.train import classification_loss, make_train_step
    from jaxcomp.train.recipes import train_classifier

    x, y = _digits()
    model = SmallCNN(rngs=nnx.Rngs(0), widths=(4, 8), hidden=16, input_hw=(8, 8))
    kernel0 = model.conv1.kernel.value  # the caller's own buffer
    init = jax.tree.map(np.array, nnx.as_pure(nnx.state(model)))
    tx = optax.sgd(0.1, momentum=0.9)
    graphdef, eval_graphdef, params, state, _ = train_classifier(
        model, tx, x, y, batch_size=32, num_steps=5, progress=False
    )
    assert not kernel0.is_deleted()  # trained on copies
    np.testing.assert_array_equal(kernel0, init["conv1"]["kernel"])
    got_p = nnx.as_pure(nnx.state(model, nnx.Param))
    got_s = nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
    for a, b in zip(jax.tree.leaves((got_p, got_s)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(a, b)  # the model holds exactly the trained trees
    assert not np.allclose(got_p["conv1"]["kernel"], init["conv1"]["kernel"])
    assert not np.allclose(got_s["bn1"]["mean"], init["bn1"]["mean"])
    model.eval()
    batch = {"image": jnp.asarray(x[:32]), "label": jnp.asarray(y[:32])}
    ref = nnx.merge(eval_graphdef, params, state)(batch["image"])
    np.testing.assert_allclose(model(batch["image"]), ref, rtol=1e-6, atol=1e-6)
    # the model's buffers are its own: donating the returned trees leaves it usable
    step = make_train_step(classification_loss(graphdef), tx, donate=True)
    step(params, state, tx.init(params), batch)
    assert all(a.is_deleted() for a in jax.tree.leaves(params))  # donation happened
    np.testing.assert_allclose(model(batch["image"]), ref, rtol=1e-6, atol=1e-6)


# --- 4. fresh dropout in CrAM's compressed pass ------------------------------------------------


class _DropW(nnx.Module):
    """loss = sum(dropout(w)): the gradient is the dropout mask / keep probability."""

    def __init__(self, rngs):
        self.w = nnx.Param(jnp.ones((16, 16)))
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return jnp.sum(self.drop(self.w.value)) + 0.0 * jnp.sum(x)


def _dropw_loss(graphdef):
    def loss_fn(params, state, batch):
        model = nnx.merge(graphdef, params, state)
        loss = model(batch["image"])
        return loss, (nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))), {})

    return loss_fn


def test_cram_compressed_pass_draws_fresh_dropout_masks():
    from jaxcomp.optim import cram
    from jaxcomp.train import make_train_step, split_model

    graphdef, _, params, state = split_model(_DropW(nnx.Rngs(dropout=5)))
    batch = {"image": jnp.zeros((8, 1))}
    loss_fn = _dropw_loss(graphdef)
    # w starts at 1 and the step returns w + updates: with an identity transform,
    # updates = the clean gradient; cram with an identity base, no plus / sparse_grad: the
    # compressed pass's gradient
    plain = make_train_step(loss_fn, optax.identity(), donate=False)
    tx = cram(optax.identity(), rho=0.1, sparsities=(0.5,))
    comp = make_train_step(loss_fn, tx, donate=False)
    s_plain, s_cram, opt = state, state, tx.init(params)
    masks = []
    for _ in range(2):
        g_clean, s_plain, _, _ = plain(params, s_plain, optax.identity().init(params), batch)
        g_comp, s_cram, opt, _ = comp(params, s_cram, opt, batch)
        for g in (g_clean, g_comp):  # gradient = mask / 0.5 exactly
            w = np.asarray(g["w"]) - 1.0
            assert set(np.unique(w)) == {0.0, 2.0} and 60 < (w > 0).sum() < 196
            masks.append(w > 0)
        # the extra pass leaves the clean passes' key sequence (and all state) as it was
        for a, b in zip(jax.tree.leaves(s_plain), jax.tree.leaves(s_cram)):
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_array_equal(a, b)
    clean1, comp1, clean2, comp2 = masks
    assert not np.array_equal(clean1, clean2)  # the clean pass advances its stream
    for a, b in ((clean1, comp1), (clean2, comp2), (comp1, clean2), (comp1, comp2)):
        assert 60 < (a != b).sum() < 196  # independent masks differ in about half the entries


def test_extra_pass_state_folds_every_key_and_only_keys():
    from jaxcomp.train import extra_pass_state

    state = {"k": jax.random.key(3), "ks": jax.random.split(jax.random.key(4), 3), "n": 7}
    out = extra_pass_state(state, 2)
    assert out["n"] == 7
    np.testing.assert_array_equal(
        jax.random.key_data(out["k"]),
        jax.random.key_data(jax.random.fold_in(jax.random.fold_in(state["k"], 0x43524D), 2)),
    )
    for j in range(3):
        ref = jax.random.fold_in(jax.random.fold_in(state["ks"][j], 0x43524D), 2)
        np.testing.assert_array_equal(jax.random.key_data(out["ks"][j]), jax.random.key_data(ref))
    a, b = extra_pass_state(state, None), extra_pass_state(state, 1)
    assert not np.array_equal(jax.random.key_data(a["k"]), jax.random.key_data(b["k"]))


# --- 5. sparse fine-tuning with a fixed mask (CrAM --train_sparse) -----------------------------


def _lsq(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32)
    params = {
        "dense": {
            "kernel": jnp.asarray(rng.standard_normal((16, 8)), dtype),
            "bias": jnp.asarray(rng.standard_normal(8), dtype),
        }
    }

    def loss(p):
        k, b = p["dense"]["kernel"].astype(jnp.float32), p["dense"]["bias"].astype(jnp.float32)
        return 0.5 * jnp.mean(jnp.sum((x @ k + b - y) ** 2, -1))

    return params, loss


def _train(tx, params, loss, steps, every=None):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        if every is not None:
            every(params, state)
        out.append(params)
    return params, state, out


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sparse_finetune_keeps_exact_sparsity_through_adamw(dtype):
    from jaxcomp.optim import sparse_finetune

    params, loss = _lsq(0, dtype)
    _, mask = pruning.one_shot(params, 0.75)
    pruned = mask["dense"]["kernel"]
    assert int((~pruned).sum()) == 96 and bool(mask["dense"]["bias"].all())
    adamw = optax.adamw(0.05, weight_decay=0.1)

    def check(p, _):
        k = np.asarray(p["dense"]["kernel"].astype(jnp.float32))
        assert (k[~np.asarray(pruned)] == 0).all()  # exactly zero, every step
        assert (k[np.asarray(pruned)] != 0).all()

    # from dense params: the first step zeroes the pruned weights, then they stay 0
    final, _, _ = _train(sparse_finetune(adamw, mask), params, loss, 150, check)
    assert float(loss(final)) < 0.6 * float(loss(pruning.apply_mask(params, mask)))
    if dtype != jnp.float32:
        return
    # from pruned params, the kept weights follow adamw on the masked gradient
    start = pruning.apply_mask(params, mask)
    ours, _, _ = _train(sparse_finetune(adamw, mask), start, loss, 150)

    def masked_loss(p):
        return loss(pruning.apply_mask(p, mask))  # gradient of pruned weights = 0

    ref, _, _ = _train(adamw, start, masked_loss, 150)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_sparse_finetune_bad_input():
    from jaxcomp.optim import sparse_finetune

    params, loss = _lsq()
    with pytest.raises(ValueError, match="mask leaves must be bool, got dtype float32"):
        sparse_finetune(optax.sgd(0.1), jax.tree.map(jnp.ones_like, params))
    bad = {"dense": {"kernel": jnp.ones((16, 8), bool)}}
    with pytest.raises(ValueError, match="mask must have the tree structure of params"):
        sparse_finetune(optax.sgd(0.1), bad).init(params)
    short = {"dense": {"kernel": jnp.ones((8, 8), bool), "bias": jnp.ones(8, bool)}}
    with pytest.raises(ValueError, match=r"'dense/kernel' has shape \(8, 8\)"):
        sparse_finetune(optax.sgd(0.1), short).init(params)
    tx = sparse_finetune(optax.sgd(0.1), pruning.one_shot(params, 0.5)[1])
    with pytest.raises(ValueError, match="needs params"):
        tx.update(jax.grad(loss)(params), tx.init(params))


def _battery_mask():
    params, _ = optax_battery.problem()
    return pruning.one_shot(params, 0.6)[1]


def _sparse_finetune_factory(learning_rate):
    from jaxcomp.optim import sparse_finetune

    return sparse_finetune(optax.adamw(learning_rate, weight_decay=0.01), _battery_mask())


def _gmp_factory(learning_rate):
    from jaxcomp.optim import gmp

    return gmp(
        optax.sgd(learning_rate, momentum=0.9),
        final_sparsity=0.8,
        begin_step=1,
        end_step=3,
        update_every=1,
        distribution="erk",
    )


@pytest.mark.parametrize("factory", [_sparse_finetune_factory, _gmp_factory])
@pytest.mark.parametrize("check", optax_battery.CHECKS, ids=lambda c: c.__name__)
def test_battery(check, factory):
    assert check(factory, {"learning_rate": 0.05})


# --- 6. gradual magnitude pruning ---------------------------------------------------------------


def _np_erk(shapes, s):
    """RigL's loop (sparse_utils.get_sparsities_erdos_renyi) in float64, without rounding."""
    n = np.array([np.prod(sh) for sh in shapes], np.float64)
    p = np.array([np.sum(sh) / np.prod(sh) for sh in shapes], np.float64)
    dense = np.zeros(len(shapes), bool)
    while True:
        eps = ((1 - s) * n.sum() - n[dense].sum()) / (p[~dense] * n[~dense]).sum()
        if (eps * p[~dense]).max() <= 1:
            break
        dense |= (~dense) & (p == p[~dense].max())
    return np.where(dense, 1.0, eps * p)


SHAPES = [(3, 3, 3, 16), (3, 3, 16, 16), (3, 3, 16, 32), (1, 1, 16, 32), (64, 10), (10, 6)]


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.8, 0.9, 0.98])
def test_erk_densities_match_rigl(s):
    ref = _np_erk(SHAPES, s)
    got = np.asarray(pruning.erk_densities(SHAPES, s))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    jitted = np.asarray(jax.jit(lambda x: pruning.erk_densities(SHAPES, x))(s))  # traced s
    np.testing.assert_allclose(jitted, ref, rtol=1e-5, atol=1e-6)
    n = np.array([np.prod(sh) for sh in SHAPES])
    assert (got <= 1 + 1e-6).all()
    np.testing.assert_allclose((got * n).sum(), (1 - s) * n.sum(), rtol=1e-5)
    if s in (0.3, 0.5):  # the small layers (largest p) are dense there
        assert got[-1] == 1.0 and got[0] == 1.0 and got[2] < 1.0


def test_erk_tied_layers_become_dense_together():
    shapes = [(4, 4), (4, 4), (100, 100)]
    got = np.asarray(pruning.erk_densities(shapes, 0.5))
    np.testing.assert_allclose(got, _np_erk(shapes, 0.5), rtol=1e-5)
    assert got[0] == got[1] == 1.0


def _gmp_ref(t, si, sf, t0, t1, dt):
    if t < t0:
        return 0.0
    tk = min(t0 + ((t - t0) // dt) * dt, t1)
    return sf + (si - sf) * (1 - (tk - t0) / (t1 - t0)) ** 3


def test_gmp_schedule_is_zhu_gupta():
    from jaxcomp.optim import gmp_sparsity

    kw = dict(initial_sparsity=0.1, final_sparsity=0.9, begin_step=10, end_step=70, update_every=6)
    f = jax.jit(lambda t: gmp_sparsity(t, **kw))
    got = [float(f(t)) for t in range(100)]
    ref = [_gmp_ref(t, 0.1, 0.9, 10, 70, 6) for t in range(100)]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert got[9] == 0.0 and got[10] == pytest.approx(0.1) and got[70] == pytest.approx(0.9)
    assert got[11] == got[15] == got[10] and got[16] > got[15]  # held between pruning steps
    assert got[99] == got[70]


def _gmp_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "conv": {"kernel": rng.standard_normal((3, 3, 4, 8)), "bias": rng.standard_normal(8)},
        "fc1": {"kernel": rng.standard_normal((32, 10))},
        "fc2": {"kernel": rng.standard_normal((10, 6))},
    }
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    targets = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), params)

    def loss(p):  # pulls every weight, pruned ones included, towards a dense target
        return 0.5 * sum(
            jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(targets))
        )

    return params, loss


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk"])
def test_gmp_exact_sparsity_through_adamw(distribution):
    from jaxcomp.optim import gmp

    params, loss = _gmp_problem()
    kernels = ("conv", "fc1", "fc2")
    sizes = {k: int(params[k]["kernel"].size) for k in kernels}
    shapes = [params[k]["kernel"].shape for k in kernels]
    kw = dict(initial_sparsity=0.2, final_sparsity=0.9, begin_step=2, end_step=14, update_every=3)
    tx = gmp(optax.adamw(0.05, weight_decay=0.1), distribution=distribution, **kw)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    seen = set()
    for t in range(20):
        before = params
        params, state = step(params, state)
        s = float(state.sparsity)
        assert s == pytest.approx(_gmp_ref(t, 0.2, 0.9, 2, 14, 3), rel=1e-6, abs=1e-7)
        seen.add(round(s, 6))
        zeros = {k: int((np.asarray(params[k]["kernel"]) == 0).sum()) for k in kernels}
        for k in kernels:  # the zeros are exactly the mask's pruned entries
            np.testing.assert_array_equal(
                np.asarray(params[k]["kernel"]) == 0, ~np.asarray(state.mask[k]["kernel"])
            )
        assert (np.asarray(params["conv"]["bias"]) != 0).all()
        if distribution == "global":
            n = sum(sizes.values())
            assert sum(zeros.values()) == n - pruning.keep_count(n, state.sparsity)
        elif distribution == "uniform":
            for k in kernels:
                assert zeros[k] == sizes[k] - pruning.keep_count(sizes[k], state.sparsity)
        else:
            dens = np.asarray(pruning.erk_densities(shapes, state.sparsity))
            np.testing.assert_allclose(dens, _np_erk(shapes, s), rtol=1e-5, atol=1e-6)
            for k, d in zip(kernels, dens):
                assert zeros[k] == sizes[k] - pruning.keep_count(sizes[k], 1.0 - d)
        if t >= 2 and (t - 2) % 3 == 0 and t <= 14 and distribution == "global":
            # a pruning step keeps the largest magnitudes of the weights it saw
            w = np.concatenate([np.abs(np.asarray(before[k]["kernel"])).ravel() for k in kernels])
            m = np.concatenate([np.asarray(state.mask[k]["kernel"]).ravel() for k in kernels])
            assert w[m].min() >= w[~m].max()
    assert len(seen) == 6  # 0 before t0, then 5 distinct levels up to 0.9
    total = sum(sizes.values())
    assert sum(zeros.values()) / total == pytest.approx(0.9, abs=0.02)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"update_every": 5}, "multiple of update_every, got end_step=14, begin_step=2"),
        ({"update_every": 0}, "update_every must be an integer >= 1, got 0"),
        ({"end_step": 2}, "end_step must be an integer >= 3, got 2"),
        ({"final_sparsity": 1.0}, r"final_sparsity must be in \[0, 1\), got 1.0"),
        ({"initial_sparsity": -0.1}, r"initial_sparsity must be in \[0, 1\), got -0.1"),
        ({"distribution": "random"}, "distribution must be 'uniform', 'global' or 'erk'"),
    ],
)
def test_gmp_bad_input(kwargs, match):
    from jaxcomp.optim import gmp

    kw = dict(final_sparsity=0.9, begin_step=2, end_step=14, update_every=3) | kwargs
    with pytest.raises(ValueError, match=match):
        gmp(optax.sgd(0.1), **kw)


def test_distribution_bad_input():
    params, _ = _gmp_problem()
    with pytest.raises(ValueError, match="distribution must be .* got 'random'"):
        pruning.distribution_mask(params, 0.5, "random")
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.5"):
        pruning.erk_densities([(3, 3)], 1.5)
    with pytest.raises(ValueError, match=r"got \(0, 3\)"):
        pruning.erk_densities([(0, 3)], 0.5)


# --- 7. structured CrAM and the periodic mask refresh (TopkCrAMPeriod) -------------------------

RHO = 0.3


def _np_topk_kernel(w, s):
    k = pruning.keep_count(w.size, s)
    keep = np.zeros(w.size, bool)
    keep[np.argsort(-np.abs(w).ravel(), kind="stable")[:k]] = True
    return keep.reshape(w.shape)


def _np_channels(w, s):
    score = np.abs(w).mean(0)  # mean |w| of every output channel (last axis)
    keep = np.zeros(score.size, bool)
    keep[np.argsort(-score, kind="stable")[: pruning.keep_count(score.size, s)]] = True
    return np.broadcast_to(keep, w.shape)


def _cram_by_hand(params, loss, keep):
    """CrAM+ with sparse_grad, given the kernel mask ``keep(theta_kernel)``."""
    g = jax.grad(loss)(params)
    theta = jax.tree.map(lambda p, gg: p + RHO * gg, params, g)
    mask = keep(np.asarray(theta["dense"]["kernel"]))
    masked = {
        "dense": {
            "kernel": jnp.where(mask, theta["dense"]["kernel"], 0.0),
            "bias": theta["dense"]["bias"],
        }
    }
    gh = jax.grad(loss)(masked)
    gh["dense"]["kernel"] = jnp.where(mask, gh["dense"]["kernel"], 0.0)
    return jax.tree.map(lambda a, b: a + b, gh, g), mask


@pytest.mark.parametrize("s", [0.5, 0.75])
def test_channel_cram_matches_hand_formula(s):
    from jaxcomp.optim import cram

    params, loss = _lsq(3)
    tx = cram(
        optax.sgd(1.0), rho=RHO, sparsities=(s,), compression="channel", plus=True, sparse_grad=True
    )
    grad_fn = jax.grad(loss)
    updates, state = jax.jit(lambda g, st, p: tx.update(g, st, p, grad_fn=grad_fn))(
        grad_fn(params), tx.init(params), params
    )
    ref, mask = _cram_by_hand(params, loss, lambda w: _np_channels(w, s))
    assert mask[0].sum() == pruning.keep_count(8, s) == {0.5: 4, 0.75: 2}[s]  # kept channels
    for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
        np.testing.assert_allclose(u, -np.asarray(r), rtol=1e-4, atol=1e-6)
    pruned_cols = ~mask[0]
    assert np.all(
        np.asarray(updates["dense"]["kernel"])[:, pruned_cols]
        == -np.asarray(jax.grad(loss)(params)["dense"]["kernel"])[:, pruned_cols]
    )


def test_periodic_cram_reuses_each_levels_mask_between_refreshes():
    from jaxcomp.optim import cram

    params, loss = _lsq(4)
    levels, every, lr = (0.5, 0.8), 3, 0.05
    tx = cram(
        optax.sgd(lr),
        rho=RHO,
        sparsities=levels,
        plus=True,
        sparse_grad=True,
        mask_every=every,
        seed=1,
    )
    grad_fn = jax.grad(loss)

    @jax.jit
    def step(p, st):
        u, st = tx.update(grad_fn(p), st, p, grad_fn=grad_fn)
        return optax.apply_updates(p, u), u, st

    state = tx.init(params)
    counts, stored, reused_differs = [0, 0], [None, None], 0
    for _ in range(30):
        new_params, updates, state = step(params, state)
        i = int(state.level)
        theta_k = np.asarray(params["dense"]["kernel"] + RHO * grad_fn(params)["dense"]["kernel"])
        fresh = _np_topk_kernel(theta_k, levels[i])
        if counts[i] % every == 0:
            stored[i] = fresh
        else:
            reused_differs += int(not np.array_equal(stored[i], fresh))
        counts[i] += 1
        ref, _ = _cram_by_hand(params, loss, lambda w, m=stored[i]: m)
        for u, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
            np.testing.assert_allclose(u, -lr * np.asarray(r), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(state.mask_steps), counts)
        np.testing.assert_array_equal(np.asarray(state.masks["dense"]["kernel"][i]), stored[i])
        params = new_params
    assert min(counts) >= 6 and reused_differs > 0  # a stale mask was really used
    assert step._cache_size() == 1


def test_cram_new_options_bad_input():
    from jaxcomp.optim import cram

    with pytest.raises(ValueError, match="mask_every must be an integer >= 1, got 0"):
        cram(optax.sgd(0.1), rho=0.1, mask_every=0)
    with pytest.raises(ValueError, match="'global', 'layer', 'nm' or 'channel', got 'rows'"):
        cram(optax.sgd(0.1), rho=0.1, compression="rows")


def _periodic_cram_factory(rho):
    from jaxcomp.optim import cram

    return cram(
        optax.sgd(0.05, momentum=0.9),
        rho=rho,
        sparsities=(0.5, 0.8),
        plus=True,
        sparse_grad=True,
        mask_every=2,
    )


@pytest.mark.parametrize("check", optax_battery.CHECKS, ids=lambda c: c.__name__)
def test_periodic_cram_battery(check):
    assert check(_periodic_cram_factory, {"rho": 0.05})
