"""What every experiment script shares: config checks before any work, phase announcements,
atomic result files, step-indexed batch streams over precomputed index tables, and ``fit`` for one
stage in its own sub-workdir.

Not an experiment itself (no ``DEFAULT_CONFIG``); the experiments are the other modules here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxcomp.train import fit, plot_lines
from jaxcomp.train.workdir import (  # noqa: F401
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

_T0 = time.perf_counter()


def announce(message: str) -> None:
    """Print one line saying which long phase starts now (with seconds since import)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", flush=True)


def workdir_path(workdir: str | epath.PathLike) -> epath.Path:
    """``epath.Path(workdir)``, created (``gs://`` works wherever a local path does); a workdir
    that exists and is not a directory is refused, naming it."""
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"workdir {workdir} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Config checks: every experiment checks its whole config before it touches data or the workdir.


@dataclasses.dataclass(frozen=True)
class EachRule:
    """Rule of a tuple-valued field: ``rule`` holds for every element (see ``each``)."""

    rule: Any
    allow_empty: bool = False


@dataclasses.dataclass(frozen=True)
class OptionalRule:
    """Rule of a field that may be ``None`` (see ``optional``)."""

    rule: Any


def each(rule: Any, *, allow_empty: bool = False) -> EachRule:
    """A tuple (or list) whose every element satisfies ``rule``; empty only if ``allow_empty``."""
    return EachRule(rule, allow_empty)


def optional(rule: Any) -> OptionalRule:
    """``None``, or a value that satisfies ``rule``."""
    return OptionalRule(rule)


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COMPARE_RE = re.compile(rf"^(int)?\s*(>=|>|<=|<)\s*({_NUM})$")
_INTERVAL_RE = re.compile(rf"^(int)?\s*([\[(])\s*({_NUM})\s*,\s*({_NUM})\s*([\])])$")
_OPS = {
    ">=": lambda v, b: v >= b,
    ">": lambda v, b: v > b,
    "<=": lambda v, b: v <= b,
    "<": lambda v, b: v < b,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    """A finite real number (int or float; bool is not a number here)."""
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, (bool, np.bool_))
        and math.isfinite(v)
    )


def _bound(text: str) -> int | float:
    x = float(text)
    return int(x) if x.is_integer() else x


def _rule_problem(rule: Any, v: Any) -> str | None:
    """``None`` if ``v`` satisfies ``rule``, else what it must be (``"must be ..."``)."""
    if callable(rule):
        return rule(v)
    if isinstance(rule, str):
        if m := _COMPARE_RE.match(rule.replace(" ", "")):
            is_int, op, b = m.group(1), m.group(2), _bound(m.group(3))
            what = f"an int {op} {b}" if is_int else f"a finite number {op} {b}"
            ok = (_is_int(v) if is_int else _is_number(v)) and _OPS[op](v, b)
            return None if ok else f"must be {what}"
        if m := _INTERVAL_RE.match(rule.replace(" ", "")):
            is_int, left, lo, hi, right = m.groups()
            lo, hi = _bound(lo), _bound(hi)
            what = f"{'an int' if is_int else 'a number'} in {left}{lo}, {hi}{right}"
            ok = (_is_int(v) if is_int else _is_number(v)) and (
                (lo <= v if left == "[" else lo < v) and (v <= hi if right == "]" else v < hi)
            )
            return None if ok else f"must be {what}"
        raise ValueError(f"unknown config rule {rule!r}")
    if isinstance(rule, (tuple, list, set, frozenset)):
        choices = sorted(rule, key=repr) if isinstance(rule, (set, frozenset)) else list(rule)
        if any(type(v) is type(c) and v == c for c in choices):
            return None
        return "must be one of " + ", ".join(repr(c) for c in choices)
    raise ValueError(f"unknown config rule {rule!r}")


def _check_field(name: str, rule: Any, v: Any) -> None:
    if isinstance(rule, OptionalRule):
        if v is not None:
            _check_field(name, rule.rule, v)
        return
    if isinstance(rule, EachRule):
        if not isinstance(v, (tuple, list)):
            raise ValueError(f"config.{name} must be a tuple, got {v!r}")
        if not v and not rule.allow_empty:
            raise ValueError(f"config.{name} must be a non-empty tuple, got {v!r}")
        for i, x in enumerate(v):
            _check_field(f"{name}[{i}]", rule.rule, x)
        return
    problem = _rule_problem(rule, v)
    if problem is not None:
        raise ValueError(f"config.{name} {problem}, got {v!r}")


def _lookup(cfg: Any, field: str) -> tuple[bool, Any]:
    node = cfg
    for part in field.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            return False, None
        if part not in node:
            return False, None
        node = node[part]
    return True, node


def check_config(cfg: Any, rules: Mapping[str, Any]) -> None:
    """Check ``cfg`` (a ``ConfigDict`` or mapping) against ``rules``, before any work.

    ``rules`` maps a field name (dotted for nested dicts: ``"coop.lr"``) to what it must be:

    * ``"int>=1"``, ``"int>=0"`` (any ``int`` comparison): an int (``bool`` is not one);
    * ``">0"``, ``">=0"`` (any comparison): a finite int or float;
    * ``"[0,1]"``, ``"[0,1)"``, ``"(0,1]"`` (any bounds; ``"int[1,3]"`` for ints): a finite
      number in that interval;
    * a tuple or set of allowed values (``("log", "linear")``);
    * ``each(rule)``: a non-empty tuple whose every element satisfies ``rule``
      (``each(rule, allow_empty=True)`` when empty is fine); ``optional(rule)``: ``None`` or ``rule``;
    * a callable ``value -> None | "must be ..."`` for anything else.

    A field the config lacks is skipped (variants of an experiment's config differ). The first
    violation raises ``ValueError("config.<field> must be <what>, got <value>")``.
    """
    for field, rule in rules.items():
        found, v = _lookup(cfg, field)
        if found:
            _check_field(field, rule, v)


def write_figure(path: epath.Path, fig: Any, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure as PNG at ``path`` (any ``epath``) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_line_plot(path: epath.Path, series: Mapping, **kwargs: Any) -> None:
    """``jaxcomp.train.plot_lines`` written to ``path`` (any ``epath``)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = plot_lines(os.path.join(tmp, "plot.png"), series, **kwargs)
        data = epath.Path(local).read_bytes()
    write_bytes_atomic(path, data)


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


# Fields that never change what a run trains (how often it saves and logs).
BOOKKEEPING = frozenset({"ckpt_every", "log_every", "progress", "force_resume"})


def training_config(cfg: Any, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """``cfg`` as a dict without the fields that do not change what is trained: ``BOOKKEEPING``
    and ``ignore`` (evaluation settings, which rows / seeds / methods this process runs). Passed
    to ``fit(config=...)``, it is the identity a resume must match, so a second process that only
    evaluates, or runs other rows, resumes the same checkpoints."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    skip = BOOKKEEPING | set(ignore)
    return {k: v for k, v in d.items() if k not in skip}


def own(tree: Any) -> Any:
    """Private copies of a tree's arrays. ``make_train_step`` donates params and model state, which
    deletes their buffers; arrays still shared with another module (a teacher, a frozen CLIP
    reused by the next run) must be copied before they go into ``fit``."""
    return jax.tree.map(jnp.copy, tree)


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
    trained in several calls). ``ckpt_every <= 0`` checkpoints only at the
    end. ``config`` is the stage's identity: a rerun under another config is refused naming the
    differing fields (unless its ``force_resume`` is set). Returns ``fit``'s outputs; the history
    is that of the whole stage, including steps an earlier, resumed run logged."""
    stage_dir = workdir_path(epath.Path(workdir) / stage)
    if not quiet:
        announce(
            f"{stage}: compiling the train step, then training to step {num_steps} (-> {stage_dir})"
        )
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
        config=config,
        force_resume=bool(config.get("force_resume", False)) if config is not None else False,
    )
    return params, model_state, opt_state, history


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
