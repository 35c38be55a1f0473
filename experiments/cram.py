"""CrAM one-shot pruning experiment (Peste et al., ICLR 2023, Sec. 4 / Table 1).

Trains the same model with dense SGD and with CrAM+-Multi under the same budget, then prunes
each one-shot (global magnitude at several sparsities and 2:4), recalibrates BatchNorm and
reports accuracy before/after as a table, JSON and a PNG plot.

    python -m experiments.cram --config=experiments/configs/cram_mnist.py --workdir=runs/cram
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from jaxcomp.data import load_classification
from jaxcomp.models import build_classifier
from jaxcomp.train import initialize_distributed, plot_lines
from jaxcomp.train.recipes import (
    make_optimizer,
    one_shot_sweep,
    rows_to_markdown,
    sgd_cosine,
    train_classifier,
)

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/cram_mnist.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/cram", "output directory")


def run(cfg, workdir: str, progress: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    data_dir = cfg.data_dir or None
    x, y = load_classification(cfg.dataset, "train", data_dir=data_dir)
    test = load_classification(cfg.dataset, cfg.test_split, data_dir=data_dir)
    steps_per_epoch = len(x) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    results = {"config": cfg.to_dict(), "runs": {}}
    for name in cfg.optimizers:
        base = sgd_cosine(
            cfg.learning_rate,
            total,
            warmup_steps=cfg.warmup_epochs * steps_per_epoch,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        tx = make_optimizer(
            name,
            base,
            rho=cfg.rho,
            sparsities=tuple(cfg.sparsities),
            compression=cfg.compression,
            seed=cfg.seed,
        )
        model = build_classifier(
            cfg.model,
            cfg.num_classes,
            in_channels=x.shape[-1],
            input_hw=x.shape[1:3],
            batch_norm=cfg.batch_norm,
            rngs=nnx.Rngs(cfg.seed),
        )
        graphdef, eval_graphdef, params, state, history = train_classifier(
            model,
            tx,
            x,
            y,
            batch_size=cfg.batch_size,
            num_steps=total,
            seed=cfg.seed,
            augment=cfg.augment or None,
            workdir=os.path.join(workdir, name),
            ckpt_every=cfg.ckpt_every,
            log_every=steps_per_epoch,
            progress=progress,
            desc=name,
        )
        rows = one_shot_sweep(
            graphdef,
            eval_graphdef,
            params,
            state,
            test,
            (x, y),
            sparsities=tuple(cfg.eval_sparsities),
            nm=tuple(tuple(p) for p in cfg.eval_nm),
            calibration_images=cfg.calibration_images,
            seed=cfg.seed,
        )
        results["runs"][name] = {"one_shot": rows, "history": history}
    table = rows_to_markdown({n: r["one_shot"] for n, r in results["runs"].items()})
    results["table"] = table
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    series = {
        n: (
            [row["sparsity"] * 100 for row in r["one_shot"] if ":" not in row["compression"]],
            [row["accuracy"] for row in r["one_shot"] if ":" not in row["compression"]],
        )
        for n, r in results["runs"].items()
    }
    plot_lines(
        os.path.join(workdir, "accuracy_vs_sparsity.png"),
        series,
        xlabel="one-shot global sparsity (%)",
        ylabel="test accuracy (after BN reset)",
        title=f"{cfg.model} on {cfg.dataset}: one-shot pruning",
    )
    return results


def main(argv):
    del argv
    initialize_distributed()
    results = run(_CONFIG.value, _WORKDIR.value)
    print(results["table"])


if __name__ == "__main__":
    app.run(main)
