"""The FewSAR protocol: episodic or pretraining, validation-based model selection, and testing on
a fixed set of deterministic episodes with mean +- 95% confidence interval (Student t).

FewSAR (Sec. IV-A; LibFewShot's trainer): Adam lr 1e-3, StepLR (x0.7 every 10 epochs), 100
training episodes per epoch, the model with the best validation accuracy is tested on 5 x 600
episodes of the novel classes, and ``mean_confidence_interval`` reports
``mean +- t_{0.975, n-1} * sem``.

Testing on features: methods whose test-time prediction needs only the frozen backbone
(``test_on == "features"``) are tested by embedding the test pool once (the backbone in eval
mode is a per-image function) and running the episode heads, jitted and ``vmap``ped, over
episode chunks of feature indices. That is the same computation as embedding each episode's
images, and turns 3000 test episodes into one pass over the pool plus cheap heads.
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from jaxcomp.data.pipeline import DataStream
from jaxcomp.fewshot.episodes import EpisodeSampler, EpisodeStream
from jaxcomp.train.checkpoint import Checkpointer
from jaxcomp.train.loop import fit
from jaxcomp.train.step import make_train_step, split_model
from jaxcomp.train.workdir import write_json_atomic


# ----------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` (continued fraction, float64)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t: ``1 - I_{df/(df+t^2)}(df/2, 1/2) / 2`` for ``t >= 0``."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_ppf(p: float, df: int) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom (bisection on ``student_t_cdf``)."""
    if not 0.5 <= p < 1.0:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return 0.5 * (lo + hi)


def mean_confidence_interval(data, confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, h)`` with ``h = t_{(1+confidence)/2, n-1} * std(ddof=1) / sqrt(n)`` (FewSAR's
    ``core/utils/utils.py``)."""
    a = np.asarray(data, np.float64).reshape(-1)
    if a.size < 2:
        raise ValueError(f"need at least 2 values for a confidence interval, got {a.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    sem = a.std(ddof=1) / math.sqrt(a.size)
    return float(a.mean()), float(sem * student_t_ppf((1.0 + confidence) / 2.0, a.size - 1))


# ----------------------------------------------------------------------------- testing
def _to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) * (1.0 / 255.0) if x.dtype == np.uint8 else x


@functools.lru_cache(maxsize=64)
def _embed_fn(eval_graphdef: nnx.GraphDef):
    @jax.jit
    def embed(params, state, x):
        return nnx.merge(eval_graphdef, params, state).embed(x)

    return embed


def embed_pool(eval_graphdef, params, state, images: np.ndarray, batch_size: int = 500):
    """Backbone features (eval mode) of every image of a pool, as one device array. The jitted
    function is cached per graphdef and padded to one batch shape, so it compiles once."""
    embed = _embed_fn(eval_graphdef)
    n = len(images)
    out = []
    for i in range(0, n, batch_size):
        x = _to_float(images[i : i + batch_size])
        if len(x) < batch_size and n > batch_size:  # pad: one compiled shape
            x = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)])
        out.append(embed(params, state, jnp.asarray(x))[: min(batch_size, n - i)])
    return jnp.concatenate(out)


@functools.lru_cache(maxsize=64)
def _episodes_fn(eval_graphdef: nnx.GraphDef, test_on: str, way: int, query: int):
    """Jitted ``(params, state, support, query, keys) -> per-episode accuracy``, vmapped over
    episodes; cached so validation after every epoch compiles once."""
    labels = jnp.repeat(jnp.arange(way), query)

    def one(params, state, sup, qry, key):
        model = nnx.merge(eval_graphdef, params, state)
        if test_on == "features":
            return model.predict_features(sup, qry, key)
        return model.predict_images(sup, qry, key)

    @jax.jit
    def run(params, state, sup, qry, keys):
        logits = jax.vmap(one, in_axes=(None, None, 0, 0, 0))(params, state, sup, qry, keys)
        return jnp.mean(jnp.argmax(logits, -1) == labels, axis=-1)

    return run


def evaluate_episodes(
    eval_graphdef: nnx.GraphDef,
    params: Any,
    state: Any,
    images: np.ndarray,
    sampler: EpisodeSampler,
    num_episodes: int,
    *,
    chunk: int | None = None,
    start: int = 0,
) -> np.ndarray:
    """Per-episode query accuracy on episodes ``start .. start + num_episodes - 1`` of
    ``sampler`` over the pool ``images`` (an eval-mode ``eval_graphdef``). Each episode's
    randomness (e.g. the fine-tuned head's init) is ``fold_in(key(sampler.seed), index)``.

    ``chunk`` episodes are ``vmap``ped per call; ``None``: 50, except for methods tested on
    images (per-episode network adaptation) on the CPU backend, where 1: a ``vmap`` over
    per-episode conv weights becomes a grouped convolution, which XLA:CPU runs about 3x slower
    than the same episodes one by one (measured for MAML, Conv32F, 5 inner steps)."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    test_on = nnx.merge(eval_graphdef, params, state).test_on
    if test_on not in ("features", "images"):
        raise ValueError(f"test_on must be 'features' or 'images', got {test_on!r}")
    if chunk is None:
        chunk = 1 if test_on == "images" and jax.default_backend() == "cpu" else 50
    way, k, q = sampler.way, sampler.shot, sampler.query
    base_key = jax.random.key(sampler.seed)
    pool = embed_pool(eval_graphdef, params, state, images) if test_on == "features" else None
    run = _episodes_fn(eval_graphdef, test_on, way, q)

    accs = []
    chunk = min(chunk, num_episodes)
    for c0 in range(start, start + num_episodes, chunk):
        n = min(chunk, start + num_episodes - c0)
        ids = np.arange(c0, c0 + chunk)
        ids[n:] = c0  # pad the last chunk (one compiled shape)
        idx = np.stack([sampler.indices(i) for i in ids])  # (chunk, way, k + q)
        keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jnp.asarray(ids))
        if pool is not None:
            x = pool[jnp.asarray(idx)]
            sup, qry = x[:, :, :k], x[:, :, k:].reshape(chunk, way * q, *x.shape[3:])
        else:
            x = _to_float(images[idx])
            sup, qry = jnp.asarray(x[:, :, :k]), jnp.asarray(x[:, :, k:])
        accs.append(np.asarray(run(params, state, sup, qry, keys))[:n])
    return np.concatenate(accs)


# ----------------------------------------------------------------------------- training
def step_lr(lr: float, steps_per_epoch: int, step_epochs: int, gamma: float) -> optax.Schedule:
    """``torch.optim.lr_scheduler.StepLR`` stepped per epoch: ``lr * gamma^(epoch // step)``."""
    return optax.exponential_decay(
        lr, transition_steps=steps_per_epoch * step_epochs, decay_rate=gamma, staircase=True
    )


def _model_loss(graphdef: nnx.GraphDef, method: str, keys: tuple[str, str]):
    def loss_fn(params, state, batch):
        model = nnx.merge(graphdef, params, state)
        loss, metrics = getattr(model, method)(batch[keys[0]], batch[keys[1]])
        return loss, (nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))), metrics)

    return loss_fn


def episodic_loss(graphdef: nnx.GraphDef):
    """``loss_fn(params, state, episode)`` for ``make_train_step`` (``model.episode_loss``)."""
    return _model_loss(graphdef, "episode_loss", ("support", "query"))


def pretrain_loss(graphdef: nnx.GraphDef):
    """``loss_fn`` for standard classification on the base classes (``model.classify_loss``)."""
    return _model_loss(graphdef, "classify_loss", ("image", "label"))


def phases_of(model: nnx.Module) -> tuple[str, ...]:
    """The training phases of a method: ``model.training`` as a tuple (one phase when it is a
    string). Each phase is ``"episodic"`` or ``"pretrain"``."""
    kinds = (model.training,) if isinstance(model.training, str) else tuple(model.training)
    if not kinds:
        raise ValueError("model.training names no phase")
    for k in kinds:
        if k not in ("episodic", "pretrain"):
            raise ValueError(
                f"model.training phases must be 'episodic' or 'pretrain', got {model.training!r}"
            )
    return kinds


def train(
    model: nnx.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    workdir: str | epath.PathLike,
    way: int = 5,
    shot: int = 1,
    query: int = 15,
    episodes_per_epoch: int = 100,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_step_epochs: int = 10,
    lr_gamma: float = 0.7,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    val_episodes: int = 100,
    val_query: int = 15,
    seed: int = 0,
    log=print,
    config: Any = None,
) -> dict[str, Any]:
    """Train ``model`` (episodically, or by base-class pretraining, by ``model.training``) for
    ``epochs`` epochs of ``episodes_per_epoch`` steps, in ``workdir`` (checkpointed and resumable
    per epoch). After every epoch the model is tested on ``val_episodes`` fixed validation
    episodes (``way``-way ``shot``-shot); the best one is kept (the last one without ``val``).

    Methods of several phases (``model.training`` a tuple, e.g. RFS's pretraining then
    born-again distillation, MTL's pretraining then meta-training) run each phase as above in
    ``workdir/phase<i>``; before phase ``i >= 1`` the model carrying phase ``i-1``'s selected
    weights gets ``model.start_phase(i, nnx.Rngs(seed + i))`` (e.g. to freeze a teacher copy and
    re-initialise the student). Phases resume independently; training time is their sum.

    The checkpoints carry the run's identity (every argument above plus the caller's ``config``):
    resuming under other settings is refused by ``fit``, naming the fields.

    Returns ``{"graphdef", "eval_graphdef", "params", "state", "history", "train_time_s"}``
    (``history`` of the last phase, with every phase's under ``"phases"``).
    """
    kinds = phases_of(model)
    kw = dict(
        way=way,
        shot=shot,
        query=query,
        episodes_per_epoch=episodes_per_epoch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_step_epochs=lr_step_epochs,
        lr_gamma=lr_gamma,
        val=val,
        val_episodes=val_episodes,
        val_query=val_query,
        seed=seed,
        log=log,
        config=config,
    )
    workdir = epath.Path(workdir)  # any epath (gs:// too)
    if len(kinds) == 1:  # the single-phase layout (runs of earlier versions resume)
        return _train_phase(model, kinds[0], train_images, train_labels, workdir=workdir, **kw)
    result, records, total = None, [], 0.0
    for i, kind in enumerate(kinds):
        if i > 0:
            model = nnx.merge(result["graphdef"], result["params"], result["state"])
            model.start_phase(i, nnx.Rngs(seed + i))
        log(f"  phase {i} ({kind})")
        result = _train_phase(
            model,
            kind,
            train_images,
            train_labels,
            workdir=workdir / f"phase{i}",
            phase=i,
            **kw,
        )
        records.append(result["history"])
        total += result["train_time_s"]
    result["history"] = {**result["history"], "phases": records}
    result["train_time_s"] = total
    return result


def _train_phase(
    model: nnx.Module,
    kind: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    workdir: epath.Path,
    way: int,
    shot: int,
    query: int,
    episodes_per_epoch: int,
    epochs: int,
    batch_size: int,
    lr: float,
    lr_step_epochs: int,
    lr_gamma: float,
    val: tuple[np.ndarray, np.ndarray] | None,
    val_episodes: int,
    val_query: int,
    seed: int,
    log,
    config: Any,
    phase: int | None = None,
) -> dict[str, Any]:
    """One training phase of ``kind`` (``"episodic"`` / ``"pretrain"``); see ``train``."""
    identity = {
        "run": config,
        "way": way,
        "shot": shot,
        "query": query,
        "episodes_per_epoch": episodes_per_epoch,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lr_step_epochs": lr_step_epochs,
        "lr_gamma": lr_gamma,
        "val_episodes": val_episodes,
        "val_query": val_query,
        "seed": seed,
        "training": model.training,
        **({"phase": phase} if phase is not None else {}),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    graphdef, eval_graphdef, params, state = split_model(model)
    tx = optax.adam(step_lr(lr, episodes_per_epoch, lr_step_epochs, lr_gamma))
    opt_state = tx.init(params)
    if kind == "episodic":
        stream = EpisodeStream(
            train_images, EpisodeSampler(train_labels, way, shot, query, seed=seed)
        )
        loss_fn = episodic_loss(graphdef)
    elif kind == "pretrain":
        classes, dense = np.unique(train_labels, return_inverse=True)
        stream = DataStream(train_images, dense.astype(np.int32), batch_size, seed=seed)
        loss_fn = pretrain_loss(graphdef)
    else:
        raise ValueError(f"a training phase must be 'episodic' or 'pretrain', got {kind!r}")
    step = make_train_step(loss_fn, tx)
    val_sampler = (
        EpisodeSampler(val[1], way, shot, val_query, seed=seed + 10_000)
        if val is not None
        else None
    )

    hist_path = workdir / "history.json"
    record = json.loads(hist_path.read_text()) if hist_path.exists() else {"epochs": []}
    best_dir = workdir / "best"
    best_acc = max((e["val_accuracy"] for e in record["epochs"]), default=-1.0)
    best = None
    if record["epochs"] and best_dir.is_dir():  # without val: the last epoch's model
        ck = Checkpointer(best_dir, max_to_keep=1)
        if ck.latest_step() is not None:
            restored, _ = ck.restore({"params": params, "model_state": state})
            best = (restored["params"], restored["model_state"])
        ck.close()
    train_time = float(record.get("train_time_s", 0.0))
    P = episodes_per_epoch
    for epoch in range(len(record["epochs"]) + 1, epochs + 1):
        t0 = time.perf_counter()
        params, state, opt_state, hist = fit(
            step,
            params,
            state,
            opt_state,
            stream,
            epoch * P,
            workdir=workdir / "train",
            config=identity,
            ckpt_every=P,
            log_every=P,
            progress=False,
        )
        jax.block_until_ready(params)
        train_time += time.perf_counter() - t0
        entry = {"epoch": epoch, **(hist[-1] if hist else {})}
        if val_sampler is not None:
            accs = evaluate_episodes(
                eval_graphdef, params, state, val[0], val_sampler, val_episodes
            )
            entry["val_accuracy"] = float(accs.mean())
        else:
            entry["val_accuracy"] = float("nan")
        if val_sampler is None or entry["val_accuracy"] > best_acc:
            best_acc = entry["val_accuracy"]
            best = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state))
            ck = Checkpointer(best_dir, max_to_keep=1)
            ck.save(epoch, {"params": best[0], "model_state": best[1]})
            ck.close()
        record["epochs"].append(entry)
        record["train_time_s"] = train_time
        write_json_atomic(hist_path, record)
        log(
            f"  epoch {epoch}/{epochs}: loss {entry.get('loss', float('nan')):.4f} "
            f"train acc {entry.get('accuracy', float('nan')):.4f} "
            f"val acc {entry['val_accuracy']:.4f} ({train_time:.0f}s)"
        )
    if best is None:
        best = (params, state)
    record["best_epoch"] = (
        max(record["epochs"], key=lambda e: e["val_accuracy"])["epoch"]
        if val is not None and record["epochs"]
        else len(record["epochs"])
    )
    write_json_atomic(hist_path, record)
    return {
        "graphdef": graphdef,
        "eval_graphdef": eval_graphdef,
        "params": best[0],
        "state": best[1],
        "history": record,
        "train_time_s": train_time,
    }


def test(
    trained: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    way: int = 5,
    shot: int = 1,
    query: int = 15,
    num_episodes: int = 3000,
    seed: int = 0,
    chunk: int | None = None,
) -> dict[str, Any]:
    """Accuracy (mean, 95% CI half-width) on episodes ``0 .. num_episodes-1`` of
    ``EpisodeSampler(labels, way, shot, query, seed)``: the same episodes for every method."""
    sampler = EpisodeSampler(labels, way, shot, query, seed=seed)
    t0 = time.perf_counter()
    accs = evaluate_episodes(
        trained["eval_graphdef"],
        trained["params"],
        trained["state"],
        images,
        sampler,
        num_episodes,
        chunk=chunk,
    )
    elapsed = time.perf_counter() - t0
    mean, ci = mean_confidence_interval(accs)
    return {
        "accuracy": mean,
        "ci95": ci,
        "episodes": int(num_episodes),
        "test_time_s": elapsed,
        "test_ms_per_episode": 1000.0 * elapsed / num_episodes,
        "episode_accuracies": accs.tolist(),
    }
