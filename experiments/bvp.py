"""Bernstein-Galerkin, compact FD4 and Galerkin + FD4 residual correction on classic BVPs.

    python -m experiments.bvp --config=experiments/configs/bvp.py --workdir=runs/bvp

For every problem (``jaxcomp.numerics.examples``): the max error of the Galerkin solution of each
degree (on a fine grid), of the compact FD4 scheme alone for each grid size (at the nodes) with its
observed order ``log2(e_n / e_2n)``, and of Galerkin + residual correction for each (degree, n) (at
the nodes, and on the fine grid through the Hermite-interpolated correction).  Writes, into the
workdir only, ``results.json``, ``results.md`` (the tables), ``metrics.jsonl`` (one row of max
errors per problem) and a log-log PNG of error vs n (``config.png``). Nothing is trained, so there
are no checkpoints.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from etils import epath

from experiments._harness import (
    announce,
    check_config,
    cli,
    each,
    progress,
    workdir_path,
    write_figure,
    write_json_atomic,
    write_text_atomic,
)
from jaxcomp.numerics import galerkin, residual_correction
from jaxcomp.numerics.compact_fd import compact_fd4
from jaxcomp.numerics.examples import classic_problems

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_CONFIG = "experiments/configs/bvp.py"
DEFAULT_WORKDIR = "runs/bvp"


def _file_name(v) -> str | None:
    ok = isinstance(v, str) and "/" not in v and "\\" not in v
    return None if ok else "must be a file name inside the workdir ('' = no figure)"


# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "problems": each(tuple(classic_problems())),
    "degrees": each("int[2,60]"),  # the Galerkin solver's Bernstein degrees
    "grid_sizes": each("int>=4"),  # compact FD4 intervals
    "eval_points": "int>=2",
    "png": _file_name,
}


def _max_error(values, exact, x) -> float:
    with jax.enable_x64(True):
        return float(jnp.max(jnp.abs(jnp.asarray(values) - exact(jnp.asarray(x)))))


def run_problem(problem, degrees, grid_sizes, eval_points) -> dict:
    fine = np.linspace(problem.a, problem.b, eval_points)
    out = {"galerkin": {}, "galerkin_iterations": {}, "fd4": {}, "fd4_order": {}}
    out["corrected_nodes"], out["corrected_fine"] = {}, {}
    approx = {}
    for degree in degrees:
        approx[degree] = sol = galerkin(problem, degree)
        out["galerkin"][degree] = _max_error(sol(fine), problem.exact, fine)
        out["galerkin_iterations"][degree] = sol.iterations
    for n in grid_sizes:
        x, u = compact_fd4(problem, n)
        out["fd4"][n] = _max_error(u, problem.exact, x)
    for n_coarse, n_fine in zip(grid_sizes[:-1], grid_sizes[1:]):
        ratio = out["fd4"][n_coarse] / out["fd4"][n_fine]
        out["fd4_order"][n_fine] = float(np.log(ratio) / np.log(n_fine / n_coarse))
    for degree in degrees:
        out["corrected_nodes"][degree], out["corrected_fine"][degree] = {}, {}
        for n in grid_sizes:
            corr = residual_correction(problem, approx[degree], n)
            out["corrected_nodes"][degree][n] = corr.errors["corrected"]
            out["corrected_fine"][degree][n] = _max_error(corr(fine), problem.exact, fine)
    return out


def markdown_tables(results: dict, degrees, grid_sizes) -> str:
    """One table per problem: rows are methods; columns: Galerkin alone, then FD grid sizes."""
    lines = []
    for name, r in results.items():
        lines.append(f"### {name}\n")
        lines.append("| method | alone | " + " | ".join(f"n={n}" for n in grid_sizes) + " |")
        lines.append("|---" * (len(grid_sizes) + 2) + "|")
        fd4 = " | ".join(f"{r['fd4'][n]:.2e}" for n in grid_sizes)
        lines.append(f"| FD4 alone | | {fd4} |")
        orders = " | ".join(["-"] + [f"{r['fd4_order'][n]:.2f}" for n in grid_sizes[1:]])
        lines.append(f"| FD4 observed order | | {orders} |")
        for d in degrees:
            row = " | ".join(f"{r['corrected_nodes'][d][n]:.2e}" for n in grid_sizes)
            lines.append(f"| Galerkin deg {d} (+ correction) | {r['galerkin'][d]:.2e} | {row} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, degrees, grid_sizes, path: epath.Path) -> None:
    names = list(results)
    cols = min(3, len(names))
    rows = -(-(len(names) + 1) // cols)  # one spare panel for the legend
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.6 * rows), squeeze=False)
    flat = axes.ravel()
    ns = np.array(grid_sizes, float)
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(degrees)))
    floor = 1e-16
    for ax, name in zip(flat, names):
        r = results[name]
        fd4 = np.maximum([r["fd4"][n] for n in grid_sizes], floor)
        ax.loglog(ns, fd4, "k-o", lw=2, label="FD4 alone")
        ax.loglog(ns, fd4[0] * (ns / ns[0]) ** -4.0, "k:", lw=1, label="slope -4")
        for c, d in zip(colours, degrees):
            corr = np.maximum([r["corrected_nodes"][d][n] for n in grid_sizes], floor)
            ax.loglog(ns, corr, "-s", color=c, ms=4, label=f"Galerkin {d} + corr.")
            ax.axhline(max(r["galerkin"][d], floor), color=c, ls="--", lw=1)
        ax.set_title(name)
        ax.set_xlabel("FD intervals n")
        ax.set_ylabel("max error")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = flat[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="grey", ls="--", lw=1))
    labels.append("Galerkin alone (dashed, colour = degree)")
    for ax in flat[len(names) :]:
        ax.axis("off")
    flat[len(names)].legend(handles, labels, loc="center", fontsize=9)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)


def run(config, workdir: str) -> dict:
    """Every problem of ``config.problems``; returns (and writes) the results payload."""
    check_config(config, CONFIG_RULES)
    workdir = workdir_path(workdir)
    problems = classic_problems()
    degrees, grid_sizes = list(config.degrees), list(config.grid_sizes)
    results, seconds, rows = {}, {}, []
    announce(
        f"solving {len(config.problems)} problems: Galerkin degrees {degrees}, FD4 grids "
        f"{grid_sizes} (each new size compiles once)"
    )
    for name in progress(config.problems, desc="problems"):
        start = time.perf_counter()
        results[name] = r = run_problem(problems[name], degrees, grid_sizes, config.eval_points)
        seconds[name] = time.perf_counter() - start
        print(
            f"{name}: FD4 orders { ({n: round(v, 2) for n, v in r['fd4_order'].items()}) }, "
            f"Galerkin { ({d: f'{v:.1e}' for d, v in r['galerkin'].items()}) }",
            flush=True,
        )
        row = {"step": len(rows), "problem": name}
        row.update({f"galerkin_deg{d}": v for d, v in r["galerkin"].items()})
        row.update({f"fd4_n{n}": v for n, v in r["fd4"].items()})
        rows.append(row)
    tables = markdown_tables(results, degrees, grid_sizes)
    print(tables, flush=True)
    payload = {
        "config": config.to_dict(),
        "results": results,
        "seconds_per_problem_incl_compile": seconds,
        "error_norms": "max |u - u_exact|: Galerkin on eval_points fine grid; FD4 and corrected at "
        "the FD nodes; corrected_fine on the fine grid (Hermite-interpolated correction)",
        "machine": "2 shared CPU cores, other processes running; timings are indicative only",
    }
    write_json_atomic(workdir / "results.json", payload)
    write_text_atomic(workdir / "results.md", tables)
    write_text_atomic(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    if config.png:
        plot(results, degrees, grid_sizes, workdir / config.png)
    # JSON turns the int keys (degrees, grid sizes) into strings: return what was written.
    return json.loads((workdir / "results.json").read_text())


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
