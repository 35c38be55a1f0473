"""Benchmark: Galerkin + residual correction vs compact FD4 alone, and tridiagonal vs dense Newton.

    python -m benchmarks.bvp            # writes benchmarks/results/bvp.json

1. Accuracy per time: for each problem, FD4 alone on n intervals against Bernstein-Galerkin of
   degree ``DEGREE`` + residual correction on the same n (compiled calls, median of repeats).
2. The Newton step of ``compact_fd4``: Jacobian from 3 JVPs + tridiagonal solve against
   ``jax.jacfwd`` + dense LU, for several grid sizes (same iterate, same result).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomp.numerics import galerkin, residual_correction
from jaxcomp.numerics.compact_fd import _tridiagonal_newton_step, compact_fd4, fd4_residual
from jaxcomp.numerics.examples import classic_problems

PROBLEMS = ("robin_linear", "bratu", "robin_nonlinear")
DEGREE = 8
GRIDS = (16, 32, 64)
NEWTON_GRIDS = (128, 512, 1024)
REPEATS = 5


def _median_seconds(fn, *args) -> tuple[float, object]:
    """Median wall time of ``fn(*args)`` over ``REPEATS`` calls after a warm-up; and its output."""
    out = fn(*args)  # compile / warm up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _fd4(problem, n):
    return compact_fd4(problem, n)


def _corrected(problem, n):
    return residual_correction(problem, galerkin(problem, DEGREE), n)


def _max_error(values, exact, x) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(values) - exact(jnp.asarray(x)))))


def accuracy_per_time() -> dict:
    problems = classic_problems()
    out = {}
    for name in PROBLEMS:
        p = problems[name]
        rows = {}
        for n in GRIDS:
            t_fd, (x, u) = _median_seconds(_fd4, p, n)
            t_corr, sol = _median_seconds(_corrected, p, n)
            fd_err, corr_err = _max_error(u, p.exact, x), sol.errors["corrected"]
            rows[n] = {
                "fd4_error": fd_err,
                "galerkin_plus_correction_error": corr_err,
                "fd4_seconds": t_fd,
                "galerkin_plus_correction_seconds": t_corr,
                "time_ratio_corrected_over_fd4": t_corr / t_fd,
                "error_ratio_fd4_over_corrected": fd_err / corr_err,
            }
        out[name] = rows
    return out


@functools.partial(jax.jit, static_argnums=(0, 1))
def _dense_step(F, bcs, gammas, nodes, u):
    res = lambda v: fd4_residual(F, bcs, gammas, nodes, v)
    return u - jnp.linalg.solve(jax.jacfwd(res)(u), res(u))


def _tri_step(F, bcs, gammas, nodes, u):
    return _tridiagonal_newton_step(F, bcs, gammas, nodes, u)[0]


def newton_step() -> dict:
    p = classic_problems()["robin_nonlinear"]
    bcs = ((p.left[0], p.left[1]), (p.right[0], p.right[1]))
    gammas = jnp.asarray([p.left[2], p.right[2]])
    out = {}
    for n in NEWTON_GRIDS:
        x = jnp.linspace(p.a, p.b, n + 1)
        nodes = (x, *(jnp.zeros(n + 1),) * 3)
        u = x + 0.1 * jnp.sin(3 * x)

        t_tri, tri = _median_seconds(_tri_step, p.F, bcs, gammas, nodes, u)
        t_dense, dense = _median_seconds(_dense_step, p.F, bcs, gammas, nodes, u)
        out[n] = {
            "tridiagonal_seconds": t_tri,
            "dense_seconds": t_dense,
            "speedup_dense_over_tridiagonal": t_dense / t_tri,
            "max_abs_difference": float(jnp.max(jnp.abs(tri - dense))),
        }
    return out


def main() -> None:
    with jax.enable_x64(True):
        results = {
            "accuracy_per_time": accuracy_per_time(),
            "newton_step": newton_step(),
        }
    results["settings"] = {
        "galerkin_degree": DEGREE,
        "grids": list(GRIDS),
        "newton_grids": list(NEWTON_GRIDS),
        "repeats": REPEATS,
        "timing": "median wall seconds of compiled calls after one warm-up call",
        "machine": "CPU, 2 cores shared with other developers' processes (load average > 4); "
        "compare the ratios, not the absolute seconds",
        "jax": jax.__version__,
        "numpy": np.__version__,
    }
    path = os.path.join(os.path.dirname(__file__), "results", "bvp.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
