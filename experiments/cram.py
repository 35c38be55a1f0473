"""CrAM one-shot pruning experiment (Peste et al., ICLR 2023, Sec. 4 / Table 1).

Trains the same model with dense SGD and with CrAM+-Multi (or CrAM+-N:M) under the same budget,
then prunes each one-shot (global magnitude at several sparsities and 2:4), recalibrates BatchNorm
and reports accuracy before/after as a table, JSON and a PNG plot. Optionally (the baselines the
paper compares with):

* ``"gmp"`` in ``config.optimizers``: gradual magnitude pruning (Zhu & Gupta; the same SGD, cubic
  schedule, :func:`jaxcomp.optim.gmp`) to each of ``config.gmp_sparsities``, trained for the
  steps of the others plus ``config.finetune_steps`` (equal total steps with "one-shot + sparse
  fine-tune");
* ``config.finetune_steps > 0``: every dense model pruned one-shot at
  ``config.finetune_sparsities`` is fine-tuned that many steps with its mask fixed
  (:func:`jaxcomp.optim.sparse_finetune`, the reference's ``--train_sparse``; BatchNorm
  statistics move with training), and tested.

    python -m experiments.cram --config=experiments/configs/cram_mnist.py --workdir=runs/cram
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
from jaxcomp.data import augment_crop_flip, batches, load_classification
from jaxcomp.models import build_classifier
from jaxcomp.optim import gmp, sparse_finetune
from jaxcomp.pruning import one_shot, sparsity_report
from jaxcomp.train import evaluate
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
    "optimizers": each(("sgd", "cram", "cram_plus", "cram_plus_multi", "cram_plus_nm", "gmp")),
    "rho": ">=0",
    "sparsities": each("[0,1)"),
    "compression": ("global", "layer", "nm"),
    "eval_sparsities": each("[0,1)", allow_empty=True),
    "eval_nm": each(_nm_pattern, allow_empty=True),
    "shortcut": ("A", "B"),
    "calibration_images": "int>=1",
    "bn_mode": ("ema", "average"),
    "bn_iterations": "int>=1",
    "gmp_sparsities": each("(0,1)"),
    "gmp_distribution": ("global", "uniform", "erk"),
    "gmp_begin_epoch": "int>=0",
    "gmp_end_fraction": "(0,1]",
    "gmp_update_every": "int>=1",
    "finetune_steps": "int>=0",
    "finetune_lr": ">0",
    "finetune_sparsities": each("[0,1)", allow_empty=True),
    "ckpt_every": "int>=0",
    "seed": "int>=0",
}


def _gmp_name(s: float) -> str:
    return f"gmp{100 * s:g}"


def run(cfg, workdir: str, progress: bool = True) -> dict:
    check_config(cfg, CONFIG_RULES)
    if "gmp" in cfg.optimizers and cfg.gmp_begin_epoch >= cfg.epochs:
        raise ValueError(
            f"config.gmp_begin_epoch must be < config.epochs ({cfg.epochs}), got "
            f"{cfg.gmp_begin_epoch}"
        )
    workdir = workdir_path(workdir)
    announce(f"loading {cfg.dataset}")
    data_dir = cfg.data_dir or None
    x, y = load_classification(cfg.dataset, "train", data_dir=data_dir)
    test = load_classification(cfg.dataset, cfg.test_split, data_dir=data_dir)
    steps_per_epoch = len(x) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"config.batch_size {cfg.batch_size} exceeds the {len(x)} training images")
    total = cfg.epochs * steps_per_epoch
    ft = cfg.finetune_steps
    results = {"config": cfg.to_dict(), "runs": {}}

    def sgd(steps, warmup=cfg.warmup_epochs * steps_per_epoch, lr=cfg.learning_rate):
        return sgd_cosine(
            lr, steps, warmup_steps=warmup, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    # Build every optimizer first: a bad hyperparameter fails before any training.
    txs, steps = {}, {}
    for name in cfg.optimizers:
        if name == "gmp":
            continue
        txs[name], steps[name] = (
            make_optimizer(
                name,
                sgd(total),
                rho=cfg.rho,
                sparsities=tuple(cfg.sparsities),
                compression=cfg.compression,
                seed=cfg.seed,
            ),
            total,
        )
    if "gmp" in cfg.optimizers:
        # as many steps as a model trained `total` steps and then sparse fine-tuned `ft` steps
        begin, dt = cfg.gmp_begin_epoch * steps_per_epoch, cfg.gmp_update_every
        end = begin + max((int(cfg.gmp_end_fraction * (total + ft)) - begin) // dt, 1) * dt
        if end > total + ft:
            raise ValueError(
                f"config.gmp_update_every {dt} leaves no pruning step between step {begin} and "
                f"the last step {total + ft}"
            )
        for s in cfg.gmp_sparsities:
            name = _gmp_name(s)
            txs[name] = gmp(
                sgd(total + ft),
                final_sparsity=s,
                begin_step=begin,
                end_step=end,
                update_every=dt,
                distribution=cfg.gmp_distribution,
            )
            steps[name] = total + ft

    def train(name, model, tx, num_steps, seed):
        return train_classifier(
            model,
            tx,
            x,
            y,
            batch_size=cfg.batch_size,
            num_steps=num_steps,
            seed=seed,
            augment=cfg.augment or None,
            workdir=workdir / name,
            ckpt_every=cfg.ckpt_every or steps_per_epoch,
            log_every=min(steps_per_epoch, 50),
            progress=progress,
            desc=name,
            config=cfg,
            force_resume=cfg.get("force_resume", False),
        )

    def test_accuracy(eval_graphdef, params, state) -> dict:
        res = evaluate(eval_graphdef, params, state, batches(*test, 500, shuffle=False))
        return {"sparsity": sparsity_report(params)["global"], **res}

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
        announce(
            f"{name}: building {cfg.model}, compiling the train step, then {steps[name]} steps"
        )
        graphdef, eval_graphdef, params, state, history = train(
            name, model, tx, steps[name], cfg.seed
        )
        if name.startswith("gmp"):
            row = {"compression": name, "steps": steps[name]}
            row.update(test_accuracy(eval_graphdef, params, state))
            results["runs"][name] = {"gmp": row, "history": history}
            continue
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
        for s in cfg.finetune_sparsities if ft else ():
            pruned, mask = one_shot(params, s)
            tuned = nnx.merge(graphdef, *jax.tree.map(jnp.copy, (pruned, state)))
            ftx = sparse_finetune(sgd(ft, warmup=0, lr=cfg.finetune_lr), mask)
            stage = f"{name}_sparse{100 * s:g}"
            announce(f"{stage}: one-shot {s:.0%}, then {ft} steps with the mask fixed")
            _, eg, p2, st2, h2 = train(stage, tuned, ftx, ft, cfg.seed + 1)
            row = {"compression": f"global {s:.0%} + sparse fine-tune", "steps": ft}
            row.update(test_accuracy(eg, p2, st2))
            results["runs"][name].setdefault("sparse_finetune", []).append(row)
    sweeps = {n: r["one_shot"] for n, r in results["runs"].items() if "one_shot" in r}
    table = rows_to_markdown(sweeps) if sweeps else ""
    extra = [
        f"| {row['compression']} ({n}) | {row['sparsity']:.3f} | {row['steps']} | "
        f"{row['accuracy']:.3f} |"
        for n, r in results["runs"].items()
        for row in ([r["gmp"]] if "gmp" in r else r.get("sparse_finetune", []))
    ]
    if extra:
        table += "\n\n| model | sparsity | steps | accuracy |\n|---|---|---|---|\n" + "\n".join(
            extra
        )
    results["table"] = table
    results["summary"] = [
        {
            "optimizer": n,
            **{
                row["compression"]: row["accuracy"]
                for row in r.get("one_shot", []) + r.get("sparse_finetune", [])
            },
            **({r["gmp"]["compression"]: r["gmp"]["accuracy"]} if "gmp" in r else {}),
        }
        for n, r in results["runs"].items()
    ]
    write_json_atomic(workdir / "results.json", results)
    series = {
        n: (
            [row["sparsity"] * 100 for row in rows if ":" not in row["compression"]],
            [row["accuracy"] for row in rows if ":" not in row["compression"]],
        )
        for n, rows in sweeps.items()
    }
    if series:
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
