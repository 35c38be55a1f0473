"""The multi-host path for real: 2 processes x 4 CPU devices joined by jax.distributed (gloo
collectives) train, checkpoint, resume, and equal a single-process 8-device run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).parent / "fixtures" / "multihost_worker.py"
REPO = Path(__file__).parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(pid, nproc, port, workdir, out):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(WORKER), str(pid), str(nproc), str(port), str(workdir), str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow  # > 30 s on 2 cores; CI runs it (the README test command runs all)
def test_two_processes_equal_one(tmp_path):
    port = free_port()
    procs = [launch(i, 2, port, tmp_path / "multi", tmp_path / "multi.json") for i in (0, 1)]
    single = launch(0, 1, 0, tmp_path / "single", tmp_path / "single.json")
    for p in [*procs, single]:
        try:
            rc = p.wait(600)
        finally:
            if p.poll() is None:
                p.kill()
        assert rc == 0, p.stderr.read().decode()[-4000:]
    multi = json.loads((tmp_path / "multi.json").read_text())
    ref = json.loads((tmp_path / "single.json").read_text())
    assert multi["params"].keys() == ref["params"].keys()
    for k in ref["params"]:
        np.testing.assert_allclose(multi["params"][k], ref["params"][k], rtol=2e-5, atol=2e-6)
    # the resumed history covers all 10 steps in both, and the losses agree
    assert len(multi["losses"]) == len(ref["losses"]) == 10
    np.testing.assert_allclose(multi["losses"], ref["losses"], rtol=1e-5)
    # both processes wrote their shards of the same checkpoints
    assert (tmp_path / "multi" / "checkpoints" / "10").is_dir()
