"""The ``jaxcomp`` command.

    jaxcomp demo [--epochs 4] [--workdir runs/demo]

``demo`` is a short version of ``experiments/cram.py`` on the bundled MNIST-5k digits: it trains
the same CNN with dense SGD and with CrAM+-Multi, prunes both one-shot up to 99% sparsity (and
2:4) with BatchNorm recalibration, and prints the accuracy table (minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


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
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "demo.json"), "w") as f:
        json.dump(columns, f, indent=1)
    series = {
        n: (
            [r["sparsity"] * 100 for r in rows if ":" not in r["compression"]],
            [r["accuracy"] for r in rows if ":" not in r["compression"]],
        )
        for n, rows in columns.items()
    }
    png = plot_lines(
        os.path.join(workdir, "demo.png"),
        series,
        xlabel="one-shot sparsity (%)",
        ylabel="test accuracy",
        title="MNIST-5k: SGD vs CrAM+-Multi",
    )
    print("\nOne-shot global magnitude pruning + BatchNorm reset (test accuracy):\n")
    print(table)
    print(f"\nwrote {os.path.join(workdir, 'demo.json')} and {png}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxcomp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="CrAM vs SGD one-shot pruning on the bundled MNIST-5k")
    d.add_argument("--epochs", type=int, default=4)
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.epochs < 1:
            parser.error(f"--epochs must be >= 1, got {args.epochs}")
        demo(args.epochs, args.workdir, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
