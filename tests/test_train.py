"""Train step: 1 device == 8 devices; checkpoint/resume == straight run; data; bad input."""

import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcomp.data import DataStream, batches, load_classification, load_digits, read_mnist_csv
from jaxcomp.data import tfds as jtfds
from jaxcomp.models import SmallCNN, build_classifier
from jaxcomp.optim import cram
from jaxcomp.train import (
    Checkpointer,
    classification_loss,
    evaluate,
    fit,
    make_mesh,
    make_train_step,
    restore_latest,
    shard_train_state,
    split_model,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits("train")


def setup(tx, mesh=None, fsdp_min_size=2**14):
    model = SmallCNN(rngs=nnx.Rngs(0), widths=(8, 16), hidden=32, input_hw=(8, 8))
    graphdef, eval_graphdef, params, state = split_model(model)
    opt_state = tx.init(params)
    shardings = None
    if mesh is not None:
        params, state, opt_state, shardings = shard_train_state(
            mesh, params, state, opt_state, fsdp_min_size=fsdp_min_size
        )
    step = make_train_step(classification_loss(graphdef), tx, shardings)
    return step, params, state, opt_state, eval_graphdef


def tx_factory():
    return cram(
        optax.sgd(0.05, momentum=0.9), rho=0.05, sparsities=(0.5, 0.8), plus=True, sparse_grad=True
    )


def test_one_device_equals_eight_devices(digits):
    x, y = digits
    stream = DataStream(x, y, 64, seed=1)
    one = make_mesh(devices=jax.devices()[:1])
    eight = make_mesh(data=4, fsdp=2)
    out = []
    for mesh in (one, eight):
        step, p, s, o, _ = setup(tx_factory(), mesh, fsdp_min_size=256)
        p, s, o, hist = fit(step, p, s, o, stream, 20, mesh=mesh, log_every=10, progress=False)
        out.append((p, s, hist))
        if mesh is eight:
            assert any(not a.sharding.is_fully_replicated for a in jax.tree.leaves(p))
            assert len({a.sharding.mesh.size for a in jax.tree.leaves(o)}) == 1
    for a, b in zip(jax.tree.leaves(out[0][:2]), jax.tree.leaves(out[1][:2])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    assert out[0][2][-1]["loss"] == pytest.approx(out[1][2][-1]["loss"], rel=1e-4)
    assert out[0][2][-1]["loss"] < out[0][2][0]["loss"]


@pytest.mark.slow  # > 30 s on 2 cores; CI runs it (the README test command runs all)
def test_checkpoint_resume_equals_straight_run(digits, tmp_path):
    x, y = digits
    stream = DataStream(x, y, 32, seed=2)
    mesh = make_mesh(data=8)
    step, p0, s0, o0, _ = setup(tx_factory(), mesh)
    straight = fit(step, p0, s0, o0, stream, 20, mesh=mesh, progress=False)
    # 10 steps with checkpoints, then a fresh model object and a fresh fit() picks up at step 10.
    step, p, s, o, _ = setup(tx_factory(), mesh)
    fit(step, p, s, o, stream, 10, mesh=mesh, workdir=str(tmp_path), ckpt_every=5, progress=False)
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [5, 10]
    step, p, s, o, _ = setup(tx_factory(), mesh)  # new, untrained objects
    resumed = fit(
        step, p, s, o, stream, 20, mesh=mesh, workdir=str(tmp_path), ckpt_every=5, progress=False
    )
    for a, b in zip(jax.tree.leaves(straight[:3]), jax.tree.leaves(resumed[:3])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the restored state kept its sharding
    for a, b in zip(jax.tree.leaves(straight[0]), jax.tree.leaves(resumed[0])):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)


def test_make_train_step_with_a_mesh_derives_shardings(digits):
    x, y = digits
    tx = optax.sgd(0.1)
    step_ref, p, s, o, _ = setup(tx)
    mesh = make_mesh(data=2, fsdp=4)
    model = SmallCNN(rngs=nnx.Rngs(0), widths=(8, 16), hidden=32, input_hw=(8, 8))
    graphdef, _, p2, s2 = split_model(model)
    step = make_train_step(classification_loss(graphdef), tx, mesh, rules=[("fc/kernel", "fsdp")])
    batch = DataStream(x, y, 32).batch(0)
    ref = step_ref(p, s, o, batch)
    out = step(p2, s2, tx.init(p2), batch)
    assert out[0]["fc"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    np.testing.assert_allclose(out[0]["fc"]["kernel"], ref[0]["fc"]["kernel"], rtol=1e-5, atol=1e-6)


def test_trains_and_evaluates(digits):
    x, y = digits
    xt, yt = load_digits("test")
    step, p, s, o, eval_graphdef = setup(optax.adam(3e-3))
    p, s, o, _ = fit(step, p, s, o, DataStream(x, y, 64), 150, progress=False)
    res = evaluate(eval_graphdef, p, s, batches(xt, yt, 128, shuffle=False))
    assert res["accuracy"] > 0.8, res


def test_checkpoint_errors(tmp_path):
    target = {"params": {"w": jnp.zeros(3)}}
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        restore_latest(str(tmp_path / "does-not-exist"), target)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        restore_latest(str(empty), target)
    ck = Checkpointer(str(tmp_path / "ck"), async_save=False)
    ck.save(1, {"params": {"w": jnp.arange(3.0)}})
    ck.close()
    with pytest.raises(ValueError, match=r"has no array \[.params.\]\[.b.\]"):
        restore_latest(str(tmp_path / "ck"), {"params": {"w": jnp.zeros(4), "b": jnp.zeros(1)}})
    state, meta = restore_latest(str(tmp_path / "ck"), {"params": {"w": jnp.zeros(3)}})
    np.testing.assert_array_equal(state["params"]["w"], [0.0, 1.0, 2.0])
    assert meta["step"] == 1


def test_data_stream_is_step_indexed_and_sharded_by_process(digits):
    x, y = digits
    a = DataStream(x, y, 16, seed=5)
    np.testing.assert_array_equal(a.batch(7)["label"], a.batch(7)["label"])
    epoch = np.concatenate([a.batch(i)["label"] for i in range(a.steps_per_epoch)])
    assert len(
        set(
            map(
                tuple,
                np.concatenate(
                    [a.batch(i)["image"].reshape(16, -1) for i in range(a.steps_per_epoch)]
                ),
            )
        )
    ) == len(epoch)
    halves = [
        DataStream(x, y, 16, seed=5, process_index=i, process_count=2).batch(7)["label"]
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate(halves), a.batch(7)["label"])
    assert a.batch(7)["image"].dtype == np.float32 and a.batch(7)["image"].max() <= 1.0


def test_tfds_builder_roundtrip(tmp_path):
    images, labels = jtfds.load("digits8x8", "test", str(tmp_path))
    ref_x, ref_y = load_digits("test")
    assert images.dtype == np.uint8 and images.shape == ref_x.shape
    assert sorted(labels.tolist()) == sorted(ref_y.tolist())
    assert sorted(map(bytes, images.reshape(len(images), -1))) == sorted(
        map(bytes, ref_x.reshape(len(ref_x), -1))
    )
    with pytest.raises(FileNotFoundError, match="cifar10"):
        jtfds.load("cifar10", "train", str(tmp_path))


def test_bad_input(tmp_path, digits):
    x, y = digits
    with pytest.raises(ValueError, match="does not cover 8 devices"):
        make_mesh(data=3)
    with pytest.raises(ValueError, match="batch_size must be"):
        DataStream(x, y, 0)
    with pytest.raises(ValueError, match="differ in length"):
        DataStream(x, y[:-1], 8)
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write(",".join(["0"] * 785) + "\n" + ",".join(["1"] * 700) + "\n")
    with pytest.raises(ValueError, match="line 2 has 700 fields"):
        read_mnist_csv(str(bad))
    with pytest.raises(FileNotFoundError):
        read_mnist_csv(os.path.join(tmp_path, "missing.csv"))
    with pytest.raises(ValueError, match="unknown bundled dataset 'svhn'"):
        jtfds.prepare("svhn", str(tmp_path))
    with pytest.raises(ValueError, match="'svhn' is not bundled"):
        load_classification("svhn", "train")
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        build_classifier("vgg16", 10, in_channels=1, input_hw=(8, 8), rngs=nnx.Rngs(0))
    assert load_classification("digits", "test")[0].shape == load_digits("test")[0].shape


def test_evaluate_compiles_once_per_graphdef(digits):
    from jaxcomp.train import make_eval_step

    x, y = digits
    _, p, s, _, eval_graphdef = setup(optax.sgd(0.1))
    evaluate(eval_graphdef, p, s, batches(x[:64], y[:64], 64, shuffle=False))
    step = make_eval_step(eval_graphdef)
    size = step._cache_size()
    for _ in range(2):  # same graphdef, same batch shape: no new compilation
        evaluate(eval_graphdef, p, s, batches(x[:64], y[:64], 64, shuffle=False))
    assert make_eval_step(eval_graphdef) is step
    assert step._cache_size() == size


class _DropoutMLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, 32, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)  # holds a typed PRNG key in the model state
        self.fc2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))))


def test_a_model_with_dropout_keys_checkpoints_and_resumes_exactly(digits, tmp_path):
    x, y = digits
    stream = DataStream(x, y, 32, seed=3)

    def setup_dropout():
        graphdef, _, p, s = split_model(_DropoutMLP(rngs=nnx.Rngs(0)))
        assert any(jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) for a in jax.tree.leaves(s))
        tx = optax.adam(1e-3)
        return make_train_step(classification_loss(graphdef), tx), p, s, tx.init(p)

    straight = fit(*setup_dropout(), stream, 8, progress=False)
    fit(*setup_dropout(), stream, 4, workdir=str(tmp_path), ckpt_every=2, progress=False)
    resumed = fit(*setup_dropout(), stream, 8, workdir=str(tmp_path), ckpt_every=2, progress=False)
    for a, b in zip(jax.tree.leaves(straight[:3]), jax.tree.leaves(resumed[:3])):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the key itself round-trips with its implementation
    ck = Checkpointer(str(tmp_path / "keys"), async_save=False)
    keys = {"fry": jax.random.key(7), "rbg": jax.random.key(7, impl="rbg")}
    ck.save(1, {"state": keys})
    out, _ = ck.restore({"state": keys})
    ck.close()
    for name, k in keys.items():
        assert jax.random.key_impl(out["state"][name]) == jax.random.key_impl(k)
        np.testing.assert_array_equal(
            jax.random.key_data(out["state"][name]), jax.random.key_data(k)
        )
