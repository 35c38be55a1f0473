"""LEO: Latent Embedding Optimization (Rusu, Rao, Sygnowski, Vinyals, Pascanu, Osindero &
Hadsell, "Meta-Learning with Latent Embedding Optimization", ICLR 2019).

Per episode (the paper's Algorithm 1), on the support features ``x (N, K, D)``:

1. encoder: ``e = W_e x`` per example, then a relation network ``g`` over all pairs
   ``(e_n^k, e_m^l)`` averaged per class gives the Gaussian of class ``n``'s latent code
   ``z_n (h,)``; ``z_n`` is sampled (reparametrised) while meta-training;
2. decoder: ``w_n ~ N(mu(z_n), sigma(z_n))`` with ``(mu, sigma) = W_d z_n``, the
   classifier weights of class ``n``; scores ``x . w_n``;
3. latent inner loop: ``z <- z - alpha * grad_z L_support(decode(z))``;
4. fine-tuning: ``w <- w - eta * grad_w L_support(w)`` on the decoded weights;
5. outer loss on the query set plus ``beta * KL(q(z|x) || N(0, I))``, the encoder penalty
   ``gamma * ||stopgrad(z') - z||^2`` and the decoder orthogonality penalty
   ``lambda_2 * ||C_d - I||^2`` (the meta-training objective).

Both inner loops are ``lax.scan``s differentiated through (second order), and the inner learning
rates ``alpha`` (per latent dimension) and ``eta`` (per feature) are meta-learned, as in
deepmind/leo. Outside meta-training (eval mode) the Gaussians give their means (deepmind/leo's
``possibly_sample``), so the test-time head is deterministic.

Defaults from FewSAR's ``config/leo.yaml`` (lines 36-45): 5 latent steps of lr 1e-2, 5
fine-tuning steps of lr 1e-2, ``hid_dim`` 160 (for Conv64F's 1600 features), KL weight 1e-3,
encoder penalty 1e-9, orthogonality penalty 1e-3; Conv64F with ReLU (line 29).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy, episode_labels
from jaxcomp.fewshot.meta.checks import check_episode_features

_MIN_STD = 1e-10


# ----------------------------------------------------------------------------- pure functions
def gaussian_params(params: jax.Array, stddev_offset: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Split ``params (..., 2d)`` into a mean and a standard deviation
    ``max(elu(u) + stddev_offset, 1e-10)``: deepmind/leo's ``exp(u) - 1 + stddev_offset`` for
    ``u <= 0`` and linear in ``u`` above (as FewSAR's std, the raw layer output), so a large
    ``u`` cannot overflow float32 (deepmind/leo runs in float64)."""
    mean, u = jnp.split(params, 2, axis=-1)
    return mean, jnp.maximum(jax.nn.elu(u) + stddev_offset, _MIN_STD)


def sample_with_kl(mean: jax.Array, std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A reparametrised sample ``z = mean + std * eps`` and the one-sample estimate of
    ``KL(N(mean, std^2) || N(0, 1))`` at it, averaged over the elements,
    ``mean(log q(z) - log p(z)) = mean(z^2 / 2 - eps^2 / 2 - log std)`` (the KL term of LEO's
    objective; deepmind/leo's ``kl_divergence``). ``log q(z)`` is computed from ``eps`` itself:
    recovering it as ``(z - mean) / std`` in float32 cancels catastrophically when
    ``std << |mean|`` (the rounding error of ``z`` divided by a tiny ``std``), which a training
    run exploits by driving the "KL" to large negative values."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    z = mean + std * eps
    return z, jnp.mean(0.5 * z * z - 0.5 * eps * eps - jnp.log(std))


def orthogonality_penalty(w: jax.Array) -> jax.Array:
    """``mean((C - I)^2)`` with ``C`` the correlation (cosine) matrix of the rows of ``w``
    (LEO's ``||C_d - I||^2``; for the decoder, rows are latent dimensions)."""
    norms = jnp.linalg.norm(w, axis=1, keepdims=True) + 1e-20
    corr = (w @ w.T) / (norms @ norms.T)
    return jnp.mean((corr - jnp.eye(w.shape[0], dtype=w.dtype)) ** 2)


def encoder_penalty(z_init: jax.Array, z_adapted: jax.Array) -> jax.Array:
    """``mean((stopgrad(z') - z)^2)``, LEO's encoder penalty: keeps the encoder's codes near
    the adapted ones."""
    return jnp.mean((jax.lax.stop_gradient(z_adapted) - z_init) ** 2)


def relation_codes(codes: jax.Array, relation: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Per-class output of the relation network over all pairs of examples (LEO's encoder):
    ``out_n = 1/(N K^2) sum_{k} sum_{m, l} relation([codes[n, k], codes[m, l]])`` for
    ``codes (N, K, h)``; returns ``(N, out)``."""
    n, k, h = codes.shape
    flat = codes.reshape(n * k, h)
    left = jnp.broadcast_to(flat[:, None], (n * k, n * k, h))
    right = jnp.broadcast_to(flat[None], (n * k, n * k, h))
    out = relation(jnp.concatenate([left, right], axis=-1)).mean(axis=1)
    return out.reshape(n, k, -1).mean(axis=1)


def gradient_steps(
    loss_fn: Callable[[jax.Array, jax.Array | None], jax.Array],
    x0: jax.Array,
    lr: jax.Array | float,
    num_steps: int,
    key: jax.Array | None = None,
) -> jax.Array:
    """``num_steps`` steps ``x <- x - lr * grad_x loss_fn(x, key_t)`` as one ``lax.scan`` (LEO's
    latent adaptation and fine-tuning; differentiable, second order). ``key_t`` is the
    ``t``-th of ``split(key, num_steps)``, or ``None`` without ``key``."""
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    grad = jax.grad(loss_fn)

    def step(x, k):
        return x - lr * grad(x, k), None

    keys = None if key is None else jax.random.split(key, num_steps)
    return jax.lax.scan(step, x0, keys, length=num_steps)[0]


def support_loss(w: jax.Array, x: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of the linear classifier ``w (N, D)`` on ``x (S, D)``."""
    return optax.softmax_cross_entropy_with_integer_labels(x @ w.T, labels).mean()


# ----------------------------------------------------------------------------- the model
class RelationMLP(nnx.Module):
    """Three bias-free linear layers of width ``dim`` with ReLU between them (deepmind/leo's
    ``snt.nets.MLP([2h] * 3, use_bias=False)``: linear last layer)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(dim, dim, use_bias=False, rngs=rngs) for _ in range(3)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class LEO(FewShotModel):
    """Conv64F (flattened) + LEO's encoder / relation network / decoder, latent inner loop and
    fine-tuning of the decoded classifier; trained episodically with the backbone
    (``freeze_backbone=True``: no gradient into the backbone, as FewSAR's ``torch.no_grad()``)."""

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        hid_dim: int = 160,
        inner_lr: float = 1e-2,
        inner_steps: int = 5,
        finetune_lr: float = 1e-2,
        finetune_steps: int = 5,
        kl_weight: float = 1e-3,
        encoder_penalty_weight: float = 1e-9,
        orthogonality_penalty_weight: float = 1e-3,
        freeze_backbone: bool = False,
        leaky_relu: bool = False,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        for name, v in (("inner_steps", inner_steps), ("finetune_steps", finetune_steps)):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if hid_dim < 1:
            raise ValueError(f"hid_dim must be >= 1, got {hid_dim}")
        for name, v in (
            ("kl_weight", kl_weight),
            ("encoder_penalty_weight", encoder_penalty_weight),
            ("orthogonality_penalty_weight", orthogonality_penalty_weight),
        ):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.backbone = build_backbone(
            backbone, in_channels, width=width, leaky_relu=leaky_relu, rngs=rngs
        )
        self.encoder = nnx.Linear(feat_dim, hid_dim, rngs=rngs)
        self.relation = RelationMLP(2 * hid_dim, rngs=rngs)
        self.decoder = nnx.Linear(hid_dim, 2 * feat_dim, rngs=rngs)
        self.inner_lr = nnx.Param(jnp.full((hid_dim,), inner_lr, jnp.float32))
        self.finetune_lr = nnx.Param(jnp.full((feat_dim,), finetune_lr, jnp.float32))
        self.sample_rngs = rngs["sample"].fork()
        self.deterministic = False  # model.eval() sets True: means instead of samples
        self.feat_dim, self.hid_dim = feat_dim, hid_dim
        self.inner_steps, self.finetune_steps = inner_steps, finetune_steps
        self.kl_weight = kl_weight
        self.encoder_penalty_weight = encoder_penalty_weight
        self.orthogonality_penalty_weight = orthogonality_penalty_weight
        self.freeze_backbone = freeze_backbone

    def decode(self, z: jax.Array, key: jax.Array | None) -> jax.Array:
        """Classifier weights ``(N, D)`` of the latent codes ``z (N, h)``: a sample of the
        decoder's Gaussian with ``key``, its mean without. The stddev offset
        ``sqrt(2 / (D + N))`` (Glorot's scale) is deepmind/leo's."""
        offset = math.sqrt(2.0 / (self.feat_dim + z.shape[0]))
        mean, std = gaussian_params(self.decoder(z), offset)
        return mean if key is None else mean + std * jax.random.normal(key, mean.shape)

    def adapt(self, support: jax.Array, key: jax.Array | None):
        """LEO's inner loop on ``support (N, K, D)``: ``(weights (N, D), kl, encoder_penalty)``.
        ``key=None`` takes every Gaussian's mean (no KL, no penalty)."""
        n, k, d = support.shape
        x, labels = support.reshape(n * k, d), episode_labels(n, k)
        mean_z, std_z = gaussian_params(relation_codes(self.encoder(support), self.relation))
        if key is None:
            z0, kl, k_inner, k_final = mean_z, jnp.zeros(()), None, None
        else:
            k_z, k_inner, k_final = jax.random.split(key, 3)
            z0, kl = sample_with_kl(mean_z, std_z, k_z)
        z = gradient_steps(
            lambda z, kk: support_loss(self.decode(z, kk), x, labels),
            z0,
            self.inner_lr[...],
            self.inner_steps,
            k_inner,
        )
        w = gradient_steps(
            lambda w, _: support_loss(w, x, labels),
            self.decode(z, k_final),
            self.finetune_lr[...],
            self.finetune_steps,
        )
        pen = jnp.zeros(()) if key is None else encoder_penalty(z0, z)
        return w, kl, pen

    def _scores(self, support, query, key):
        check_episode_features(support, query, self.feat_dim)
        w, kl, pen = self.adapt(support, None if self.deterministic else key)
        return query @ w.T, kl, pen

    def logits(self, support, query):
        key = None if self.deterministic else self.sample_rngs()
        return self._scores(support, query, key)[0]

    def predict_features(self, support, query, key):
        return self._scores(support, query, key)[0]

    def episode_loss(self, support_x, query_x):
        way, q = query_x.shape[:2]
        fs, fq = self.embed_episode(support_x, query_x)
        if self.freeze_backbone:
            fs, fq = jax.lax.stop_gradient(fs), jax.lax.stop_gradient(fq)
        key = None if self.deterministic else self.sample_rngs()
        scores, kl, pen = self._scores(fs, fq, key)
        ce, acc = cross_entropy(scores, episode_labels(way, q))
        orth = orthogonality_penalty(self.decoder.kernel[...])
        loss = (
            ce
            + self.kl_weight * kl
            + self.encoder_penalty_weight * pen
            + self.orthogonality_penalty_weight * orth
        )
        return loss, {"accuracy": acc, "kl": kl, "orthogonality": orth, "query_ce": ce}
