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

from jaxcomp.data import load_mnist5k
from jaxcomp.data import tfds as jtfds
from jaxcomp.models import ResNet18, ResNet20, ResNet50, SmallCNN
from jaxcomp.train import plot_lines
from jaxcomp.train.recipes import (
    make_optimizer,
    one_shot_sweep,
    rows_to_markdown,
    sgd_cosine,
    train_classifier,
)

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/cram_mnist.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/cram", "output directory")


def load_data(cfg):
    if cfg.dataset == "mnist5k":
        return load_mnist5k("train"), load_mnist5k("test")
    return (
        jtfds.load(cfg.dataset, "train", cfg.data_dir),
        jtfds.load(cfg.dataset, cfg.test_split, cfg.data_dir),
    )


def build_model(cfg, in_channels, hw, seed):
    rngs = nnx.Rngs(seed)
    if cfg.model == "smallcnn":
        return SmallCNN(
            cfg.num_classes,
            in_channels=in_channels,
            batch_norm=cfg.batch_norm,
            input_hw=hw,
            rngs=rngs,
        )
    factory = {"resnet20": ResNet20, "resnet18": ResNet18, "resnet50": ResNet50}[cfg.model]
    return factory(cfg.num_classes, in_channels=in_channels, rngs=rngs)


def run(cfg, workdir: str, progress: bool = True) -> dict:
    os.makedirs(workdir, exist_ok=True)
    (x, y), test = load_data(cfg)
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
        model = build_model(cfg, x.shape[-1], x.shape[1:3], cfg.seed)
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
    results = run(_CONFIG.value, _WORKDIR.value)
    print(results["table"])


if __name__ == "__main__":
    app.run(main)
