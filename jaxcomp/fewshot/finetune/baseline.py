"""Baseline and Baseline++ (Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019).

Training: standard classification of the base classes (a linear head for Baseline, a cosine
"distance" head for Baseline++). Testing: the backbone is frozen and a *new* head of ``way``
outputs is trained on the support features (Sec. 3.1): Adam, ``inner_iters`` passes over the
support set in shuffled minibatches of ``inner_batch_size`` (FewSAR's baseline.yaml: 100
passes, batch 4, lr 1e-3; baseline++.yaml: lr 1e-2). Here the whole fine-tuning is two nested
``lax.scan``s, so it runs jitted and ``vmap``ped over thousands of test episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy


def linear_init(key: jax.Array, in_dim: int, out_dim: int) -> dict[str, jax.Array]:
    """PyTorch ``nn.Linear``'s default init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias."""
    k1, k2 = jax.random.split(key)
    b = 1.0 / math.sqrt(in_dim)
    return {
        "w": jax.random.uniform(k1, (in_dim, out_dim), minval=-b, maxval=b),
        "b": jax.random.uniform(k2, (out_dim,), minval=-b, maxval=b),
    }


def linear_apply(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def cosine_scale(num_classes: int) -> float:
    """Baseline++'s scale: 2 for <= 200 classes, else 10 (CloserLookFewShot's DistLinear)."""
    return 2.0 if num_classes <= 200 else 10.0


def dist_linear_init(key: jax.Array, in_dim: int, out_dim: int) -> dict[str, jax.Array]:
    """Weight-normalised bias-free linear layer: direction ``v`` and per-class norm ``g``
    (initialised to ``||v||``, as ``torch.nn.utils.weight_norm``)."""
    b = 1.0 / math.sqrt(in_dim)
    v = jax.random.uniform(key, (out_dim, in_dim), minval=-b, maxval=b)
    return {"v": v, "g": jnp.linalg.norm(v, axis=1)}


def dist_linear_apply(p: dict[str, jax.Array], x: jax.Array, scale: float) -> jax.Array:
    """Baseline++ scores ``scale * <x/||x||, g_c v_c/||v_c||>`` (Sec. 3.2)."""
    xn = x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)
    w = p["g"][:, None] * p["v"] / jnp.linalg.norm(p["v"], axis=1, keepdims=True)
    return scale * xn @ w.T


def finetune_head(
    init: Callable[[jax.Array], dict],
    apply: Callable[[dict, jax.Array], jax.Array],
    feats: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    lr: float,
    iters: int,
    batch_size: int,
) -> dict:
    """Train a new head ``init(key)`` on ``(feats (S, D), labels (S,))`` with Adam: ``iters``
    passes, each a fresh permutation cut into minibatches of ``batch_size`` (the last one
    smaller, handled by a mask, as PyTorch's loop). Returns the head's parameters."""
    s = feats.shape[0]
    nb = -(-s // batch_size)
    pad = nb * batch_size - s
    k_init, k_perm = jax.random.split(key)
    params = init(k_init)
    tx = optax.adam(lr)
    opt = tx.init(params)
    mask = jnp.concatenate([jnp.ones(s), jnp.zeros(pad)]).reshape(nb, batch_size)

    def loss_fn(p, idx, m):
        logits = apply(p, feats[idx])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx])
        return jnp.sum(ce * m) / jnp.sum(m)

    def minibatch(carry, xs):
        p, o = carry
        idx, m = xs
        g = jax.grad(loss_fn)(p, idx, m)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

    def one_pass(carry, k):
        perm = jnp.concatenate([jax.random.permutation(k, s), jnp.zeros(pad, jnp.int32)])
        return jax.lax.scan(minibatch, carry, (perm.reshape(nb, batch_size), mask))[0], None

    (params, _), _ = jax.lax.scan(one_pass, (params, opt), jax.random.split(k_perm, iters))
    return params


class Baseline(FewShotModel):
    """Conv64F (flattened) + linear classifier over the base classes; fine-tuned linear head
    at test time."""

    training = "pretrain"

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        num_classes: int,
        inner_lr: float = 1e-3,
        inner_iters: int = 100,
        inner_batch_size: int = 4,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        self.backbone = build_backbone(backbone, in_channels, width=width, rngs=rngs)
        self.head = nnx.Linear(feat_dim, num_classes, rngs=rngs)
        self.feat_dim = feat_dim
        self.inner_lr, self.inner_iters, self.inner_batch_size = (
            inner_lr,
            inner_iters,
            inner_batch_size,
        )

    def classify(self, x: jax.Array) -> jax.Array:
        return self.head(self.embed(x))

    def classify_loss(self, x: jax.Array, y: jax.Array):
        loss, acc = cross_entropy(self.classify(x), y)
        return loss, {"accuracy": acc}

    def _head(self, way: int):
        init = lambda k: linear_init(k, self.feat_dim, way)
        return init, linear_apply

    def predict_features(self, support, query, key):
        way, shot = support.shape[:2]
        init, apply = self._head(way)
        p = finetune_head(
            init,
            apply,
            support.reshape(way * shot, -1),
            jnp.repeat(jnp.arange(way), shot),
            key,
            lr=self.inner_lr,
            iters=self.inner_iters,
            batch_size=self.inner_batch_size,
        )
        return apply(p, query.reshape(query.shape[0], -1))

    def logits(self, support, query):
        return self.predict_features(support, query, jax.random.key(0))


class BaselinePlus(Baseline):
    """Baseline++: the classifier is cosine similarity to weight-normalised class vectors times
    a scale (2 for <= 200 classes, else 10), both for pretraining and for the test-time head
    (inner lr 1e-2 in FewSAR's baseline++.yaml)."""

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        num_classes: int,
        inner_lr: float = 1e-2,
        inner_iters: int = 100,
        inner_batch_size: int = 4,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            in_channels,
            feat_dim=feat_dim,
            num_classes=num_classes,
            inner_lr=inner_lr,
            inner_iters=inner_iters,
            inner_batch_size=inner_batch_size,
            backbone=backbone,
            width=width,
            rngs=rngs,
        )
        del self.head
        p = dist_linear_init(rngs.params(), feat_dim, num_classes)
        self.v, self.g = nnx.Param(p["v"]), nnx.Param(p["g"])
        self.scale = cosine_scale(num_classes)

    def classify(self, x):
        return dist_linear_apply({"v": self.v[...], "g": self.g[...]}, self.embed(x), self.scale)

    def _head(self, way: int):
        scale = cosine_scale(way)
        init = lambda k: dist_linear_init(k, self.feat_dim, way)
        return init, lambda p, x: dist_linear_apply(p, x, scale)
