"""The jitted train step (see docs/design.md, "The train-step contract").

A model is split once, ``graphdef, params, model_state = nnx.split(model, nnx.Param, ...)`` (made
pure with ``nnx.as_pure``; ``split_model`` does both), and everything inside ``jax.jit`` works on
the pure trees. A loss is
``loss_fn(params, model_state, batch) -> (loss, (new_model_state, metrics))``.

BatchNorm and extra gradient passes: ``make_train_step`` differentiates the loss once with
``has_aux=True`` and keeps ``new_model_state`` from that *clean* pass. It also hands the
optimizer ``grad_fn = lambda p: grad(loss_fn)(p, model_state, batch)``, which *discards* the model
state it computes. A transform that needs extra passes on the same batch (CrAM's compressed pass,
SAM-like methods) calls ``grad_fn``; its forward pass runs in training mode (batch statistics) but
can never move the running BatchNorm statistics, with no special case anywhere. Its dropout
masks are fresh: every PRNG key in ``model_state`` is first folded with a tag and the inner step
``i`` (``extra_pass_state``), so the extra pass never repeats the clean pass's masks, nor those of
any later clean pass (the clean passes' key sequence is the same with or without extra passes).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxcomp.train import mesh as mesh_lib

LossFn = Callable[[Any, Any, Any], tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


@dataclasses.dataclass(frozen=True)
class TrainShardings:
    """Shardings of the four train-step inputs (params, model state, opt state, batch)."""

    params: Any
    model_state: Any
    opt_state: Any
    batch: NamedSharding
    metrics: NamedSharding


def shard_train_state(
    mesh: Mesh,
    params: Any,
    model_state: Any,
    opt_state: Any,
    rules: Sequence[mesh_lib.Rule] = (),
    *,
    fsdp_min_size: int = 2**14,
    tx: optax.GradientTransformation | None = None,
) -> tuple[Any, Any, Any, TrainShardings]:
    """Place params, model state and optimizer state on ``mesh`` by the same rules; returns the
    placed trees and their ``TrainShardings`` (for ``make_train_step``).

    Optimizer-state leaves are matched to parameters by path and shape
    (``mesh.like_params_shardings``). With ``tx``, the optimizer state takes instead the
    shardings that ``tx.init`` gives it on the placed params (one extra, eager ``tx.init``; its
    values are discarded, ``opt_state``'s are kept): use it for transforms that place their own
    state, such as ``mfac``/``ggt`` with ``layout="leaves"`` and a block-wise top-k window.
    """
    p_sh = mesh_lib.param_shardings(params, mesh, rules, fsdp_min_size=fsdp_min_size)
    s_sh = mesh_lib.like_params_shardings(model_state, params, p_sh, mesh)
    if tx is None:
        o_sh = mesh_lib.like_params_shardings(opt_state, params, p_sh, mesh)
    else:
        o_sh = _state_shardings(tx, jax.device_put(params, p_sh), opt_state, mesh)
    shardings = TrainShardings(
        p_sh, s_sh, o_sh, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)
    )
    put = jax.device_put
    return put(params, p_sh), put(model_state, s_sh), put(opt_state, o_sh), shardings


def _state_shardings(tx: optax.GradientTransformation, placed: Any, opt_state: Any, mesh: Mesh):
    """The shardings of ``tx.init(placed)``, checked to describe ``opt_state`` (same tree and
    shapes); leaves ``tx.init`` leaves off ``mesh`` are replicated on it."""
    template = tx.init(placed)
    if jax.tree.structure(template) != jax.tree.structure(opt_state):
        raise ValueError(
            "shard_train_state: opt_state does not have the tree of tx.init(params): "
            f"{jax.tree.structure(opt_state)} vs {jax.tree.structure(template)}"
        )
    out = []
    for (path, t), o in zip(
        jax.tree_util.tree_flatten_with_path(template)[0], jax.tree.leaves(opt_state)
    ):
        if jnp.shape(t) != jnp.shape(o):
            raise ValueError(
                f"shard_train_state: opt_state{jax.tree_util.keystr(path)} has shape "
                f"{jnp.shape(o)}, tx.init(params) gives {jnp.shape(t)}"
            )
        sharding = getattr(t, "sharding", None)
        on_mesh = isinstance(sharding, NamedSharding) and sharding.mesh == mesh
        out.append(sharding if on_mesh else mesh_lib.replicated(mesh))
    return jax.tree.structure(template).unflatten(out)


#: Folded into every PRNG key of the model state for the extra passes of ``grad_fn``.
EXTRA_PASS_TAG = 0x43524D  # "CRM"


def _fold_key(key: jax.Array, data: Any) -> jax.Array:
    if key.ndim == 0:
        return jax.random.fold_in(key, data)
    flat = jax.vmap(lambda k: jax.random.fold_in(k, data))(key.reshape(-1))
    return flat.reshape(key.shape)


def extra_pass_state(model_state: Any, i: Any = None) -> Any:
    """``model_state`` with every typed PRNG key (NNX ``RngKey``, e.g. a Dropout stream) folded
    with ``EXTRA_PASS_TAG`` and then the inner step ``i`` (0 when None); other leaves unchanged.

    NNX draws a mask from ``fold_in(key, count)``, so a pass on this state draws masks that no
    clean pass (on ``key`` itself, at any count) draws: ``grad_fn``'s extra passes get fresh
    dropout, independent for every ``i``.
    """
    i = 0 if i is None else i

    def fold(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return _fold_key(_fold_key(leaf, EXTRA_PASS_TAG), i)
        return leaf

    return jax.tree.map(fold, model_state)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    shardings: TrainShardings | Mesh | None = None,
    *,
    rules: Sequence[mesh_lib.Rule] = (),
    donate: bool = True,
    nan_guard: bool = False,
) -> Callable[[Any, Any, Any, Any], tuple[Any, Any, Any, dict[str, jax.Array]]]:
    """``step(params, model_state, opt_state, batch) -> (params, model_state, opt_state, metrics)``.

    ``tx`` may be any optax transform; it is called as
    ``tx.update(grads, opt_state, params, grad_fn=grad_fn)`` (plain transforms are wrapped with
    ``optax.with_extra_args_support`` and ignore ``grad_fn``). With ``shardings`` (from
    ``shard_train_state``) the step is jitted with those in/out shardings, so params, model state
    and optimizer state keep their sharding step after step; they are donated unless
    ``donate=False``. Given a ``Mesh`` instead, the shardings are derived from ``rules`` (see
    ``param_shardings``) on the first call and the inputs are placed accordingly. Metrics are a
    flat dict of replicated scalars, including ``loss`` and ``grad_norm``.

    ``grad_fn(params, i=None)`` has ``optax.contrib.sam``'s opaque-mode signature (``i`` is the
    inner step; the batch is the same for every ``i``), so SAM and our transforms both plug in.
    It runs on ``extra_pass_state(model_state, i)``: fresh dropout masks, the old BatchNorm
    statistics, and the state it computes is discarded.

    ``nan_guard=True``: when the loss or any gradient leaf is non-finite, the step returns its
    inputs unchanged (params, model state, optimizer state: EF buffers, windows and momenta are
    not poisoned) and reports ``nonfinite = 1`` and ``nonfinite_leaf`` (index of the first
    non-finite gradient leaf in ``jax.tree.leaves`` order, -1 if only the loss); ``fit``'s
    ``nan_policy`` reads them.
    """
    tx = optax.with_extra_args_support(tx)

    def step(params, model_state, opt_state, batch):
        (loss, (new_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, batch
        )

        def grad_fn(p, i=None):
            # Same batch, old BatchNorm statistics, fresh dropout keys; the state this pass
            # computes is discarded.
            extra_state = extra_pass_state(model_state, i)
            return jax.grad(lambda q: loss_fn(q, extra_state, batch)[0])(p)

        updates, new_opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
        new_params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}
        if not nan_guard:
            return new_params, new_state, new_opt_state, metrics
        leaf_ok = jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [jnp.bool_(True)]
        )
        ok = jnp.isfinite(loss) & jnp.all(leaf_ok)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        metrics["nonfinite"] = (~ok).astype(jnp.int32)
        metrics["nonfinite_leaf"] = jnp.where(
            jnp.all(leaf_ok), -1, jnp.argmin(leaf_ok.astype(jnp.int32))
        ).astype(jnp.int32)
        return (
            keep(new_params, params),
            keep(new_state, model_state),
            keep(new_opt_state, opt_state),
            metrics,
        )

    donate_argnums = (0, 1, 2) if donate else ()
    if shardings is None:
        return jax.jit(step, donate_argnums=donate_argnums)

    def jitted(s: TrainShardings):
        return jax.jit(
            step,
            in_shardings=(s.params, s.model_state, s.opt_state, s.batch),
            out_shardings=(s.params, s.model_state, s.opt_state, s.metrics),
            donate_argnums=donate_argnums,
        )

    if isinstance(shardings, TrainShardings):
        return jitted(shardings)
    mesh, cache = shardings, {}

    def step_on_mesh(params, model_state, opt_state, batch):
        if "fn" not in cache:
            *_, cache["sh"] = shard_train_state(mesh, params, model_state, opt_state, rules)
            cache["fn"] = jitted(cache["sh"])
        s = cache["sh"]
        put = jax.device_put
        return cache["fn"](
            put(params, s.params),
            put(model_state, s.model_state),
            put(opt_state, s.opt_state),
            put(batch, s.batch),
        )

    return step_on_mesh


def classification_loss(graphdef: nnx.GraphDef, *, label_smoothing: float = 0.0) -> LossFn:
    """Softmax cross-entropy ``loss_fn`` for a model split as ``(graphdef, params, model_state)``
    with batches ``{"image", "label"}``; metrics: ``accuracy``."""

    def loss_fn(params, model_state, batch):
        model = nnx.merge(graphdef, params, model_state)
        logits = model(batch["image"])
        num_classes = logits.shape[-1]
        labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
        loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))), {"accuracy": acc})

    return loss_fn


@functools.lru_cache(maxsize=64)
def make_eval_step(graphdef: nnx.GraphDef) -> Callable[[Any, Any, Any], dict[str, jax.Array]]:
    """Jitted ``(params, model_state, batch) -> {"correct", "loss_sum", "count"}`` sums (``graphdef``
    should be split from a model in eval mode). Cached per graphdef (graphdefs are hashable and
    compare by structure), so repeated ``evaluate`` calls, e.g. one per pruning level, compile
    once."""

    @jax.jit
    def eval_step(params, model_state, batch):
        model = nnx.merge(graphdef, params, model_state)
        logits = model(batch["image"]).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {
            "correct": jnp.sum(jnp.argmax(logits, -1) == batch["label"]),
            "loss_sum": jnp.sum(loss),
            "count": jnp.asarray(batch["label"].shape[0]),
        }

    return eval_step


def evaluate(
    graphdef: nnx.GraphDef, params: Any, model_state: Any, batches: Iterable[Any]
) -> dict[str, float]:
    """Accuracy and mean loss over ``batches`` (eval-mode ``graphdef``)."""
    eval_step = make_eval_step(graphdef)
    tot = {"correct": 0.0, "loss_sum": 0.0, "count": 0}
    for batch in batches:
        out = jax.device_get(eval_step(params, model_state, batch))
        for k in tot:
            tot[k] += out[k]
    if tot["count"] == 0:
        raise ValueError("evaluate: batches is empty")
    return {"accuracy": tot["correct"] / tot["count"], "loss": tot["loss_sum"] / tot["count"]}


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.GraphDef, Any, Any]:
    """``(train_graphdef, eval_graphdef, params, model_state)`` of an NNX model.

    The two graphdefs differ only in BatchNorm/Dropout mode. ``params`` (``nnx.Param``) and
    ``model_state`` (everything else: BatchNorm statistics, RNG counters) are *pure* trees of
    arrays (``nnx.as_pure``), which is what crosses ``jax.jit`` / ``jax.grad`` boundaries;
    ``nnx.merge(graphdef, params, model_state)`` rebuilds the module inside a loss.
    """
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    model.train()
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    return graphdef, eval_graphdef, nnx.as_pure(params), nnx.as_pure(model_state)
