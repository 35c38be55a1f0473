"""InDistill on Fashion-MNIST (Sarridis et al. 2022; reference code gsarridis/InDistill).

Stages (each in its own sub-workdir, each checkpointed and resumable):

1. ``teacher``: ResNet-20 (1 input channel) trained with cross-entropy.
2. ``aux_ce``: the auxiliary CNN (16/32/64, fc1 128) trained with cross-entropy.
3. ``aux_pkt``: the auxiliary, from ``aux_ce``, distilled from the teacher by PKT on the
   penultimate features (teacher avg-pool 64-d -> auxiliary fc1 128-d).
4. prune: L1 channel selection of the auxiliary's convs to the student widths (8/16/32), and per
   seed a random selection (ablation).
5. per seed, students (8/16/32, fc1 64) from the same initialisation:
   ``student_ce`` (cross-entropy), ``student_pkt`` (PKT on fc1 from the auxiliary only),
   ``indistill`` (the curriculum on the L1-pruned auxiliary's blocks, then PKT on fc1),
   ``ablation_random`` (the curriculum on randomly chosen channels),
   ``ablation_all_at_once`` (all block MSEs and the fc1 PKT summed from the first step).

Every model is evaluated by exact retrieval (database = the 60k training images, queries = the
10k test images; fc1 embeddings, teacher: average-pooled features) with Euclidean and cosine
distance: mAP, the reference's 11-point interpolated mAP and precision@100.

    python -m experiments.indistill --config=experiments/configs/indistill.py --workdir=runs/indistill
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments._harness import check_config, cli, each, training_config, workdir_path
from jaxcomp.data import DataStream, load_fashion_mnist
from jaxcomp.distill.curriculum import fit_curriculum, indistill_curriculum, single_curriculum
from jaxcomp.distill.indistill import PrunedBlocks, layerwise_targets, select_channels
from jaxcomp.distill.retrieval import retrieval_metrics
from jaxcomp.models import ResNet, ResNet20
from jaxcomp.models.cnn32 import auxiliary_cnn, student_cnn
from jaxcomp.train import plot_lines, split_model
from jaxcomp.train.recipes import train_classifier

DEFAULT_CONFIG = "experiments/configs/indistill.py"
DEFAULT_WORKDIR = "runs/indistill"

STUDENTS = ("student_ce", "student_pkt", "indistill", "ablation_random", "ablation_all_at_once")
METRICS = ("map", "map_11pt", "precision_at_k")

# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "num_classes": "int>=1",
    "train_images": "int>=0",  # 0 = all
    "batch_size": "int>=1",
    "learning_rate": ">0",
    "pkt_kernel": ("cosine", "combined"),
    "seeds": each("int>=0"),
    "teacher_seed": "int>=0",
    "teacher_model": ("resnet20", "cnn32"),
    "teacher_epoch_images": "int>=1",
    "teacher_epochs": each("int>=0"),  # (epochs, epochs at lr / 10)
    "epoch_images": "int>=1",
    "aux_ce_epochs": each("int>=0"),  # (epochs, epochs at lr / 10)
    "aux_pkt_epochs": "int>=1",
    "block_epochs": each("int>=1"),
    "final_epoch": "int>=1",
    "finetune_epochs": "int>=0",
    "student_widths": each("int>=1"),
    "students": each(STUDENTS),
    "metrics": each(("euclidean", "cosine")),
    "precision_k": "int>=1",
    "eval_chunk": "int>=1",
    "eval_database": "int>=0",  # 0 = all
    "eval_queries": "int>=0",  # 0 = all
    "role": ("all", "train", "eval", "summarize"),
    "ckpt_every": "int>=0",
    "log_every": "int>=0",
}


def check_across_fields(cfg) -> None:
    """What ``CONFIG_RULES`` cannot say (relations between fields), checked before any work."""
    for field, n in (("teacher_epochs", 2), ("aux_ce_epochs", 2), ("student_widths", 3)):
        if len(cfg[field]) != n:
            raise ValueError(f"config.{field} must have {n} entries, got {tuple(cfg[field])}")
    for field in ("teacher_epochs", "aux_ce_epochs"):
        if sum(cfg[field]) < 1:
            raise ValueError(f"config.{field} must sum to >= 1 epoch, got {tuple(cfg[field])}")
    if cfg.final_epoch <= sum(cfg.block_epochs):
        raise ValueError(
            f"config.final_epoch must exceed sum(config.block_epochs) = {sum(cfg.block_epochs)}, "
            f"got {cfg.final_epoch}"
        )


# Evaluation settings and which seeds / students / role this process runs: not part of a
# training stage's identity (an eval process, or one running other seeds, resumes the same runs).
_NOT_TRAINING = (
    "role", "seeds", "students", "metrics", "precision_k", "eval_chunk", "eval_database",
    "eval_queries", "eval_auxiliary", "eval_teacher", "scale_note", "data_dir",
)  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _subset(x, y, n: int, seed: int):
    if not n or n >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[idx], y[idx]


def _frozen(graphdef, params, state):
    """An eval-mode module rebuilt from a trained split, as (graphdef, state) to close over."""
    model = nnx.merge(graphdef, params, state)
    model.eval()
    return nnx.split(model)


def embed_fn(graphdef, state, kind: str):
    """Jitted ``images -> (embedding, logits)`` of an eval-mode model."""

    @jax.jit
    def f(x):
        m = nnx.merge(graphdef, state)
        if kind == "teacher" and isinstance(m, ResNet):
            e = m.features(x)  # average-pooled penultimate features (the reference's layer 3)
            return e, m.head(e)
        feats = m.features(x)
        return feats[3], feats[4]

    return f


def embed(f, images: np.ndarray, batch: int = 1000):
    es, ls = [], []
    for s in range(0, len(images), batch):
        x = jnp.asarray(images[s : s + batch].astype(np.float32) / 255.0)
        e, lg = f(x)
        es.append(np.asarray(e))
        ls.append(np.asarray(lg))
    return np.concatenate(es), np.concatenate(ls)


def evaluate_model(name, f, train, test, cfg, workdir: str) -> dict:
    """Retrieval (both metrics) and test accuracy, cached in ``workdir/<name>/retrieval.json``."""
    path = os.path.join(workdir, name, f"retrieval{_eval_tag(cfg)}.json")
    if cfg.role == "train":
        return None
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    t0 = time.time()
    log(f"{name}: embedding {len(train[0])} database + {len(test[0])} query images")
    db, _ = embed(f, train[0])
    qs, logits = embed(f, test[0])
    out = {"test_accuracy": float(np.mean(np.argmax(logits, -1) == test[1]))}
    for metric in cfg.metrics:
        log(f"{name}: exact retrieval, {metric}, {len(qs)} x {len(db)}")
        r = retrieval_metrics(
            db, train[1], qs, test[1], metric=metric, k=cfg.precision_k, chunk_size=cfg.eval_chunk
        )
        out[metric] = {key: r[key] for key in (*METRICS, "precision_curve", "recall_levels")}
    out["eval_seconds"] = time.time() - t0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_json(path, out)
    log(
        f"{name}: acc {out['test_accuracy']:.4f} "
        + " ".join(f"mAP({m[0]}) {out[m]['map']:.4f}" for m in cfg.metrics)
    )
    return out


def _create(factory, *args, seed: int, **kwargs):
    """Initialise a model in one compiled program (eager NNX initialisation dispatches, and on
    CPU compiles, every initializer separately; same values either way)."""
    return nnx.jit(lambda: factory(*args, rngs=nnx.Rngs(seed), **kwargs))()


def _eval_tag(cfg) -> str:
    """File-name suffix of a reduced evaluation, so that runs of different evaluation sizes can
    share one workdir (and its trained checkpoints) without mixing their results."""
    if not cfg.eval_database and not cfg.eval_queries:
        return ""
    return f"_db{cfg.eval_database or 'all'}_q{cfg.eval_queries or 'all'}"


def _steps_per_epoch(cfg, images: int) -> int:
    return max(1, images // cfg.batch_size)


def train_teacher(cfg, x, y, workdir):
    spe = _steps_per_epoch(cfg, cfg.teacher_epoch_images)
    e1, e2 = cfg.teacher_epochs
    schedule = optax.piecewise_constant_schedule(cfg.learning_rate, {e1 * spe: 0.1})
    if cfg.teacher_model == "resnet20":
        model = _create(ResNet20, cfg.num_classes, in_channels=1, seed=cfg.teacher_seed)
    elif cfg.teacher_model == "cnn32":  # smoke tests only: compiles in seconds
        model = _create(auxiliary_cnn, cfg.num_classes, in_channels=1, seed=cfg.teacher_seed)
    else:
        raise ValueError(f"teacher_model must be 'resnet20' or 'cnn32', got {cfg.teacher_model!r}")
    _wait_or_mark(cfg, workdir, "teacher", done=False)
    log(f"teacher: {cfg.teacher_model}, {(e1 + e2) * spe} steps of {cfg.batch_size}")
    graphdef, eval_graphdef, params, state, _ = train_classifier(
        model,
        optax.adam(schedule),
        x,
        y,
        batch_size=cfg.batch_size,
        num_steps=(e1 + e2) * spe,
        seed=cfg.teacher_seed,
        workdir=os.path.join(workdir, "teacher"),
        config=training_config(cfg, _NOT_TRAINING),
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        progress=cfg.progress,
        desc="teacher",
    )
    _wait_or_mark(cfg, workdir, "teacher", done=True)
    return _frozen(graphdef, params, state)


def _wait_or_mark(cfg, workdir: str, name: str, done: bool) -> None:
    """Two-process runs: ``role="train"`` marks each trained model; ``role="eval"`` waits for the
    mark and then only restores the final checkpoints (``fit`` runs no step)."""
    mark = os.path.join(workdir, name, "TRAINED")
    if done and cfg.role == "train":
        with open(mark, "w") as f:
            f.write("ok\n")
    if not done and cfg.role == "eval":
        while not os.path.exists(mark):
            time.sleep(10)


_STEP_CACHE: dict = {}  # compiled train steps shared by runs with the same target function


def run_curriculum(name, model, curriculum, target_fn, cfg, x, y, seed, workdir):
    _wait_or_mark(cfg, workdir, name, done=False)
    graphdef, _, params, state = split_model(model)
    log(f"{name}: {len(curriculum.stages)} stage(s), {curriculum.total_steps} steps, seed {seed}")
    stream = DataStream(x, y, cfg.batch_size, seed=seed)
    params, state, _, hist = fit_curriculum(
        graphdef,
        params,
        state,
        curriculum,
        stream,
        target_fn=target_fn,
        learning_rate=cfg.learning_rate,
        reset_opt_state=cfg.reset_opt_state,
        pkt_kernel=cfg.pkt_kernel,
        workdir=os.path.join(workdir, name),
        config=training_config(cfg, _NOT_TRAINING),
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        progress=cfg.progress,
        desc=name,
        step_cache=_STEP_CACHE,
    )
    _wait_or_mark(cfg, workdir, name, done=True)
    return _frozen(graphdef, params, state), hist


def _teacher_target(t_gd, t_st):
    def fn(x):
        t = nnx.merge(t_gd, t_st)
        return {3: t.features(x) if isinstance(t, ResNet) else t.embed(x)}

    return fn


def _aux_target(a_gd, a_st, p_gd=None, p_st=None):
    def fn(x):
        aux = nnx.merge(a_gd, a_st)
        pruned = None if p_gd is None else nnx.merge(p_gd, p_st)
        return layerwise_targets(aux, pruned, x)

    return fn


def summarize(per_seed: dict, metrics_used) -> dict:
    out = {}
    for name, seeds in per_seed.items():
        rows = list(seeds.values())
        s = {"seeds": sorted(int(k) for k in seeds)}
        vals = np.array([r["test_accuracy"] for r in rows])
        s["test_accuracy"] = {"mean": float(vals.mean()), "std": float(vals.std())}
        for m in metrics_used:
            for key in METRICS:
                vals = np.array([r[m][key] for r in rows])
                s[f"{key}_{m}"] = {"mean": float(vals.mean()), "std": float(vals.std())}
        out[name] = s
    return out


def table(summary: dict, metrics_used) -> str:
    def cell(d):
        return f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f}"

    cols = [(f"mAP ({m[:3]})", f"map_{m}") for m in metrics_used]
    cols += [(f"mAP 11-pt ({m[:3]})", f"map_11pt_{m}") for m in metrics_used]
    cols += [(f"P@100 ({m[:3]})", f"precision_at_k_{m}") for m in metrics_used]
    cols += [("test acc", "test_accuracy")]
    lines = [
        "| model | seeds | " + " | ".join(c for c, _ in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    order = ["teacher", "auxiliary (PKT from teacher)", *STUDENTS]
    for name in sorted(summary, key=lambda n: order.index(n) if n in order else len(order)):
        s = summary[name]
        lines.append(
            f"| {name} | {len(s['seeds'])} | " + " | ".join(cell(s[k]) for _, k in cols) + " |"
        )
    return "\n".join(lines)


def run(cfg, workdir: str) -> dict:
    check_config(cfg, CONFIG_RULES)
    check_across_fields(cfg)
    workdir_path(workdir)
    t_start = time.time()
    log("loading Fashion-MNIST (padded to 32x32)")
    x_full, y_full = load_fashion_mnist("train", data_dir=cfg.data_dir or None, pad_to=32)
    x_test, y_test = load_fashion_mnist("test", data_dir=cfg.data_dir or None, pad_to=32)
    if cfg.eval_database:
        x_db, y_db = _subset(x_full, y_full, cfg.eval_database, 1)
    else:
        x_db, y_db = x_full, y_full
    if cfg.eval_queries:
        x_test, y_test = _subset(x_test, y_test, cfg.eval_queries, 2)
    x, y = _subset(x_full, y_full, cfg.train_images, 0)
    log(f"train {len(x)} images, database {len(x_db)}, queries {len(x_test)}")
    train, test = (x_db, y_db), (x_test, y_test)
    per_seed: dict[str, dict[int, dict]] = {}

    def record(name, seed, res):
        if res is None:  # role="train": evaluation happens in the other process
            return
        per_seed.setdefault(name, {})[seed] = res

    # Teacher and auxiliary are evaluated last: embedding 70k images with the ResNet-20 is the
    # most expensive evaluation, and the students' table should come first on a slow machine.
    deferred = []
    # 1. teacher
    t_gd, t_st = train_teacher(cfg, x, y, workdir)
    if cfg.eval_teacher:
        deferred.append(("teacher", "teacher", embed_fn(t_gd, t_st, "teacher")))
    # 2-3. auxiliary: CE baseline, then PKT from the teacher
    spe = _steps_per_epoch(cfg, cfg.epoch_images)
    aux = _create(auxiliary_cnn, cfg.num_classes, in_channels=1, seed=cfg.teacher_seed)
    e1, e2 = cfg.aux_ce_epochs
    cur = single_curriculum(spe, 4, "ce", epochs=e1, finetune_epochs=e2)
    (a_gd, a_st), _ = run_curriculum("aux_ce", aux, cur, None, cfg, x, y, cfg.teacher_seed, workdir)
    aux = nnx.merge(a_gd, a_st)
    aux.train()
    cur = single_curriculum(spe, 3, "pkt", epochs=cfg.aux_pkt_epochs, finetune_epochs=0)
    (a_gd, a_st), _ = run_curriculum(
        "aux_pkt", aux, cur, _teacher_target(t_gd, t_st), cfg, x, y, cfg.teacher_seed, workdir
    )
    if cfg.eval_auxiliary:
        deferred.append(("auxiliary (PKT from teacher)", "aux_pkt", embed_fn(a_gd, a_st, "cnn")))
    # 4. pruning of the auxiliary to the student widths
    aux = nnx.merge(a_gd, a_st)
    keep_l1 = select_channels(aux, cfg.student_widths, method="l1")
    pruned = {"l1": nnx.split(PrunedBlocks(aux, keep_l1))}
    prune_info = {"l1": [k.tolist() for k in keep_l1], "random": {}}
    if cfg.role != "eval":
        _write_json(os.path.join(workdir, "kept_channels.json"), prune_info)
    # 5. students, per seed (target functions built once, so compiled steps are shared)
    blocks = tuple(cfg.block_epochs)
    target_aux = _aux_target(a_gd, a_st)
    target_l1 = _aux_target(a_gd, a_st, *pruned["l1"])
    for seed in cfg.seeds:
        keep_rand = select_channels(
            aux, cfg.student_widths, method="random", key=jax.random.key(1000 + seed)
        )
        prune_info["random"][seed] = [k.tolist() for k in keep_rand]
        pruned_rand = nnx.split(PrunedBlocks(aux, keep_rand))
        plans = {
            "student_ce": (
                single_curriculum(
                    spe, 4, "ce", epochs=cfg.final_epoch, finetune_epochs=cfg.finetune_epochs
                ),
                None,
            ),
            "student_pkt": (
                single_curriculum(
                    spe, 3, "pkt", epochs=cfg.final_epoch, finetune_epochs=cfg.finetune_epochs
                ),
                target_aux,
            ),
            "indistill": (
                indistill_curriculum(
                    spe,
                    block_epochs=blocks,
                    final_epochs=cfg.final_epoch,
                    finetune_epochs=cfg.finetune_epochs,
                ),
                target_l1,
            ),
            "ablation_random": (
                indistill_curriculum(
                    spe,
                    block_epochs=blocks,
                    final_epochs=cfg.final_epoch,
                    finetune_epochs=cfg.finetune_epochs,
                ),
                _aux_target(a_gd, a_st, *pruned_rand),
            ),
            "ablation_all_at_once": (
                single_curriculum(
                    spe,
                    (0, 1, 2, 3),
                    ("mse", "mse", "mse", "pkt"),
                    epochs=cfg.final_epoch,
                    finetune_epochs=cfg.finetune_epochs,
                ),
                target_l1,
            ),
        }
        for name in cfg.students:
            cur, target_fn = plans[name]
            student = _create(student_cnn, cfg.num_classes, in_channels=1, seed=seed)
            tag = f"{name}_seed{seed}"
            (s_gd, s_st), _ = run_curriculum(tag, student, cur, target_fn, cfg, x, y, seed, workdir)
            record(
                name,
                seed,
                evaluate_model(tag, embed_fn(s_gd, s_st, "cnn"), train, test, cfg, workdir),
            )
            _finish(cfg, workdir, per_seed, prune_info, t_start, partial=True)
    for name, tag, f in deferred:
        record(name, cfg.teacher_seed, evaluate_model(tag, f, train, test, cfg, workdir))
        _finish(cfg, workdir, per_seed, prune_info, t_start, partial=True)
    return _finish(cfg, workdir, per_seed, prune_info, t_start, partial=False)


def _finish(cfg, workdir, per_seed, prune_info, t_start, *, partial: bool) -> dict:
    if cfg.role == "train":
        return {"table": "(role=train: evaluation runs in the role=eval process)"}
    summary = summarize(per_seed, cfg.metrics)
    results = {
        "config": cfg.to_dict(),
        "scale": cfg.scale_note,
        "partial": partial,
        "summary": summary,
        "per_seed": {n: {str(s): r for s, r in v.items()} for n, v in per_seed.items()},
        "kept_channels": prune_info,
        "table": table(summary, cfg.metrics),
        "wall_seconds": time.time() - t_start,
    }
    _write_json(os.path.join(workdir, f"results{_eval_tag(cfg)}.json"), results)
    if not partial:
        m = cfg.metrics[0]
        series = {}
        for name, seeds in per_seed.items():
            curves = np.array([r[m]["precision_curve"] for r in seeds.values()])
            levels = next(iter(seeds.values()))[m]["recall_levels"]
            series[name] = (levels, curves.mean(axis=0))
        plot_lines(
            os.path.join(workdir, f"precision_recall{_eval_tag(cfg)}.png"),
            series,
            xlabel="recall",
            ylabel=f"interpolated precision ({m})",
            title=f"Fashion-MNIST retrieval ({cfg.eval_database or 60000} database, "
            f"{cfg.eval_queries or 10000} queries)",
        )
    return results


def summarize_only(cfg, workdir: str) -> dict:
    """``role="summarize"``: assemble results from the per-model retrieval files that other
    processes (e.g. one ``role="eval"`` process per seed) have written; trains and restores nothing."""
    tag = _eval_tag(cfg)
    per_seed: dict[str, dict[int, dict]] = {}
    entries = [("teacher", "teacher", cfg.teacher_seed)]
    entries.append(("auxiliary (PKT from teacher)", "aux_pkt", cfg.teacher_seed))
    entries += [(n, f"{n}_seed{s}", s) for s in cfg.seeds for n in cfg.students]
    for name, sub, seed in entries:
        path = os.path.join(workdir, sub, f"retrieval{tag}.json")
        if os.path.exists(path):
            with open(path) as f:
                per_seed.setdefault(name, {})[seed] = json.load(f)
        else:
            log(f"missing {path}")
    keep_path = os.path.join(workdir, "kept_channels.json")
    prune_info = json.load(open(keep_path)) if os.path.exists(keep_path) else {}
    return _finish(cfg, workdir, per_seed, prune_info, time.time(), partial=False)


def main(cfg, workdir: str) -> dict:
    """``role``: all (train + evaluate), train, eval, or summarize the saved per-seed results."""
    check_config(cfg, CONFIG_RULES)
    check_across_fields(cfg)
    results = summarize_only(cfg, workdir) if cfg.role == "summarize" else run(cfg, workdir)
    print(results["table"])
    return results


if __name__ == "__main__":
    cli(main, DEFAULT_CONFIG, DEFAULT_WORKDIR)
