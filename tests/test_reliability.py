"""Fault injection with real processes and real files: SIGTERM, kill -9 mid-save, a flipped bit,
a truncated array file, a checkpoint of another model, two writers on one workdir."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.train import Checkpointer, restore_latest
from jaxcomp.train.workdir import WorkdirLockedError

WORKER = Path(__file__).parent / "fixtures" / "fit_worker.py"
REPO = Path(__file__).parent.parent


def worker(workdir, steps, ckpt_every, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(WORKER), str(workdir), str(steps), str(ckpt_every), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_rows(workdir, n, proc, timeout=240):
    path = Path(workdir) / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-3000:])
        time.sleep(0.05)
    raise AssertionError("worker made no progress")


def final(workdir):
    return json.loads((Path(workdir) / "final.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    p = worker(d, 30, 10)
    assert p.wait(300) == 0, p.stderr.read().decode()[-3000:]
    return final(d)


def test_sigterm_saves_and_resume_equals_straight_run(straight, tmp_path):
    p = worker(tmp_path, 30, 10, "--sleep", "0.1")
    wait_rows(tmp_path, 12, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(120) == 143, p.stderr.read().decode()[-2000:]
    err = p.stderr.read().decode()
    ck = Checkpointer(tmp_path / "checkpoints")
    stopped = ck.latest_step()
    ck.close()
    assert 12 <= stopped < 30 and stopped % 10 != 0, (stopped, err[-500:])
    q = worker(tmp_path, 30, 10)
    assert q.wait(300) == 0, q.stderr.read().decode()[-3000:]
    assert final(tmp_path)["params"] == straight["params"]
    assert final(tmp_path)["opt"] == straight["opt"]
    assert final(tmp_path)["history_steps"] == list(range(1, 31))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))  # no duplicate rows after resume


def test_kill9_mid_save_keeps_previous_checkpoint(straight, tmp_path):
    # a 64 MB array in the state makes each save long enough to be killed inside it
    p = worker(tmp_path, 30, 5, "--big", str(16_000_000))
    ck_dir = tmp_path / "checkpoints"
    t0 = time.time()
    while time.time() - t0 < 240:  # wait for a save in progress after the first complete one
        names = [n.name for n in ck_dir.iterdir()] if ck_dir.exists() else []
        if "5" in names and any("tmp" in n for n in names):
            break
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait(60)
    ck = Checkpointer(ck_dir, create=False, lock=False)
    latest = ck.latest_step()
    ck.close()
    assert latest is not None and latest >= 5
    target = {
        "params": {
            "l1": {"bias": jnp.zeros(32), "kernel": jnp.zeros((64, 32))},
            "l2": {"bias": jnp.zeros(10), "kernel": jnp.zeros((32, 10))},
        }
    }
    meta = Checkpointer(ck_dir, create=False, lock=False).read_meta()
    assert meta["step"] == latest
    # the kill released the lock (flock dies with the process); a rerun completes
    q = worker(tmp_path, 30, 5, "--big", str(16_000_000))
    assert q.wait(300) == 0, q.stderr.read().decode()[-3000:]
    del target


def save_one(tmp_path):
    d = tmp_path / "ck"
    ck = Checkpointer(d, async_save=False)
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    ck.save(1, {"params": {"w": jnp.asarray(w), "b": jnp.ones(64)}})
    ck.close()
    return d, w


def array_files(d):
    return sorted(
        (f for f in (d / "1" / "state").rglob("*") if f.is_file() and "/d/" in str(f)),
        key=lambda f: -f.stat().st_size,
    )


def test_bit_flips_never_restore_silently(tmp_path):
    d, w = save_one(tmp_path)
    target = {"params": {"w": jnp.zeros((64, 64)), "b": jnp.zeros(64)}}
    (f,) = array_files(d)[:1]
    raw = f.read_bytes()
    outcomes = {"detected": 0, "harmless": 0}
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(raw), 24, replace=False):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << int(rng.integers(8))
        f.write_bytes(bytes(flipped))
        try:
            state, _ = restore_latest(d, target)
        except ValueError as e:
            assert "step 1" in str(e) or "/1" in str(e)
            outcomes["detected"] += 1
        else:  # a flip in bytes that do not hold data (padding, unused header bits) is harmless
            np.testing.assert_array_equal(state["params"]["w"], w)
            outcomes["harmless"] += 1
    f.write_bytes(raw)
    assert outcomes["detected"] >= 12, outcomes


def test_truncated_array_file_is_a_value_error(tmp_path):
    d, _ = save_one(tmp_path)
    (f,) = array_files(d)[:1]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match="step 1"):
        restore_latest(d, {"params": {"w": jnp.zeros((64, 64)), "b": jnp.zeros(64)}})


def test_other_model_shape_names_both_shapes(tmp_path):
    d, _ = save_one(tmp_path)
    with pytest.raises(ValueError, match=r"\['params'\]\['w'\].*\(64, 64\).*\(32, 64\)"):
        restore_latest(d, {"params": {"w": jnp.zeros((32, 64)), "b": jnp.zeros(64)}})


def test_two_writers_on_one_directory(tmp_path):
    a = Checkpointer(tmp_path / "ck", async_save=False)
    a.save(1, {"x": jnp.ones(2)})
    b = Checkpointer(tmp_path / "ck", async_save=False)
    with pytest.raises(WorkdirLockedError, match=f"pid={os.getpid()}"):
        b.save(2, {"x": jnp.ones(2)})
    a.close()
    b.save(2, {"x": jnp.ones(2)})  # the first writer is gone
    b.close()


def test_two_processes_on_one_workdir(tmp_path):
    p = worker(tmp_path, 100_000, 50, "--sleep", "0.2")  # runs until killed
    wait_rows(tmp_path, 2, p)
    try:
        q = worker(tmp_path, 200, 50)
        assert q.wait(600) != 0
        assert "in use by another run" in q.stderr.read().decode()
    finally:
        p.kill()
        p.wait()


def test_default_mfac_ggt_states_roundtrip(tmp_path):
    """Their unused error-feedback buffers are zero-size arrays, which orbax cannot store."""
    import jax

    from jaxcomp.optim import ggt, mfac

    p = {"w": jnp.arange(50.0).reshape(10, 5), "b": jnp.ones(5)}
    for i, tx in enumerate((mfac(0.1), ggt(0.1))):
        st = tx.init(p)
        st = tx.update(p, st, p)[1]  # a non-trivial state
        ck = Checkpointer(tmp_path / str(i), async_save=False)
        ck.save(1, {"opt_state": st})
        out, _ = ck.restore({"opt_state": tx.init(p)})
        ck.close()
        for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(out["opt_state"]), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
