"""MAML (Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017): pure functions over parameter pytrees, and the ``MAML`` few-shot model.

For a task with support set ``S`` and query set ``Q`` the paper adapts the parameters by
gradient descent on the support loss (Eq. 1, repeated for several steps, Sec. 5.2),

    theta_{k+1} = theta_k - alpha * grad L_S(theta_k),   theta_0 = theta,   k < inner_steps,

and meta-learns ``theta`` by the query loss of the adapted parameters averaged over a
meta-batch of tasks (Eq. 2-3, Algorithm 2): ``min_theta mean_i L_{Q_i}(theta'_i)``. The exact
meta-gradient differentiates through every inner gradient (second order, the paper's and
FewSAR's default: ``torch.autograd.grad(..., create_graph=True)``); ``first_order=True`` is the
paper's first-order approximation (Sec. 5.2), which treats the inner gradients as constants.

A ``loss_fn(params, batch)`` returns a scalar, or ``(scalar, aux)`` with ``has_aux=True`` (as
``jax.grad``); the inner loop is one ``lax.scan`` over steps, so it jits, ``vmap``s over tasks
(``meta_batch_loss``) and differentiates to any order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy, episode_labels

LossFn = Callable[[Any, Any], Any]


def check_inner(inner_steps: int, inner_lr: ArrayLike, name: str = "inner_steps") -> None:
    """``ValueError`` naming the value unless ``inner_steps`` is an int >= 1 and ``inner_lr``
    (when a Python number; a traced learning rate is not checked) is finite and > 0."""
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, numbers.Integral):
        raise ValueError(f"{name} must be an int >= 1, got {inner_steps!r}")
    if inner_steps < 1:
        raise ValueError(f"{name} must be >= 1, got {inner_steps}")
    if isinstance(inner_lr, numbers.Real) and not (math.isfinite(inner_lr) and inner_lr > 0):
        raise ValueError(f"inner_lr must be finite and > 0, got {inner_lr}")


def inner_loop(
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    *,
    inner_steps: int,
    inner_lr: ArrayLike,
    first_order: bool = False,
    has_aux: bool = False,
    unroll: int | bool = True,
) -> Any:
    """``params`` after ``inner_steps`` SGD steps of learning rate ``inner_lr`` on
    ``loss_fn(params, batch)`` (MAML's Eq. 1, repeated; one ``lax.scan``).

    Differentiating the result w.r.t. ``params`` goes through every inner gradient (second
    order); ``first_order=True`` stops the gradient at the inner gradients (Sec. 5.2's
    first-order approximation), so ``d adapted / d params`` is the identity.

    ``unroll`` is ``lax.scan``'s: ``True`` (the default) unrolls every step in the compiled
    program, ``1`` keeps a rolled loop (shorter compiles for many steps). The result is the
    same; the speed is not: XLA:CPU runs the convolutions of a rolled loop about 5x slower
    (Conv32F, 5 steps: 88 vs 16 ms per 1-shot adaptation, 367 vs 151 ms per second-order
    meta-gradient; ``benchmarks/results/fewshot_meta.json``)."""
    check_inner(inner_steps, inner_lr)
    if not (isinstance(unroll, bool) or (isinstance(unroll, numbers.Integral) and unroll >= 1)):
        raise ValueError(f"unroll must be a bool or an int >= 1, got {unroll!r}")
    grad_fn = jax.grad(loss_fn, has_aux=has_aux)

    def step(p, _):
        g = grad_fn(p, batch)
        if has_aux:
            g = g[0]
        if first_order:
            g = jax.lax.stop_gradient(g)
        return jax.tree.map(lambda w, gw: (w - inner_lr * gw).astype(w.dtype), p, g), None

    adapted, _ = jax.lax.scan(step, params, None, length=inner_steps, unroll=unroll)
    return adapted


def meta_loss(
    loss_fn: LossFn,
    params: Any,
    support: Any,
    query: Any,
    *,
    inner_steps: int,
    inner_lr: ArrayLike,
    first_order: bool = False,
    has_aux: bool = False,
    unroll: int | bool = True,
) -> Any:
    """One task's MAML objective (Eq. 2): ``loss_fn(inner_loop(params, support), query)``
    (with its aux when ``has_aux``). Its gradient w.r.t. ``params`` is the meta-gradient."""
    adapted = inner_loop(
        loss_fn,
        params,
        support,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        first_order=first_order,
        has_aux=has_aux,
        unroll=unroll,
    )
    return loss_fn(adapted, query)


def meta_batch_loss(
    loss_fn: LossFn,
    params: Any,
    supports: Any,
    queries: Any,
    *,
    inner_steps: int,
    inner_lr: ArrayLike,
    first_order: bool = False,
    has_aux: bool = False,
    unroll: int | bool = True,
) -> Any:
    """Mean of ``meta_loss`` over a meta-batch of tasks (Eq. 3, Algorithm 2): every leaf of
    ``supports`` / ``queries`` carries a leading task axis, and the tasks run ``jax.vmap``ped
    (one program, the same ``params``). With ``has_aux`` the aux is averaged over tasks too."""
    sizes = {x.shape[0] if jnp.ndim(x) else None for x in jax.tree.leaves((supports, queries))}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(
            "supports and queries need one leading task axis of the same size >= 1 on every "
            f"leaf, got sizes {sorted(sizes, key=str)}"
        )

    def one(s, q):
        return meta_loss(
            loss_fn,
            params,
            s,
            q,
            inner_steps=inner_steps,
            inner_lr=inner_lr,
            first_order=first_order,
            has_aux=has_aux,
            unroll=unroll,
        )

    return jax.tree.map(lambda x: jnp.mean(x, axis=0), jax.vmap(one)(supports, queries))


def episode_ce(apply: Callable[[Any, jax.Array], jax.Array]) -> LossFn:
    """``loss_fn(params, x) -> (cross-entropy, accuracy)`` of a class-major episode part
    ``x (way, n, ...)`` (row ``c`` has label ``c``) under ``apply(params, inputs) -> logits``."""

    def loss_fn(params, x):
        way, n = x.shape[:2]
        logits = apply(params, x.reshape(way * n, *x.shape[2:]))
        return cross_entropy(logits, episode_labels(way, n))

    return loss_fn


def check_way(support: jax.Array, way: int) -> None:
    """``ValueError`` unless ``support`` is laid out ``(way, shot, ...)`` for a head of
    exactly ``way`` outputs."""
    if support.ndim < 3:
        raise ValueError(f"support must be (way, shot, ...), got shape {support.shape}")
    if support.shape[0] != way:
        raise ValueError(
            f"episode way={support.shape[0]} (support shape {support.shape}) does not match "
            f"the head's way={way}; build the model with way={support.shape[0]}"
        )


def _check_query(support: jax.Array, query: jax.Array) -> None:
    if query.shape[:1] != support.shape[:1] or query.shape[2:] != support.shape[2:]:
        raise ValueError(
            f"query must be (way, query, ...) like support {support.shape}, got {query.shape}"
        )


class MetaLearner(FewShotModel):
    """What MAML and ANIL share: a flattened backbone (``build_backbone``), a linear head of
    ``way`` outputs (``nnx.Linear(feat_dim, way)``, so ``way`` is fixed at construction),
    episodic training, and the inner-loop settings. ``inner_lr`` / ``inner_steps`` left None
    take the method's ``default_inner_lr`` / ``default_inner_steps``; ``test_inner_steps``
    None is ``inner_steps``. Bad values raise ``ValueError`` naming them."""

    training = "episodic"
    default_inner_lr: float = 1e-2
    default_inner_steps: int = 5

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        way: int = 5,
        inner_lr: float | None = None,
        inner_steps: int | None = None,
        test_inner_steps: int | None = None,
        first_order: bool = False,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        if isinstance(way, bool) or not isinstance(way, numbers.Integral) or way < 2:
            raise ValueError(f"way must be an int >= 2, got {way!r}")
        inner_lr = self.default_inner_lr if inner_lr is None else inner_lr
        inner_steps = self.default_inner_steps if inner_steps is None else inner_steps
        check_inner(inner_steps, inner_lr)
        if test_inner_steps is not None:
            check_inner(test_inner_steps, inner_lr, "test_inner_steps")
        self.backbone = build_backbone(backbone, in_channels, width=width, rngs=rngs)
        self.head = nnx.Linear(feat_dim, way, rngs=rngs)
        self.way, self.feat_dim = int(way), feat_dim
        self.inner_lr, self.inner_steps = inner_lr, int(inner_steps)
        self.test_inner_steps = int(
            self.inner_steps if test_inner_steps is None else test_inner_steps
        )
        self.first_order = bool(first_order)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.embed(x))

    def inner_kwargs(self, inner_steps: int | None = None) -> dict:
        """``inner_loop``'s settings; ``inner_steps`` None: ``test_inner_steps``."""
        steps = self.test_inner_steps if inner_steps is None else inner_steps
        return dict(inner_steps=steps, inner_lr=self.inner_lr, first_order=self.first_order)


class MAML(MetaLearner):
    """MAML on Conv64F (flattened) + a linear head of ``way`` outputs: the whole network is
    adapted per episode, by ``inner_steps`` SGD steps of ``inner_lr`` on the support set
    (``test_inner_steps`` at test time), and meta-trained by the query loss after adaptation.

    Defaults are FewSAR's ``config/maml.yaml`` (``inner_param: lr 1e-2, iter 5``, one
    ``iter`` for training and testing; Conv64F flattened, a ``Linear(feat_dim, way)`` head),
    second order as its ``create_graph=True``.

    BatchNorm: as LibFewShot's ``BatchNorm2d_fw`` (which MAML's ``convert_maml_module`` puts
    everywhere), every forward pass normalises with the statistics of its own batch, in
    training *and* at test: the support pass of each inner step uses the support set's
    statistics, the query pass the query set's (so testing is transductive over the
    episode's queries). Running statistics are never used nor updated (the reference's are
    fresh zeros/ones every call). BatchNorm's scale and offset are adapted with the rest.
    """

    test_on = "images"
    default_inner_lr = 1e-2  # FewSAR config/maml.yaml, inner_param.lr
    default_inner_steps = 5  # FewSAR config/maml.yaml, inner_param.iter

    def functional(self) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
        """``(apply, params)``: the network as a pure function ``apply(params, x) -> logits``
        (BatchNorm on batch statistics, whatever the module's mode; the statistics it would
        update are discarded) and its ``nnx.Param`` tree (pure arrays, differentiable)."""
        view = nnx.view(self, use_running_average=False, raise_if_not_found=False)
        graphdef, params, rest = nnx.split(view, nnx.Param, ...)
        rest = nnx.as_pure(rest)

        def apply(p, x):
            return nnx.merge(graphdef, p, rest)(x)

        return apply, nnx.as_pure(params)

    def adapt(self, support_x: jax.Array, *, inner_steps: int | None = None) -> Any:
        """The adapted ``nnx.Param`` tree (pure) after ``inner_steps`` (default
        ``test_inner_steps``) steps on ``support_x (way, shot, H, W, C)``."""
        return self._adapt(*self.functional(), support_x, inner_steps)

    def _adapt(self, apply, params, support_x, inner_steps=None):
        check_way(support_x, self.way)
        kw = self.inner_kwargs(inner_steps)
        return inner_loop(episode_ce(apply), params, support_x, has_aux=True, **kw)

    def episode_loss(self, support_x: jax.Array, query_x: jax.Array):
        """Query cross-entropy after adapting on the support set (``(loss, {"accuracy"})``);
        its gradient is the (second-order unless ``first_order``) meta-gradient."""
        check_way(support_x, self.way)
        _check_query(support_x, query_x)
        return self._outer(meta_loss, support_x, query_x)

    def meta_batch_loss(self, support_x: jax.Array, query_x: jax.Array):
        """``episode_loss`` averaged over a meta-batch: ``support_x (T, way, shot, H, W, C)``,
        ``query_x (T, way, query, H, W, C)``, the ``T`` tasks ``vmap``ped (Algorithm 2)."""
        if support_x.ndim < 4 or query_x.ndim < 4:
            raise ValueError(
                f"meta-batch must be (tasks, way, n, ...), got {support_x.shape} / {query_x.shape}"
            )
        check_way(support_x[0], self.way)
        _check_query(support_x[0], query_x[0])
        return self._outer(meta_batch_loss, support_x, query_x)

    def _outer(self, objective, support_x, query_x):
        apply, params = self.functional()
        kw = self.inner_kwargs(self.inner_steps)
        loss, acc = objective(episode_ce(apply), params, support_x, query_x, has_aux=True, **kw)
        return loss, {"accuracy": acc}

    def predict_images(self, support_x: jax.Array, query_x: jax.Array, key: jax.Array):
        """Query scores ``(way * query, way)`` of the network adapted on ``support_x`` with
        ``test_inner_steps`` steps (``query_x (way, query, H, W, C)``); ``key`` is unused."""
        del key
        check_way(support_x, self.way)
        _check_query(support_x, query_x)
        apply, params = self.functional()
        adapted = self._adapt(apply, params, support_x)
        return apply(adapted, query_x.reshape(-1, *query_x.shape[2:]))
