"""Metrics to JSONL, a progress bar, and PNG curves."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath


def to_float(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device scalars -> Python floats (one transfer for the whole dict)."""
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


class MetricsWriter:
    """Appends one JSON object per call to ``<workdir>/<name>.jsonl`` (only on process 0); for
    evaluation logs next to ``fit``'s ``metrics.jsonl``. ``workdir`` may be any ``epath``."""

    def __init__(self, workdir: str | os.PathLike, name: str = "metrics"):
        self.path = epath.Path(workdir) / f"{name}.jsonl"
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: Mapping[str, Any], **extra: Any) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **to_float(metrics), **extra}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSONL file (blank lines skipped)."""
    return [json.loads(line) for line in epath.Path(path).read_text().splitlines() if line.strip()]


class Progress:
    """tqdm bar with loss / accuracy / examples-per-second on long runs (process 0 only)."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train", batch_size: int = 1):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        self.batch_size = batch_size
        self._t = time.perf_counter()
        self._n = 0

    def update(self, n: int = 1, metrics: Mapping[str, float] | None = None) -> None:
        self._n += n
        if metrics is not None:
            dt = time.perf_counter() - self._t
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "accuracy")}
            shown["ex/s"] = f"{self._n * self.batch_size / max(dt, 1e-9):.0f}"
            self.bar.set_postfix(shown)
            self._t, self._n = time.perf_counter(), 0
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def plot_lines(
    path: str | os.PathLike,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> str:
    """Save a PNG with one line per ``name -> (xs, ys)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (xs, ys) in series.items():
        ax.plot(np.asarray(xs), np.asarray(ys), marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return os.fspath(path)
