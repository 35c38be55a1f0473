"""The one trainer: config identity on resume, history, metrics files, SAM contract, NaN guard,
workdir lock, remote paths."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcomp.data import DataStream, load_digits
from jaxcomp.optim import cram, mfac
from jaxcomp.train import (
    classification_loss,
    extra_pass_state,
    fit,
    make_train_step,
    split_model,
)
from jaxcomp.train.workdir import WorkdirLock, WorkdirLockedError, config_diff
from jaxcomp.train.writers import read_tensorboard_scalars


class MLP(nnx.Module):
    def __init__(self, *, rngs):
        self.l1 = nnx.Linear(64, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x.reshape(x.shape[0], -1))))


@pytest.fixture(scope="module")
def stream():
    x, y = load_digits("train")
    return DataStream(x, y, 32, seed=3)


def setup(tx, nan_guard=False):
    graphdef, _, params, state = split_model(MLP(rngs=nnx.Rngs(0)))
    step = make_train_step(classification_loss(graphdef), tx, nan_guard=nan_guard)
    return step, params, state, tx.init(params)


def cfg(**kw):
    c = ml_collections.ConfigDict({"learning_rate": 0.1, "rho": 0.05, "sparsities": (0.5, 0.8)})
    c.update(kw)
    return c


def run(stream, n, workdir=None, config=None, tx=None, **kw):
    step, p, s, o = setup(tx or optax.sgd(0.1, momentum=0.9))
    return fit(step, p, s, o, stream, n, workdir=workdir, config=config, progress=False, **kw)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_same_config_is_bit_identical_with_history(stream, tmp_path):
    straight = run(stream, 12, tmp_path / "a", cfg(), ckpt_every=4, log_every=3)
    run(stream, 8, tmp_path / "b", cfg(), ckpt_every=4, log_every=3)
    resumed = run(stream, 12, tmp_path / "b", cfg(), ckpt_every=4, log_every=3)
    assert_trees_equal(straight[:3], resumed[:3])
    # the first run logged at 3, 6 and its last step 8; the resumed one continues at 9, 12
    assert [h["step"] for h in resumed[3]] == [3, 6, 8, 9, 12]
    # history: the rows at common steps are equal, and metrics.jsonl has no duplicate steps
    hs = {h["step"]: h for h in straight[3]}
    for h in resumed[3]:
        if h["step"] in hs:
            assert h == hs[h["step"]]
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), steps
    assert rows == resumed[3]
    # TensorBoard events carry the same scalars
    (ev,) = (tmp_path / "a" / "tb").iterdir()
    tb = read_tensorboard_scalars(ev)
    assert [r["step"] for r in tb] == [3, 6, 9, 12]
    np.testing.assert_allclose([r["loss"] for r in tb], [h["loss"] for h in straight[3]], 1e-6)


def test_resume_with_changed_config_is_refused_naming_fields(stream, tmp_path):
    run(stream, 4, tmp_path, cfg(), ckpt_every=2)
    with pytest.raises(ValueError, match=r"(?s)learning_rate: 0.1 -> 0.5.*rho: 0.05 -> 0.0"):
        run(stream, 8, tmp_path, cfg(learning_rate=0.5, rho=0.0), ckpt_every=2)
    # force_resume continues (and is not itself part of the identity)
    out = run(stream, 6, tmp_path, cfg(rho=0.0, force_resume=True), ckpt_every=2, force_resume=True)
    assert out[3][-1]["step"] == 6
    assert config_diff(cfg(force_resume=True), cfg()) == []


def test_resume_refuses_other_batch_size_and_past_checkpoint(stream, tmp_path):
    run(stream, 6, tmp_path, cfg(), ckpt_every=3)
    other = DataStream(stream.images, stream.labels, 16, seed=3)
    with pytest.raises(ValueError, match="batch_size: 32 -> 16"):
        run(other, 8, tmp_path, cfg(), ckpt_every=3)
    with pytest.raises(ValueError, match="holds step 6, past num_steps=4"):
        run(stream, 4, tmp_path, cfg(), ckpt_every=3)


def test_bad_arguments_named(stream, tmp_path):
    with pytest.raises(ValueError, match="num_steps must be an int >= 0, got -1"):
        run(stream, -1)
    with pytest.raises(ValueError, match="nan_policy"):
        run(stream, 2, nan_policy="ignore")
    with pytest.raises(ValueError, match="needs checkpoints"):
        run(stream, 2, nan_policy="rollback")
    with pytest.raises(ValueError, match="nan_guard=True"):
        run(stream, 2, nan_policy="skip")


def test_workdir_lock_names_holder(stream, tmp_path):
    with WorkdirLock(tmp_path, run_id="other-run"):
        with pytest.raises(WorkdirLockedError, match=f"pid={os.getpid()} run_id=other-run"):
            run(stream, 2, tmp_path)
    run(stream, 2, tmp_path)  # released


def test_remote_workdir_never_lands_on_local_disk(stream, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImportError, match="gcsfs"):  # no GCS client here; it went to epath
        run(stream, 2, "gs://no-such-bucket-jaxcomp/run", ckpt_every=1)
    assert not (tmp_path / "gs:").exists()


@pytest.fixture
def fake_gcs(monkeypatch):
    """``gs://`` served by fsspec's in-memory file system, through etils' own fsspec backend: the
    same code path as a real bucket with ``gcsfs`` installed, minus the network."""
    pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}
        pseudo_dirs = [""]

    import sys

    from etils.epath import backend

    registry = sys.modules["fsspec.registry"]._registry
    for name in FakeGCS.protocol:
        monkeypatch.setitem(registry, name, FakeGCS)
    clear = backend._FileSystemSpecBackend._get_filesystem.cache_clear
    clear()
    yield FakeGCS.store
    clear()


def test_gs_workdir_round_trips_through_epath(stream, tmp_path, monkeypatch, fake_gcs):
    from jaxcomp.train.workdir import write_bytes_atomic, write_json_atomic

    monkeypatch.chdir(tmp_path)
    out = run(stream, 6, "gs://bucket/run", log_every=2)
    keys = sorted(fake_gcs)
    assert "gs://bucket/run/metrics.jsonl" in keys
    rows = [json.loads(line) for line in fake_gcs["gs://bucket/run/metrics.jsonl"].getvalue()
            .decode().splitlines()]  # fmt: skip
    assert [r["step"] for r in rows] == [2, 4, 6] == [h["step"] for h in out[3]]
    events = [k for k in keys if "/tb/" in k and "tfevents" in k]
    assert events
    tb = read_tensorboard_scalars(events[0])
    assert [r["step"] for r in tb] == [2, 4, 6]
    np.testing.assert_allclose([r["loss"] for r in tb], [r["loss"] for r in rows], rtol=1e-6)
    write_json_atomic("gs://bucket/run/results.json", {"acc": 0.5})
    assert json.loads(fake_gcs["gs://bucket/run/results.json"].getvalue()) == {"acc": 0.5}
    write_json_atomic("gs://bucket/run/results.json", {"acc": 0.75})  # overwrites an object
    assert json.loads(fake_gcs["gs://bucket/run/results.json"].getvalue()) == {"acc": 0.75}
    write_bytes_atomic("gs://bucket/run/fig.png", b"\x89PNG\x00\xff")
    assert fake_gcs["gs://bucket/run/fig.png"].getvalue() == b"\x89PNG\x00\xff"
    assert not [k for k in fake_gcs if ".tmp" in k]
    assert not any(tmp_path.iterdir()), "a gs:// workdir wrote to the local disk"


def test_sam_through_make_train_step_equals_optax_sam(stream):
    graphdef, _, params, state = split_model(MLP(rngs=nnx.Rngs(0)))
    loss_fn = classification_loss(graphdef)
    sam = optax.contrib.sam(optax.sgd(0.1), optax.sgd(0.05), sync_period=2, opaque_mode=True)
    step = make_train_step(loss_fn, sam, donate=False)
    p, o = params, sam.init(params)
    for t in range(4):
        p, _, o, _ = step(p, state, o, stream.batch(t))
    # by hand
    q, oq = params, sam.init(params)
    for t in range(4):
        batch = jax.tree.map(jnp.asarray, stream.batch(t))
        g_fn = lambda x, i=None, b=batch: jax.grad(lambda z: loss_fn(z, state, b)[0])(x)
        u, oq = sam.update(g_fn(q), oq, q, grad_fn=g_fn)
        q = optax.apply_updates(q, u)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)))


class Poisoned:
    """A stream whose batch ``bad`` has a NaN pixel."""

    def __init__(self, stream, bad):
        self.s, self.bad = stream, bad
        self.seed, self.batch_size = stream.seed, stream.batch_size

    def batch(self, step):
        b = dict(self.s.batch(step))
        if step == self.bad:
            b["image"] = b["image"].copy()
            b["image"][0, 0, 0, 0] = np.nan
        return b


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: cram(optax.sgd(0.1, momentum=0.9), rho=0.05, sparsities=(0.5,)),
        lambda: mfac(0.05, num_grads=4, damping=1e-3),
    ],
    ids=["cram", "mfac"],
)
def test_nan_skip_leaves_state_untouched(stream, make_tx):
    tx = make_tx()
    step, p, s, o = setup(tx, nan_guard=True)
    # 3 clean steps, then the bad one: the state after the bad step equals the state before it
    p3, s3, o3, _ = fit(step, p, s, o, stream, 3, progress=False)
    snap = jax.tree.map(np.asarray, (p3, s3, o3))
    out = step(p3, s3, o3, jax.tree.map(jnp.asarray, Poisoned(stream, 3).batch(3)))
    assert (
        int(out[3]["nonfinite"]) == 1 and int(out[3]["nonfinite_leaf"]) == 1
    )  # l1.kernel (ReLU cuts the bias path)
    assert_trees_equal(snap, out[:3])
    # and through fit: a skipped step = the run without that batch's update, nothing non-finite
    step, p, s, o = setup(make_tx(), nan_guard=True)
    res = fit(step, p, s, o, Poisoned(stream, 3), 6, nan_policy="skip", log_every=6, progress=False)
    assert res[3][-1]["skipped_steps"] == 1.0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(res[:3]))


def test_nan_raise_names_step_and_leaf(stream):
    step, p, s, o = setup(optax.sgd(0.1), nan_guard=True)
    with pytest.raises(FloatingPointError, match=r"step 3 .*gradient of \['l1'\]\['kernel'\]"):
        fit(step, p, s, o, Poisoned(stream, 2), 5, nan_policy="raise", progress=False)
    step, p, s, o = setup(optax.sgd(0.1))  # no guard: the loss is checked
    with pytest.raises(FloatingPointError, match="step 3"):
        fit(step, p, s, o, Poisoned(stream, 2), 5, nan_policy="raise", progress=False)


def test_nan_rollback_restores_and_skips_the_batch(stream, tmp_path):
    step, p, s, o = setup(optax.sgd(0.1))
    res = fit(
        step, p, s, o, Poisoned(stream, 4), 8, workdir=tmp_path, ckpt_every=2,
        nan_policy="rollback", log_every=8, progress=False,
    )  # fmt: skip
    assert res[3][-1]["skipped_steps"] == 1.0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(res[:3]))


def test_source_stream_tfds_grain_exact_resume(tmp_path):
    from jaxcomp.data import tfds as jtfds

    data_dir = str(tmp_path / "tfds")
    jtfds.prepare("digits8x8", data_dir)
    n = jtfds.split_nbytes("digits8x8", "train", data_dir)
    assert n == len(load_digits("train")[0]) * 64
    # more images than the in-memory budget allows: the in-memory path refuses...
    with pytest.raises(ValueError, match="over the in-memory budget"):
        jtfds.load("digits8x8", "train", data_dir, max_bytes=n // 2)
    # ...the streaming path reads them; each process gets a disjoint shard, every epoch a new order
    src = jtfds.data_source("digits8x8", "train", data_dir)
    shards = [jtfds.SourceStream(src, 32, seed=1, process_index=i, process_count=2) for i in (0, 1)]
    epoch = [np.concatenate([s.record_keys(t) for t in range(s.steps_per_epoch)]) for s in shards]
    assert not set(epoch[0]) & set(epoch[1])
    assert len(set(epoch[0])) == len(epoch[0]) == shards[0].steps_per_epoch * 16
    nxt = shards[0].record_keys(shards[0].steps_per_epoch)
    assert set(nxt) <= set(range(len(src))) and not np.array_equal(nxt, epoch[0][:16])
    # batches match the in-memory arrays record for record
    x, y = jtfds.load("digits8x8", "train", data_dir)
    st = jtfds.SourceStream(src, 32, seed=1, workers=2)
    b = st.batch(3)
    keys = st.record_keys(3)
    np.testing.assert_array_equal(b["label"], y[keys])
    np.testing.assert_allclose(b["image"], x[keys] / 255.0, atol=1e-7)
    # fit over the stream: resume from a checkpoint equals the straight run
    straight = run(jtfds.SourceStream(src, 32, seed=1), 8)
    run(jtfds.SourceStream(src, 32, seed=1), 4, tmp_path / "w", ckpt_every=4)
    resumed = run(jtfds.SourceStream(src, 32, seed=1), 8, tmp_path / "w", ckpt_every=4)
    assert_trees_equal(straight[:3], resumed[:3])


@pytest.mark.slow  # > 30 s on 2 cores; CI runs it (the README test command runs all)
def test_nnx_optimizer_recipe_with_cram_equals_make_train_step(stream):
    """The documented NNX recipe: nnx.Optimizer + a pure grad_fn (fresh merge per pass)."""
    from jaxcomp.models import SmallCNN

    def new():
        return SmallCNN(rngs=nnx.Rngs(0), widths=(8, 16), hidden=32, input_hw=(8, 8))

    def tx():
        return cram(optax.sgd(0.1, momentum=0.9), rho=0.05, sparsities=(0.5,))

    def loss(m, batch):
        logits = m(batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    model = new()
    opt = nnx.Optimizer(model, tx(), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, opt, batch):
        grads = nnx.grad(loss)(model, batch)
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        rest = nnx.as_pure(rest)

        def grad_fn(p, i=None):  # p: the optimizer's pure param tree; fresh dropout per pass
            extra = extra_pass_state(rest, i)
            return jax.grad(lambda q: loss(nnx.merge(graphdef, q, extra), batch))(p)

        opt.update(model, grads, grad_fn=grad_fn)

    graphdef, _, params, state = split_model(new())
    t = tx()
    step = make_train_step(classification_loss(graphdef), t)
    o = t.init(params)
    for i in range(3):
        batch = jax.tree.map(jnp.asarray, stream.batch(i))
        batch["image"] = batch["image"].reshape(-1, 8, 8, 1)
        nnx_step(model, opt, batch)
        params, state, o, _ = step(params, state, o, batch)
    ours = nnx.as_pure(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
