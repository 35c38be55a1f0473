"""What every experiment script shares: phase announcements, atomic result files, step-indexed
batch streams over precomputed index tables, and ``fit`` for one stage in its own sub-workdir.

Not an experiment itself (no ``DEFAULT_CONFIG``); the experiments are the other modules here.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxcomp.train import fit, plot_lines

_T0 = time.perf_counter()


def announce(message: str) -> None:
    """Print one line saying which long phase starts now (with seconds since import)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", flush=True)


def workdir_path(workdir: str | epath.PathLike) -> epath.Path:
    """``epath.Path(workdir)``, created (``gs://`` works wherever a local path does)."""
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: epath.Path, text: str) -> None:
    """Write ``path`` via ``<name>.tmp`` and a rename, so a reader never sees half a file."""
    path = epath.Path(path)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def write_json_atomic(path: epath.Path, obj: Any) -> None:
    """``json.dumps(obj)`` written atomically (see ``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(obj, indent=1, default=_json_default))


def write_figure(path: epath.Path, fig: Any, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure as PNG at ``path`` (any ``epath``) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    plt.close(fig)
    path = epath.Path(path)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def write_line_plot(path: epath.Path, series: Mapping, **kwargs: Any) -> None:
    """``jaxcomp.train.plot_lines`` written to ``path`` (any ``epath``)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = plot_lines(os.path.join(tmp, "plot.png"), series, **kwargs)
        data = epath.Path(local).read_bytes()
    path = epath.Path(path)
    tmp_path = path.parent / f"{path.name}.tmp"
    tmp_path.write_bytes(data)
    tmp_path.replace(path)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def read_json(path: epath.Path) -> Any | None:
    """The JSON at ``path``, or ``None`` when there is none."""
    path = epath.Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def progress(items: Iterable, *, desc: str, total: int | None = None):
    """A tqdm bar over ``items`` (evaluation loops, sweeps)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, dynamic_ncols=True)


def sequential_permutation_indices(
    n: int, batch_size: int, num_steps: int, rng: np.random.Generator
) -> np.ndarray:
    """``(num_steps, batch_size)`` indices: consecutive slices of permutations of ``range(n)``
    drawn one after another from ``rng``, a new one when the current cannot fill a batch (the
    order the hand-written loops used, so the same seed gives the same batches)."""
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    out = np.empty((num_steps, batch_size), np.int64)
    order, pos = rng.permutation(n), 0
    for t in range(num_steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        out[t] = order[pos : pos + batch_size]
        pos += batch_size
    return out


def concatenated_permutation_indices(
    n: int, batch_size: int, num_steps: int, rng: np.random.Generator
) -> np.ndarray:
    """``(num_steps, batch_size)`` indices: consecutive slices of enough permutations of
    ``range(n)`` drawn from ``rng`` and concatenated (batches may straddle two epochs)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    epochs = math.ceil(num_steps * batch_size / n) + 1
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return order[: num_steps * batch_size].reshape(num_steps, batch_size)


@dataclasses.dataclass(frozen=True)
class TableStream:
    """Step-indexed batches for ``fit`` from a precomputed table.

    ``batch(step)`` is ``{k: arrays[k][index[step]]} | {k: per_step[k][step]}``: a pure function
    of the step, so a resumed run sees exactly the batches a straight run would. ``index`` is
    ``(num_steps, batch_size)`` (may be ``None`` when everything is in ``per_step``).
    """

    arrays: Mapping[str, np.ndarray]
    index: np.ndarray | None
    seed: int
    batch_size: int
    per_step: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        lengths = {len(v) for v in self.per_step.values()}
        if self.index is not None:
            lengths.add(len(self.index))
        if len(lengths) > 1:
            raise ValueError(f"index and per_step tables differ in length: {sorted(lengths)}")

    @property
    def num_steps(self) -> int:
        return (
            len(self.index) if self.index is not None else len(next(iter(self.per_step.values())))
        )

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step must be in [0, {self.num_steps}), got {step}")
        out = {}
        if self.index is not None:
            idx = self.index[step]
            out.update({k: v[idx] for k, v in self.arrays.items()})
        out.update({k: v[step] for k, v in self.per_step.items()})
        return out


def own(tree: Any) -> Any:
    """Private copies of a tree's arrays. ``make_train_step`` donates params and model state, which
    deletes their buffers; arrays still shared with another module (a teacher, a frozen CLIP
    reused by the next run) must be copied before they go into ``fit``."""
    return jax.tree.map(jnp.copy, tree)


def _has_empty(tree: Any) -> bool:
    return any(getattr(x, "size", 1) == 0 for x in jax.tree.leaves(tree))


def _pack(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.zeros((1,), x.dtype) if x.size == 0 else x, tree)


def _unpack(tree: Any, like: Any) -> Any:
    return jax.tree.map(lambda x, s: jnp.zeros(s.shape, s.dtype) if s.size == 0 else x, tree, like)


def _without_empty_arrays(step_fn: Callable, params: Any, model_state: Any, opt_state: Any):
    """Orbax cannot save zero-size arrays (M-FAC's ``(0,)`` error buffer without a compressor, the
    rank-0 factors of a sparse-only LoSparse layer): ``fit`` sees each as a ``(1,)`` placeholder,
    and the step sees the real (empty) array. Returns ``(step, packed trees, unpack)``."""
    shapes = jax.eval_shape(lambda *t: t, params, model_state, opt_state)

    def step(p, s, o, batch):
        p, s, o = _unpack((p, s, o), shapes)
        p, s, o, metrics = step_fn(p, s, o, batch)
        return (*_pack((p, s, o)), metrics)

    return step, _pack((params, model_state, opt_state)), lambda t: _unpack(t, shapes)


def fit_stage(
    step_fn: Callable,
    params: Any,
    model_state: Any,
    opt_state: Any,
    stream: Any,
    num_steps: int,
    *,
    workdir: epath.Path,
    stage: str,
    ckpt_every: int = 0,
    log_every: int = 10,
    progress: bool = True,
    desc: str | None = None,
    quiet: bool = False,
    config: Any = None,
) -> tuple[Any, Any, Any, list[dict[str, float]]]:
    """``fit`` for one stage of an experiment in ``workdir/stage`` (its own checkpoints and
    ``metrics.jsonl``, so it resumes on its own); ``quiet`` skips the announcement (for a stage
    trained in several calls). ``config`` goes to ``fit`` where it takes one (the config hash that
    refuses to resume a run of another config). ``ckpt_every <= 0`` checkpoints only at the
    end. Returns ``fit``'s outputs; the history is that of the whole stage (steps logged by an
    earlier, resumed run are read back from ``metrics.jsonl``), one row per step."""
    stage_dir = workdir_path(epath.Path(workdir) / stage)
    if not quiet:
        announce(
            f"{stage}: compiling the train step, then training to step {num_steps} (-> {stage_dir})"
        )
    unpack = None
    if _has_empty((params, model_state, opt_state)):
        step_fn, (params, model_state, opt_state), unpack = _without_empty_arrays(
            step_fn, params, model_state, opt_state
        )
    extra = {}
    if config is not None and "config" in inspect.signature(fit).parameters:
        extra["config"] = config
    params, model_state, opt_state, history = fit(
        step_fn,
        params,
        model_state,
        opt_state,
        stream,
        num_steps,
        workdir=stage_dir,
        ckpt_every=ckpt_every if ckpt_every > 0 else max(num_steps, 1),
        log_every=log_every,
        progress=progress,
        desc=desc or stage,
        **extra,
    )
    if unpack is not None:
        params, model_state, opt_state = unpack((params, model_state, opt_state))
    # A resumed run returns only the steps it ran (with the current ``fit``): read the rest back.
    logged = []
    metrics_file = stage_dir / "metrics.jsonl"
    if metrics_file.exists():
        lines = metrics_file.read_text().splitlines()
        logged = [row for row in map(json.loads, filter(str.strip, lines)) if "step" in row]
    logged = [r for r in logged if r["step"] <= num_steps]
    return params, model_state, opt_state, dedup_history([*logged, *history])


def dedup_history(history: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """History rows sorted by step, the last row of each step kept."""
    rows = {int(h["step"]): dict(h) for h in history}
    return [rows[s] for s in sorted(rows)]


def cli(run: Callable[[Any, str], dict], default_config: str, default_workdir: str) -> None:
    """``python -m experiments.<name> [--config=...] [--workdir=...]``: defines the two flags
    (only when run as a script, so that importing several experiments defines nothing) and calls
    ``run(config, workdir)``."""
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file(
        "config", default_config, "experiment config: a .py file with get_config()"
    )
    workdir = flags.DEFINE_string(
        "workdir", default_workdir, "output directory (a local path or gs://...)"
    )

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        from jaxcomp.train import initialize_distributed

        initialize_distributed()
        run(config.value, workdir.value)

    app.run(main)
