"""R2-D2: ridge regression differentiable discriminator (Bertinetto, Henriques, Torr & Vedaldi,
"Meta-learning with differentiable closed-form solvers", ICLR 2019).

The base learner of an episode is ridge regression from the support features ``X (S, D)``
(``S = way * shot``) to one-hot targets ``Y (S, way)``, solved in closed form::

    W = (X^T X + lambda I_D)^{-1} X^T Y      (primal, a D x D system)
      = X^T (X X^T + lambda I_S)^{-1} Y      (Woodbury identity, an S x S system)

Few-shot episodes have ``S << D`` (25 support images vs 1600 Conv64F features), so the Woodbury
form is the cheap one; ``ridge_regression`` picks the smaller system from the (static) shapes.
The query scores go through the paper's "adjust" layer ``alpha * X' W + beta``, and
``lambda``, ``alpha``, ``beta`` are meta-learned with the backbone by back-propagating through
the solve (``jnp.linalg.solve`` is differentiable).

Defaults follow FewSAR's ``core/model/meta/r2d2.py`` (``R2D2Layer``: lambda 50, alpha 1,
beta 0, no bias column, one-hot targets) and ``config/r2d2.yaml`` (Conv64F with LeakyReLU 0.2).
Here lambda is parametrised by its logarithm, so it stays positive.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel
from jaxcomp.fewshot.meta.checks import check_episode_features

RIDGE_FORMS = ("auto", "primal", "dual")


def ridge_form(num_samples: int, dim: int) -> str:
    """The cheaper closed form for ``num_samples`` rows of ``dim`` features: ``"dual"``
    (Woodbury, ``num_samples x num_samples``) when ``dim > num_samples``, else ``"primal"``."""
    return "dual" if dim > num_samples else "primal"


def with_bias_column(x: jax.Array) -> jax.Array:
    """``[x, 1]``: a constant feature whose weight is the regression's bias."""
    return jnp.concatenate([x, jnp.ones((*x.shape[:-1], 1), x.dtype)], axis=-1)


def ridge_regression(
    x: jax.Array, y: jax.Array, lam: jax.Array | float, *, form: str = "auto"
) -> jax.Array:
    """Ridge-regression weights ``W (D, C)`` minimising ``||X W - Y||^2 + lam ||W||^2``
    (R2-D2's base learner) for ``x (S, D)`` and targets ``y (S, C)``.

    ``form="primal"`` solves ``(X^T X + lam I) W = X^T Y``; ``"dual"`` the Woodbury form
    ``W = X^T (X X^T + lam I)^{-1} Y`` (Woodbury); ``"auto"`` the smaller system (``ridge_form``).
    Both give the same ``W`` and are differentiable in ``x``, ``y`` and ``lam``."""
    if form not in RIDGE_FORMS:
        raise ValueError(f"form must be one of {RIDGE_FORMS}, got {form!r}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x must be (S, D) and y (S, C) with the same S, got {x.shape} and {y.shape}"
        )
    s, d = x.shape
    if form == "auto":
        form = ridge_form(s, d)
    if form == "dual":
        gram = x @ x.T + lam * jnp.eye(s, dtype=x.dtype)
        return x.T @ jnp.linalg.solve(gram, y)
    cov = x.T @ x + lam * jnp.eye(d, dtype=x.dtype)
    return jnp.linalg.solve(cov, x.T @ y)


def r2d2_logits(
    support: jax.Array,
    query: jax.Array,
    lam: jax.Array | float,
    scale: jax.Array | float = 1.0,
    offset: jax.Array | float = 0.0,
    *,
    bias: bool = False,
    form: str = "auto",
) -> jax.Array:
    """R2-D2 scores ``scale * (X' W [+ b]) + offset`` of ``query (M, D)`` with ``W`` the ridge
    solution on ``support (way, shot, D)`` and one-hot targets (the adjust layer).
    With ``bias`` a column of ones is appended to the features (the paper's code; FewSAR's has
    none). Returns ``(M, way)``."""
    check_episode_features(support, query)
    way, shot, _ = support.shape
    x = support.reshape(way * shot, -1)
    y = jnp.repeat(jnp.eye(way, dtype=x.dtype), shot, axis=0)
    if bias:
        x, query = with_bias_column(x), with_bias_column(query)
    w = ridge_regression(x, y, lam, form=form)
    return scale * (query @ w) + offset


class R2D2(FewShotModel):
    """Conv64F (flattened, LeakyReLU 0.2 as FewSAR's r2d2.yaml) + differentiable ridge
    regression on the support features, with a meta-learned ``lambda`` (``exp(log_lambda)``)
    and adjust layer ``alpha``, ``beta``. Trained episodically; tested on frozen features."""

    def __init__(
        self,
        in_channels: int,
        *,
        lambda_init: float = 50.0,
        scale_init: float = 1.0,
        offset_init: float = 0.0,
        bias: bool = False,
        leaky_relu: bool = True,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        if not lambda_init > 0:
            raise ValueError(f"lambda_init must be > 0 (ridge penalty), got {lambda_init}")
        self.backbone = build_backbone(
            backbone, in_channels, width=width, leaky_relu=leaky_relu, rngs=rngs
        )
        self.log_lambda = nnx.Param(jnp.asarray(math.log(lambda_init), jnp.float32))
        self.scale = nnx.Param(jnp.asarray(scale_init, jnp.float32))
        self.offset = nnx.Param(jnp.asarray(offset_init, jnp.float32))
        self.bias = bias

    @property
    def ridge_lambda(self) -> jax.Array:
        return jnp.exp(self.log_lambda[...])

    def logits(self, support, query):
        return r2d2_logits(
            support,
            query,
            self.ridge_lambda,
            self.scale[...],
            self.offset[...],
            bias=self.bias,
        )
