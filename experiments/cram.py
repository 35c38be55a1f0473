"""CrAM one-shot pruning experiment (Peste et al., ICLR 2023, Sec. 4 / Table 1).

Trains the same model with dense SGD and with CrAM+-Multi under the same budget, then prunes
each one-shot (global magnitude at several sparsities and 2:4), recalibrates BatchNorm and
reports accuracy before/after as a table, JSON and a PNG plot.

    python -m experiments.cram --config=experiments/configs/cram_mnist.py --workdir=runs/cram
"""

from __future__ import annotations

from flax import nnx

from experiments._harness import (
    announce,
    check_config,
    cli,
    each,
    workdir_path,
    write_json_atomic,
    write_line_plot,
)
from jaxcomp.data import augment_crop_flip, load_classification
from jaxcomp.models import build_classifier
from jaxcomp.train.recipes import (
    make_optimizer,
    one_shot_sweep,
    rows_to_markdown,
    sgd_cosine,
    train_classifier,
)

DEFAULT_CONFIG = "experiments/configs/cram_mnist.py"
DEFAULT_WORKDIR = "runs/cram"


def _nm_pattern(v) -> str | None:
    ok = (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(k, int) and not isinstance(k, bool) for k in v)
        and 1 <= v[0] <= v[1]
    )
    return None if ok else "must be an (n, m) pair of ints with 1 <= n <= m"


# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "num_classes": "int>=1",
    "model": ("smallcnn", "resnet20", "resnet18", "resnet50"),
    "batch_size": "int>=1",
    "epochs": "int>=1",
    "learning_rate": ">0",
    "momentum": "[0,1)",
    "weight_decay": ">=0",
    "warmup_epochs": "int>=0",
    "augment": ("", "crop_flip"),
    "optimizers": each(("sgd", "cram", "cram_plus", "cram_plus_multi")),
    "rho": ">=0",
    "sparsities": each("[0,1)"),
    "compression": ("global", "layer", "nm"),
    "eval_sparsities": each("[0,1)", allow_empty=True),
    "eval_nm": each(_nm_pattern, allow_empty=True),
    "shortcut": ("A", "B"),
    "calibration_images": "int>=1",
    "bn_mode": ("ema", "average"),
    "bn_iterations": "int>=1",
    "ckpt_every": "int>=0",
    "seed": "int>=0",
}


def run(cfg, workdir: str, progress: bool = True) -> dict:
    check_config(cfg, CONFIG_RULES)
    workdir = workdir_path(workdir)
    announce(f"loading {cfg.dataset}")
    data_dir = cfg.data_dir or None
    x, y = load_classification(cfg.dataset, "train", data_dir=data_dir)
    test = load_classification(cfg.dataset, cfg.test_split, data_dir=data_dir)
    steps_per_epoch = len(x) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"config.batch_size {cfg.batch_size} exceeds the {len(x)} training images")
    total = cfg.epochs * steps_per_epoch
    results = {"config": cfg.to_dict(), "runs": {}}
    # Build every optimizer first: a bad hyperparameter fails before any training.
    txs = {}
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
        txs[name] = tx
    for name, tx in txs.items():
        model = build_classifier(
            cfg.model,
            cfg.num_classes,
            in_channels=x.shape[-1],
            input_hw=x.shape[1:3],
            batch_norm=cfg.batch_norm,
            shortcut=cfg.shortcut,
            rngs=nnx.Rngs(cfg.seed),
        )
        announce(f"{name}: building {cfg.model}, compiling the train step, then {total} steps")
        graphdef, eval_graphdef, params, state, history = train_classifier(
            model,
            tx,
            x,
            y,
            batch_size=cfg.batch_size,
            num_steps=total,
            seed=cfg.seed,
            augment=cfg.augment or None,
            workdir=workdir / name,
            ckpt_every=cfg.ckpt_every or steps_per_epoch,
            log_every=min(steps_per_epoch, 50),
            progress=progress,
            desc=name,
            config=cfg,
            force_resume=cfg.get("force_resume", False),
        )
        announce(f"{name}: one-shot pruning sweep (BatchNorm reset and test at each level)")
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
            bn_mode=cfg.bn_mode,
            bn_iterations=cfg.bn_iterations,
            # CrAM's calibration loader uses the training augmentation (4-pixel shift + flip)
            bn_augment=augment_crop_flip if cfg.bn_augment else None,
            seed=cfg.seed,
        )
        results["runs"][name] = {"one_shot": rows, "history": history}
    table = rows_to_markdown({n: r["one_shot"] for n, r in results["runs"].items()})
    results["table"] = table
    results["summary"] = [
        {"optimizer": n, **{row["compression"]: row["accuracy"] for row in r["one_shot"]}}
        for n, r in results["runs"].items()
    ]
    write_json_atomic(workdir / "results.json", results)
    series = {
        n: (
            [row["sparsity"] * 100 for row in r["one_shot"] if ":" not in row["compression"]],
            [row["accuracy"] for row in r["one_shot"] if ":" not in row["compression"]],
        )
        for n, r in results["runs"].items()
    }
    write_line_plot(
        workdir / "accuracy_vs_sparsity.png",
        series,
        xlabel="one-shot global sparsity (%)",
        ylabel="test accuracy (after BN reset)",
        title=f"{cfg.model} on {cfg.dataset}: one-shot pruning",
    )
    print(table)
    return results


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
