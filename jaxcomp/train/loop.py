"""``fit``: the one trainer every experiment uses.

It owns, so that no experiment writes its own loop:

- **progress**: a tqdm bar that counts *finished* steps (a step counts when its metrics are
  ready, checked without blocking), examples/s measured from the first finished step on (so it
  excludes compilation), and one console line per log point;
- **metrics**: ``<workdir>/metrics.jsonl`` + TensorBoard events in ``<workdir>/tb`` (process 0);
  on resume the JSONL is cut back to the restored step (no duplicate rows) and its rows up to that
  step come back as ``history``, so a resumed run returns the same history as a straight one;
- **checkpoints** (``<workdir>/checkpoints``, verified, see ``jaxcomp.train.checkpoint``) every
  ``ckpt_every`` steps and at the end, with the run's identity in their metadata: the config hash
  and the config itself, the data seed and batch size. A resume under a different identity is
  refused naming the differing fields (``force_resume=True`` overrides), as is a checkpoint past
  ``num_steps``;
- **one writer per workdir**: an exclusive lock naming the holder (host, pid, run id);
- **preemption**: SIGTERM (what spot/preemptible TPU and GPU machines send) is caught; at the next
  step boundary ``fit`` saves a checkpoint and raises ``Preempted`` (a ``SystemExit`` with code
  143), so the process exits cleanly and a rerun continues bit for bit;
- **numerical faults** (``nan_policy``): ``"raise"`` stops at the first non-finite loss or
  gradient naming the step and the first non-finite leaf; ``"skip"`` drops that update and leaves
  params, model and optimizer state untouched (the step must come from
  ``make_train_step(..., nan_guard=True)``); ``"rollback"`` restores the last checkpoint and
  continues from it with the guard on.

The data position is the step: ``stream`` is any object with ``batch(step) -> pytree`` (a pure
function of the step, e.g. ``jaxcomp.data.DataStream``), optionally ``seed`` and ``batch_size``.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from jaxcomp.train import workdir as wd
from jaxcomp.train.checkpoint import Checkpointer, quiet_orbax_logging
from jaxcomp.train.mesh import shard_batch
from jaxcomp.train.writers import create_default_writer

NAN_POLICIES = (None, "raise", "skip", "rollback")


class Preempted(SystemExit):
    """Raised by ``fit`` after it saved a checkpoint on SIGTERM (exit code 143 = 128 + SIGTERM)."""

    def __init__(self, step: int, directory: Any):
        super().__init__(143)
        self.step, self.directory = step, directory

    def __str__(self) -> str:
        return f"preempted (SIGTERM): saved step {self.step} to {self.directory}; rerun to resume"


class _Sigterm:
    """Installs a SIGTERM flag handler for the duration of ``fit`` (main thread only)."""

    def __init__(self, enabled: bool):
        self.flag = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old = None

    def __enter__(self):
        if self.enabled:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.flag = True

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGTERM, self._old)

    def requested(self, step: int) -> bool:
        if self.flag:
            return True
        if jax.process_count() > 1:
            try:
                from jax.experimental import multihost_utils

                return bool(multihost_utils.reached_preemption_sync_point(step))
            except Exception:
                return False
        return False


def _leaf_names(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _first_nonfinite_leaf(tree: Any) -> str | None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(jax.device_get(leaf))
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return jax.tree_util.keystr(path)
    return None


def _read_history(path: epath.Path, upto: int) -> list[dict[str, float]]:
    """Rows of ``metrics.jsonl`` with step <= ``upto``; the file is rewritten (atomically) with
    exactly those rows, so a resumed run appends without duplicates."""
    import json

    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
        if int(row.get("step", upto + 1)) <= upto:
            rows.append(row)
    wd.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _identity(stream: Any, config: Any) -> dict[str, Any]:
    ident = {
        "data_seed": getattr(stream, "seed", None),
        "batch_size": getattr(stream, "batch_size", None),
    }
    if config is not None:
        ident["config_hash"] = wd.config_hash(config)
        ident["config"] = wd.config_dict(config)
    return ident


def _check_identity(meta: dict[str, Any], ident: dict[str, Any], directory: Any) -> None:
    problems = []
    for key in ("data_seed", "batch_size"):
        if meta.get(key) is not None and ident[key] is not None and meta[key] != ident[key]:
            problems.append(f"{key}: {meta[key]!r} -> {ident[key]!r}")
    if "config_hash" in ident and meta.get("config_hash") not in (None, ident["config_hash"]):
        problems += wd.config_diff(meta.get("config", {}), ident["config"]) or [
            f"config_hash: {meta['config_hash']} -> {ident['config_hash']}"
        ]
    if problems:
        raise ValueError(
            f"refusing to resume from {directory} (step {meta.get('step')}): this run's config "
            "differs from the one the checkpoint was written with:\n  "
            + "\n  ".join(problems)
            + "\nUse another workdir, or pass force_resume=True (--config.force_resume) to "
            "continue anyway."
        )


def _check_args(num_steps, ckpt_every, log_every, nan_policy, stream):
    for name, v in (("num_steps", num_steps), ("ckpt_every", ckpt_every), ("log_every", log_every)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if nan_policy == "rollback" and not ckpt_every:
        raise ValueError("nan_policy='rollback' needs checkpoints: give workdir and ckpt_every > 0")
    if not callable(getattr(stream, "batch", None)):
        raise TypeError(f"stream must have a batch(step) method, got {type(stream).__name__}")


def fit(
    step_fn: Callable,
    params: Any,
    model_state: Any,
    opt_state: Any,
    stream: Any,
    num_steps: int,
    *,
    mesh: Mesh | None = None,
    workdir: str | epath.PathLike | None = None,
    config: Any = None,
    force_resume: bool = False,
    ckpt_every: int = 0,
    max_to_keep: int = 2,
    log_every: int = 50,
    progress: bool = True,
    desc: str = "train",
    nan_policy: str | None = None,
    handle_sigterm: bool = True,
) -> tuple[Any, Any, Any, list[dict[str, float]]]:
    """Run ``step_fn`` (from ``make_train_step``) from the restored step (or 0) to ``num_steps``.

    Returns ``(params, model_state, opt_state, history)``; ``history`` holds the metrics of every
    log point (``log_every`` steps, and the last step) of the whole run, including the part
    before a resume. With ``workdir``, metrics go to ``metrics.jsonl`` and ``tb/``; with
    ``ckpt_every > 0`` too, verified checkpoints to ``checkpoints/`` (see the module docstring
    for resume, ``config``/``force_resume``, preemption and ``nan_policy``).
    """
    _check_args(num_steps, ckpt_every, log_every, nan_policy, stream)
    quiet_orbax_logging()
    workdir = epath.Path(workdir) if workdir is not None else None
    lock = None
    ident = _identity(stream, config)
    run_id = None
    if workdir is not None and jax.process_index() == 0:
        lock = wd.WorkdirLock(workdir).acquire()
        run_id = lock.run_id
    ckpt = None
    start = 0
    history: list[dict[str, float]] = []
    try:
        if workdir is not None and ckpt_every > 0:
            ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=max_to_keep)
            if ckpt.latest_step() is not None:
                meta = ckpt.read_meta()
                if not force_resume:
                    _check_identity(meta, ident, ckpt.directory)
                if int(meta["step"]) > num_steps:
                    raise ValueError(
                        f"{ckpt.directory} holds step {meta['step']}, past num_steps={num_steps}; "
                        "use another workdir (or a larger num_steps to continue training)"
                    )
                target = {"params": params, "model_state": model_state, "opt_state": opt_state}
                state, meta = ckpt.restore(target)
                params, model_state, opt_state = (
                    state["params"],
                    state["model_state"],
                    state["opt_state"],
                )
                start = int(meta["step"])
                print(f"[{desc}] resumed from step {start} ({ckpt.directory})", flush=True)
        if workdir is not None and jax.process_index() == 0:
            history = _read_history(workdir / "metrics.jsonl", start)
        return _loop(
            step_fn, params, model_state, opt_state, stream, num_steps, start, history,
            mesh=mesh, workdir=workdir, ckpt=ckpt, ckpt_every=ckpt_every, log_every=log_every,
            progress=progress, desc=desc, nan_policy=nan_policy, ident=ident, run_id=run_id,
            handle_sigterm=handle_sigterm,
        )  # fmt: skip
    finally:
        if ckpt is not None:
            ckpt.close()
        if lock is not None:
            lock.release()


def _loop(
    step_fn, params, model_state, opt_state, stream, num_steps, start, history, *, mesh,
    workdir, ckpt, ckpt_every, log_every, progress, desc, nan_policy, ident, run_id,
    handle_sigterm,
):  # fmt: skip
    from tqdm.auto import tqdm

    writer = create_default_writer(workdir)
    show = progress and jax.process_index() == 0
    bar = tqdm(total=num_steps, initial=start, desc=desc, disable=not show, dynamic_ncols=True)
    place = (
        (lambda b: shard_batch(b, mesh))
        if mesh is not None
        else (lambda b: jax.tree.map(jnp.asarray, b))
    )
    # XLA:CPU runs each fake device's share of a collective on a shared thread pool; with many
    # multi-device steps in flight it can deadlock in the all-reduce rendezvous. Accelerators
    # keep async dispatch; on CPU each step is awaited.
    sync = jax.default_backend() == "cpu" and len(jax.devices()) > 1
    batch_size = getattr(stream, "batch_size", None) or 1
    pending: collections.deque = collections.deque()  # (step, metrics) dispatched, not yet seen
    finished = start
    t_first = None  # time when the first step finished (compilation excluded from ex/s)
    n_first = start
    skipped = 0
    rollbacks = 0
    rate_str = "-"

    def save(step):
        ckpt.save(
            step,
            {"params": params, "model_state": model_state, "opt_state": opt_state},
            {**ident, "run_id": run_id},
        )

    def drain(block: bool):
        """Account for finished steps: progress, nan policy."""
        nonlocal finished, t_first, n_first, skipped, rate_str
        while pending:
            s, m = pending[0]
            if not block and hasattr(m["loss"], "is_ready") and not m["loss"].is_ready():
                break
            pending.popleft()
            if nan_policy is not None:
                if "nonfinite" in m:
                    bad = bool(m["nonfinite"])
                else:
                    bad = not all(np.isfinite(float(m[k])) for k in ("loss", "grad_norm") if k in m)
                if bad:
                    leaf = int(m.get("nonfinite_leaf", -1))
                    if nan_policy == "skip":
                        skipped += 1
                    else:
                        raise _NonFinite(s, leaf)
            finished = s
            if t_first is None:
                t_first, n_first = time.perf_counter(), s
            bar.update(s - bar.n)
        if t_first is not None and finished > n_first:
            rate = (finished - n_first) * batch_size / (time.perf_counter() - t_first)
            rate_str = f"{rate:.0f}"
            bar.set_postfix_str(f"{rate_str} ex/s", refresh=False)

    if nan_policy == "skip":
        _require_guard(step_fn, params, model_state, opt_state, stream, place, start)
    with _Sigterm(handle_sigterm) as term:
        step = start
        skip_steps: set[int] = set()
        while step < num_steps:
            if step in skip_steps:  # rolled back over this step: its batch is not applied
                step += 1
                continue
            try:
                params, model_state, opt_state, metrics = step_fn(
                    params, model_state, opt_state, place(stream.batch(step))
                )
                if sync:
                    jax.block_until_ready(metrics)
                done = step + 1
                pending.append((done, metrics))
                drain(block=False)
                if log_every and (done % log_every == 0 or done == num_steps):
                    drain(block=True)
                    shown = {
                        k: float(v)
                        for k, v in jax.device_get(metrics).items()
                        if k not in ("nonfinite", "nonfinite_leaf")
                    }
                    if nan_policy in ("skip", "rollback"):
                        shown["skipped_steps"] = float(skipped)
                    history.append({"step": done, **shown})
                    writer.write_scalars(done, shown)
                    writer.flush()
                    brief = {k: v for k, v in shown.items() if k in ("loss", "accuracy")}
                    bar.set_postfix({**{k: f"{v:.4g}" for k, v in brief.items()}, "ex/s": rate_str})
                if ckpt is not None and (done % ckpt_every == 0 or done == num_steps):
                    drain(block=True)
                    save(done)
                if term.requested(done):
                    drain(block=True)
                    if ckpt is not None:
                        save(done)
                        ckpt.wait()
                    bar.close()
                    writer.close()
                    raise Preempted(done, ckpt.directory if ckpt else None)
                step = done
            except _NonFinite as e:
                if e.leaf >= 0:
                    name = "gradient of " + _leaf_names(params)[e.leaf]
                else:
                    leaf = _first_nonfinite_leaf(params)
                    name = f"parameter {leaf}" if leaf else "the loss"
                if nan_policy == "rollback" and ckpt.latest_step() is not None and rollbacks < 3:
                    rollbacks += 1
                    target = {"params": params, "model_state": model_state, "opt_state": opt_state}
                    state, meta = ckpt.restore(target)
                    params, model_state, opt_state = (
                        state["params"], state["model_state"], state["opt_state"],
                    )  # fmt: skip
                    step = int(meta["step"])
                    skip_steps.add(e.step - 1)
                    history[:] = [h for h in history if h["step"] <= step]
                    skipped += 1
                    pending.clear()
                    bar.n = step
                    bar.write(
                        f"[{desc}] non-finite value at step {e.step} ({name}); rolled back to "
                        f"step {step}, that step's batch is skipped"
                    )
                    continue
                bar.close()
                writer.close()
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {e.step} (first non-finite leaf: "
                    f"{name}); nan_policy={nan_policy!r}"
                ) from None
        drain(block=True)
    bar.close()
    writer.close()
    return params, model_state, opt_state, history


class _NonFinite(Exception):
    def __init__(self, step: int, leaf: int):
        super().__init__(step, leaf)
        self.step, self.leaf = step, leaf


def _require_guard(step_fn, params, model_state, opt_state, stream, place, start):
    shapes = jax.eval_shape(step_fn, params, model_state, opt_state, place(stream.batch(start)))
    if "nonfinite" not in shapes[3]:
        raise ValueError(
            "nan_policy='skip' needs a step built with make_train_step(..., nan_guard=True), "
            "which leaves the state untouched on a non-finite step; this step_fn reports no "
            "'nonfinite' metric"
        )
