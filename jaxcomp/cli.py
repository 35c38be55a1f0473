"""The ``jaxcomp`` command.

    jaxcomp --version
    jaxcomp demo [--epochs 4] [--workdir runs/demo]
    jaxcomp list                                   the experiments and their default configs
    jaxcomp run EXPERIMENT [--config PATH] [--config.FIELD=VALUE ...] [--workdir DIR]
    jaxcomp results WORKDIR [WORKDIR ...]          results of several runs as one markdown table

``demo`` is a short version of ``experiments/cram.py`` on the bundled MNIST-5k digits: it trains
the same CNN with dense SGD and with CrAM+-Multi, prunes both one-shot up to 99% sparsity (and
2:4) with BatchNorm recalibration, and prints the accuracy table (minutes on 2 CPU cores).

``run`` calls ``experiments/<EXPERIMENT>.py`` (from the repository root) with its default
config and ``runs/<EXPERIMENT>`` unless told otherwise; every ``--config.FIELD=VALUE`` override of
ml_collections works. ``results`` reads each workdir's ``results.json`` and renders its
``summary`` (a dict of scalars, or a list of such rows) as one table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from etils import epath


def demo(epochs: int, workdir: str, seed: int) -> str:
    from flax import nnx

    from jaxcomp.data import load_mnist5k
    from jaxcomp.models import SmallCNN
    from jaxcomp.train import plot_lines
    from jaxcomp.train.recipes import (
        make_optimizer,
        one_shot_sweep,
        rows_to_markdown,
        sgd_cosine,
        train_classifier,
    )
    from jaxcomp.train.workdir import write_json_atomic

    out = epath.Path(workdir)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"jaxcomp demo: --workdir {workdir} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    (x, y), test = load_mnist5k("train"), load_mnist5k("test")
    batch = 128
    total = epochs * (len(x) // batch)
    print(f"MNIST-5k: {len(x)} train / {len(test[0])} test digits; {epochs} epochs per optimizer")
    columns = {}
    for name in ("sgd", "cram_plus_multi"):
        base = sgd_cosine(0.05, total, warmup_steps=len(x) // batch, weight_decay=5e-4)
        tx = make_optimizer(name, base, rho=0.1, sparsities=(0.8, 0.9, 0.95, 0.98), seed=seed)
        model = SmallCNN(10, in_channels=1, rngs=nnx.Rngs(seed))
        g, ge, params, state, _ = train_classifier(
            model, tx, x, y, batch_size=batch, num_steps=total, seed=seed, log_every=20, desc=name
        )
        print(f"[{name}] one-shot pruning sweep with BatchNorm reset ...", flush=True)
        columns[name] = one_shot_sweep(
            g,
            ge,
            params,
            state,
            test,
            (x, y),
            sparsities=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99),
            seed=seed,
        )
    table = rows_to_markdown(columns)
    write_json_atomic(out / "demo.json", columns)
    series = {
        n: (
            [r["sparsity"] * 100 for r in rows if ":" not in r["compression"]],
            [r["accuracy"] for r in rows if ":" not in r["compression"]],
        )
        for n, rows in columns.items()
    }
    png = plot_lines(
        os.fspath(out / "demo.png"),
        series,
        xlabel="one-shot sparsity (%)",
        ylabel="test accuracy",
        title="MNIST-5k: SGD vs CrAM+-Multi",
    )
    print("\nOne-shot global magnitude pruning + BatchNorm reset (test accuracy):\n")
    print(table)
    print(f"\nwrote {out / 'demo.json'} and {png}")
    return table


def _experiments_dir() -> epath.Path:
    return epath.Path(os.getcwd()) / "experiments"


def list_experiments() -> dict[str, str]:
    """``{name: default config path}`` of the experiment scripts under ``./experiments``."""
    d = _experiments_dir()
    if not d.is_dir():
        raise SystemExit(
            "jaxcomp: no experiments/ folder here; run `jaxcomp list` / `jaxcomp run` from the "
            "repository root"
        )
    out = {}
    for f in sorted(d.glob("*.py")):
        if f.name.startswith("_"):
            continue
        text = f.read_text()
        if "def run(" not in text:
            continue
        default = f"experiments/configs/{f.stem}.py"
        for line in text.splitlines():
            if line.startswith("DEFAULT_CONFIG"):
                default = line.split("=", 1)[1].strip().strip("\"'")
        out[f.stem] = default
    return out


def run_experiment(name: str, argv: list[str]) -> int:
    known = list_experiments()
    if name not in known:
        raise SystemExit(f"jaxcomp run: unknown experiment {name!r}; known: {', '.join(known)}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(f"experiments.{name}")
    harness = importlib.import_module("experiments._harness")
    default_workdir = getattr(module, "DEFAULT_WORKDIR", f"runs/{name}")
    sys.argv = [f"jaxcomp run {name}", *argv]
    try:
        harness.cli(module.run, known[name], default_workdir)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def results_table(workdirs: list[str]) -> str:
    """One markdown table from the ``summary`` of each workdir's ``results.json``: a row per
    workdir (or per row when the summary is a list), a column per field."""
    from jaxcomp.train.workdir import flatten_dict

    rows: list[dict[str, Any]] = []
    for w in workdirs:
        path = epath.Path(w) / "results.json"
        if not path.exists():
            raise SystemExit(f"jaxcomp results: {path} not found")
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"jaxcomp results: {path} is not valid JSON ({e})") from None
        summary = res.get("summary")
        if summary is None:  # fall back to the top-level scalars
            summary = {k: v for k, v in res.items() if isinstance(v, (int, float, str))}
        for r in summary if isinstance(summary, list) else [summary]:
            rows.append({"run": os.fspath(w), **flatten_dict(r)})
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxcomp")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="jaxcomp",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jaxcomp {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="CrAM vs SGD one-shot pruning on the bundled MNIST-5k")
    d.add_argument("--epochs", type=int, default=4, help="training epochs per optimizer (>= 1)")
    d.add_argument("--workdir", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--seed", type=int, default=0, help="model and data seed")
    sub.add_parser("list", help="list the experiments and their default configs")
    r = sub.add_parser(
        "run",
        help="run an experiment: jaxcomp run NAME [--config PATH] [--config.FIELD=V] [--workdir D]",
    )
    r.add_argument("experiment", help="experiment name (see `jaxcomp list`)")
    s = sub.add_parser("results", help="render the results.json of several runs as one table")
    s.add_argument("workdirs", nargs="+", help="run directories holding results.json")
    args, rest = parser.parse_known_args(argv)
    if args.command != "run" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        if args.epochs < 1:
            parser.error(f"--epochs must be >= 1, got {args.epochs}")
        demo(args.epochs, args.workdir, args.seed)
    elif args.command == "list":
        for name, cfg in list_experiments().items():
            print(f"{name:16s} {cfg}")
    elif args.command == "run":
        return run_experiment(args.experiment, rest)
    elif args.command == "results":
        print(results_table(args.workdirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
