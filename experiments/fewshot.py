"""FewSAR few-shot benchmark (Sun et al., "FewSAR: A Few-shot SAR Image Classification
Benchmark", 2023): one backbone, one protocol, the same test episodes for every method.

For each data set and method: train (episodically, or by base-class pretraining for Baseline /
Baseline++), keep the epoch with the best validation accuracy, test 5-way K-shot on the fixed
test episodes, and write one row (accuracy, 95% CI, train time, test time per episode) to
``workdir/<dataset>/<method>/<K>shot.json``. Every invocation then rebuilds
``workdir/results.json``, ``workdir/results.md`` and ``workdir/accuracy_vs_train_time.png``
from all rows present, so methods can run in separate processes.

    python -m experiments.fewshot --config=experiments/configs/fewshot.py \
        --config.method=protonet --workdir=runs/fewshot
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from etils import epath
from flax import nnx

from experiments._harness import (
    check_config,
    cli,
    each,
    training_config,
    workdir_path,
    write_figure,
    write_json_atomic,
    write_text_atomic,
)
from jaxcomp.data import load_fashion_mnist, render_glyphs, split_by_script
from jaxcomp.data.folders import load_mstar
from jaxcomp.fewshot import REGISTRY, build_method, check_disjoint, method_names
from jaxcomp.fewshot import test as fs_test
from jaxcomp.fewshot import train as fs_train
from jaxcomp.train.workdir import is_local

DEFAULT_CONFIG = "experiments/configs/fewshot.py"
DEFAULT_WORKDIR = "runs/fewshot"

DATASET_LABELS = {
    "glyphs": "Glyphs",
    "glyphs_sar": "Glyphs-SAR",
    "glyphs_small": "Glyphs (small)",
    "fashion_mnist": "Fashion-MNIST 5/5",
    "mstar": "MSTAR",
}


# Which methods / data sets / shots this process runs, and the test protocol: not part of a
# training run's identity (a rerun with other test settings reuses the trained models).
_NOT_TRAINING = (
    "method", "datasets", "shots", "test_episodes", "test_query", "test_seed", "cache_dir",
    "image_test_episodes",
)  # fmt: skip


def parse_methods(method: str) -> tuple[str, ...]:
    """``config.method``: a registered name, a comma-separated list of them, or ``"all"``."""
    if method == "all":
        return method_names()
    return tuple(m.strip() for m in method.split(",") if m.strip())


def _method_rule(v) -> str | None:
    ok = isinstance(v, str) and bool(parse_methods(v))
    ok = ok and all(m in REGISTRY for m in parse_methods(v))
    return None if ok else f"must be 'all' or comma-separated names from {sorted(REGISTRY)}"


# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "method": _method_rule,
    "datasets": each(tuple(DATASET_LABELS)),
    "image_size": "int>=1",
    "backbone": ("conv64f", "resnet12"),
    "width": "int>=1",
    "way": "int>=1",
    "shots": each("int>=1"),
    "train_shot": "int>=0",  # 0: one model per test shot
    "train_query": "int>=1",
    "test_query": "int>=1",
    "test_episodes": "int>=1",
    "image_test_episodes": "int>=0",
    "val_episodes": "int>=1",
    "val_query": "int>=1",
    "episodes_per_epoch": "int>=1",
    "epochs": "int>=1",
    "batch_size": "int>=1",
    "lr": ">0",
    "lr_step_epochs": "int>=1",
    "lr_gamma": "(0,1]",
    "relation_loss": ("ce", "mse"),
    "seed": "int>=0",
    "test_seed": "int>=0",
    "fashion_val_per_class": "int>=1",
}


def load_data(name: str, cfg, workdir: epath.Path) -> dict:
    """``{"base": (x, y), "val": (x, y) | None, "novel": (x, y)}`` for data set ``name``."""
    cache = cfg.cache_dir or epath.Path(workdir) / "cache"
    if name in ("glyphs", "glyphs_sar", "glyphs_small"):
        kw = {}
        if name == "glyphs_small":
            kw = dict(scripts=("latin", "greek", "armenian"), per_class=12)
            split = {"base": ("latin",), "val": ("greek",), "novel": ("armenian",)}
        else:
            from jaxcomp.data.glyphs import DEFAULT_SPLIT as split
        data = render_glyphs(
            cache, image_size=cfg.image_size, sar=name == "glyphs_sar", seed=cfg.seed, **kw
        )
        parts = split_by_script(data, split)
        check_disjoint(base=parts["base"][1], val=parts["val"][1], novel=parts["novel"][1])
        return parts
    if name == "fashion_mnist":
        xtr, ytr = load_fashion_mnist("train", data_dir=cfg.fashion_dir or None)
        xte, yte = load_fashion_mnist("test", data_dir=cfg.fashion_dir or None)
        if cfg.image_size != 28:
            raise ValueError(f"fashion_mnist is 28x28; set image_size=28, got {cfg.image_size}")
        base, novel = np.arange(5), np.arange(5, 10)
        val_idx = np.concatenate([np.where(yte == c)[0][: cfg.fashion_val_per_class] for c in base])
        parts = {
            "base": (xtr[np.isin(ytr, base)], ytr[np.isin(ytr, base)]),
            # validation: held-out test-split images of the base classes (only 10 classes)
            "val": (xte[val_idx], yte[val_idx]),
            "novel": (xte[np.isin(yte, novel)], yte[np.isin(yte, novel)]),
        }
        check_disjoint(base=parts["base"][1], novel=parts["novel"][1])
        return parts
    if name == "mstar":
        if not cfg.mstar_root:
            raise ValueError("dataset 'mstar' needs config.mstar_root (root/<CLASS>/*)")
        parts = load_mstar(cfg.mstar_root, split=cfg.mstar_split or None, image_size=cfg.image_size)
        if len(parts["val"][1]) == 0:
            parts["val"] = None
        return parts
    raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASET_LABELS)}")


def run_method(method: str, dataset: str, data: dict, cfg, workdir: epath.Path) -> list[dict]:
    """Train ``method`` on ``data`` and test it at every shot of ``cfg.shots``; one row each."""
    out_dir = epath.Path(workdir) / dataset / method
    todo = [k for k in cfg.shots if not (out_dir / f"{k}shot.json").exists()]
    if todo and not _lock(out_dir):
        print(f"[{dataset}/{method}] running in another process; skipped", flush=True)
        return []
    try:
        return _run_method(method, dataset, data, cfg, out_dir, todo)
    finally:
        if todo and is_local(out_dir):
            os.remove(out_dir / ".lock")


def _lock(out_dir: epath.Path) -> bool:
    """Take ``out_dir/.lock`` (holding our pid) unless a live process holds it. The lock is a
    local-filesystem mechanism (``O_EXCL``, pids): on an object store (``gs://``) there is none
    and every process runs its cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not is_local(out_dir):
        return True
    path = os.fspath(out_dir / ".lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
                return False  # held by a live process
            except PermissionError:
                return False  # alive, another user's
            except (ValueError, ProcessLookupError):
                os.remove(path)  # stale
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def _run_method(method, dataset, data, cfg, out_dir, todo) -> list[dict]:
    rows = []
    train_shots = sorted({cfg.train_shot or k for k in todo})
    for ts in train_shots:
        x, y = data["base"]
        model = build_method(
            method,
            in_channels=x.shape[-1],
            image_hw=x.shape[1:3],
            num_base_classes=len(np.unique(y)),
            rngs=nnx.Rngs(cfg.seed),
            backbone=cfg.backbone,
            width=cfg.width,
            **({"loss": cfg.relation_loss} if method == "relationnet" else {}),
            **({"way": cfg.way} if REGISTRY[method].family == "meta" else {}),
        )
        print(f"[{dataset}/{method}] training ({model.training}, {ts}-shot episodes)", flush=True)
        trained = fs_train(
            model,
            x,
            y,
            workdir=out_dir / f"train_{ts}shot",
            config=training_config(cfg, _NOT_TRAINING),
            way=cfg.way,
            shot=ts,
            query=cfg.train_query,
            episodes_per_epoch=cfg.episodes_per_epoch,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            lr_step_epochs=cfg.lr_step_epochs,
            lr_gamma=cfg.lr_gamma,
            val=data["val"],
            val_episodes=cfg.val_episodes,
            val_query=cfg.val_query,
            seed=cfg.seed,
        )
        episodes = cfg.test_episodes
        if model.test_on == "images" and cfg.image_test_episodes:
            episodes = min(episodes, cfg.image_test_episodes)
        for k in todo:
            if (cfg.train_shot or k) != ts:
                continue
            print(f"[{dataset}/{method}] testing 5-way {k}-shot, {episodes} episodes", flush=True)
            res = fs_test(
                trained,
                *data["novel"],
                way=cfg.way,
                shot=k,
                query=cfg.test_query,
                num_episodes=episodes,
                seed=cfg.test_seed,
            )
            row = {
                "dataset": dataset,
                "method": method,
                "family": REGISTRY[method].family,
                "shot": int(k),
                "train_shot": int(ts),
                "accuracy": res["accuracy"],
                "ci95": res["ci95"],
                "episodes": res["episodes"],
                "train_time_s": trained["train_time_s"],
                "test_ms_per_episode": res["test_ms_per_episode"],
                "best_epoch": trained["history"].get("best_epoch"),
                "epochs": cfg.epochs,
                "load_average": list(os.getloadavg()),
            }
            with (out_dir / f"{k}shot_episode_acc.npy").open("wb") as f:
                np.save(f, np.asarray(res["episode_accuracies"], np.float32))
            write_json_atomic(out_dir / f"{k}shot.json", row)
            print(
                f"[{dataset}/{method}] {k}-shot: {100 * row['accuracy']:.2f} +- "
                f"{100 * row['ci95']:.2f} (train {row['train_time_s']:.0f}s, "
                f"test {row['test_ms_per_episode']:.1f} ms/episode)",
                flush=True,
            )
            rows.append(row)
    return rows


def _row_files(workdir: epath.Path) -> list[epath.Path]:
    """``workdir/<dataset>/<method>/<K>shot.json`` in path order (hidden entries skipped, as
    ``glob.glob`` did); listed level by level, which every ``epath`` backend supports alike."""

    def subdirs(d):
        return [p for p in d.iterdir() if not p.name.startswith(".") and p.is_dir()]

    files = [
        f
        for d in subdirs(workdir)
        for m in subdirs(d)
        for f in m.iterdir()
        if f.name.endswith("shot.json") and not f.name.startswith(".")
    ]
    return sorted(files, key=str)


def summarize(workdir: epath.Path, cfg) -> dict:
    """Collect every row under ``workdir`` into results.json / results.md / a PNG."""
    workdir = epath.Path(workdir)
    rows = [json.loads(p.read_text()) for p in _row_files(workdir)]
    datasets = [d for d in DATASET_LABELS if any(r["dataset"] == d for r in rows)]
    order = [m for m in method_names() if any(r["method"] == m for r in rows)]
    shots = sorted({r["shot"] for r in rows})
    cell = {(r["dataset"], r["method"], r["shot"]): r for r in rows}
    head = (
        "| method | "
        + " | ".join(f"{DATASET_LABELS[d]} {k}-shot" for d in datasets for k in shots)
        + " |"
    )
    lines = [head, "|---" * (1 + len(datasets) * len(shots)) + "|"]
    for m in order:
        vals = []
        for d in datasets:
            for k in shots:
                r = cell.get((d, m, k))
                vals.append(f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}" if r else "–")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    table = "\n".join(lines)
    rt = [
        "| method | "
        + " | ".join(f"{DATASET_LABELS[d]} train s" for d in datasets)
        + " | test ms/episode (1-shot / 5-shot) |",
        "|---" * (2 + len(datasets)) + "|",
    ]
    for m in order:
        tr = [cell.get((d, m, shots[0])) or cell.get((d, m, shots[-1])) for d in datasets]
        te = [
            np.mean([cell[(d, m, k)]["test_ms_per_episode"] for d in datasets if (d, m, k) in cell])
            if any((d, m, k) in cell for d in datasets)
            else float("nan")
            for k in shots
        ]
        rt.append(
            f"| {m} | "
            + " | ".join(f"{r['train_time_s']:.0f}" if r else "–" for r in tr)
            + " | "
            + " / ".join(f"{t:.1f}" for t in te)
            + " |"
        )
    runtime = "\n".join(rt)
    summary = {
        "config": cfg.to_dict(),
        "rows": rows,
        "table": table,
        "runtime_table": runtime,
        "note": "times measured on a shared 2-core CPU under parallel load",
    }
    write_json_atomic(workdir / "results.json", summary)
    write_text_atomic(workdir / "results.md", table + "\n\n" + runtime + "\n")
    if rows:
        plot(workdir, rows, datasets, shots)
    return summary


def plot(workdir: epath.Path, rows, datasets, shots) -> epath.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(shots),
        len(datasets),
        figsize=(4 * len(datasets), 3.4 * len(shots)),
        dpi=110,
        squeeze=False,
    )
    markers = {"metric": "o", "finetune": "s", "meta": "^"}
    for i, k in enumerate(shots):
        for j, d in enumerate(datasets):
            ax = axes[i][j]
            for r in rows:
                if r["dataset"] != d or r["shot"] != k:
                    continue
                ax.errorbar(
                    r["train_time_s"],
                    100 * r["accuracy"],
                    yerr=100 * r["ci95"],
                    marker=markers.get(r["family"], "o"),
                    ms=5,
                    capsize=2,
                )
                ax.annotate(
                    r["method"],
                    (r["train_time_s"], 100 * r["accuracy"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            ax.set_title(f"{DATASET_LABELS[d]}, 5-way {k}-shot", fontsize=9)
            ax.set_xlabel("training time (s)")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path = epath.Path(workdir) / "accuracy_vs_train_time.png"
    write_figure(path, fig)
    return path


def run(cfg, workdir: str) -> dict:
    check_config(cfg, CONFIG_RULES)
    if "fashion_mnist" in cfg.datasets and cfg.image_size != 28:
        raise ValueError(
            f"config.image_size must be 28 for fashion_mnist (28x28 images), got {cfg.image_size}"
        )
    if "mstar" in cfg.datasets and not cfg.mstar_root:
        raise ValueError("dataset 'mstar' needs config.mstar_root (root/<CLASS>/*)")
    methods = parse_methods(cfg.method)
    workdir = workdir_path(workdir)
    if is_local(workdir):  # the persistent compilation cache is a local directory
        jax.config.update("jax_compilation_cache_dir", os.fspath(workdir / ".jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    for dataset in cfg.datasets:
        t0 = time.perf_counter()
        print(f"[{dataset}] loading data", flush=True)
        data = load_data(dataset, cfg, workdir)
        print(
            f"[{dataset}] base {len(np.unique(data['base'][1]))} classes / "
            f"{len(data['base'][1])} images, novel {len(np.unique(data['novel'][1]))} classes / "
            f"{len(data['novel'][1])} images ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        for m in methods:
            run_method(m, dataset, data, cfg, workdir)
            summarize(workdir, cfg)
    results = summarize(workdir, cfg)
    print(results["table"])
    print()
    print(results["runtime_table"])
    return results


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
