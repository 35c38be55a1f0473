"""CovaMNet: covariance metric networks (Li et al., AAAI 2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcomp.fewshot.backbones import descriptor_backbone
from jaxcomp.fewshot.base import FewShotModel
from jaxcomp.fewshot.metric.dn4 import local_descriptors


def class_covariance(support: jax.Array) -> jax.Array:
    """Local covariance of each class (Eq. 3): the ``shot*h*w`` descriptors of a class centred by
    their mean, ``X^T X / (h*w - 1)`` (the FewSAR/LibFewShot normalisation). ``(way, shot, h, w,
    C) -> (way, C, C)``."""
    way, shot, h, w, c = support.shape
    x = support.reshape(way, shot * h * w, c)
    x = x - x.mean(axis=1, keepdims=True)
    return jnp.einsum("wnc,wnd->wcd", x, x) / (h * w - 1)


def covariance_similarity(support: jax.Array, query: jax.Array) -> jax.Array:
    """Covariance metric (Eq. 4): for each query descriptor ``q_l`` (centred over the query's
    positions, as the fork), ``q_l^T Sigma_c q_l``. ``-> (M, way, h*w)``."""
    cov = class_covariance(support)
    q = local_descriptors(query)
    q = q - q.mean(axis=1, keepdims=True)
    return jnp.einsum("mlc,wcd,mld->mwl", q, cov, q)


class CovaMNet(FewShotModel):
    """Conv64F (LeakyReLU, no pooling in the last two blocks) + covariance metric; the
    ``h*w`` similarities of a class go through LeakyReLU(0.2), dropout 0.5 and a learned
    ``Conv1d(kernel=h*w, stride=h*w)`` (a weight per position, shared by all classes)."""

    def __init__(
        self,
        in_channels: int,
        *,
        num_local: int,
        backbone: str = "conv64f",
        width: int = 64,
        pools=(True, True, False, False),
        rngs: nnx.Rngs,
    ):
        self.backbone = descriptor_backbone(
            backbone, in_channels, width=width, pools=pools, rngs=rngs
        )
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        bound = 1.0 / float(num_local) ** 0.5  # torch Conv1d default init
        key = rngs.params()
        k1, k2 = jax.random.split(key)
        self.weight = nnx.Param(jax.random.uniform(k1, (num_local,), minval=-bound, maxval=bound))
        self.bias = nnx.Param(jax.random.uniform(k2, (), minval=-bound, maxval=bound))
        self.num_local = num_local

    def logits(self, support, query):
        sim = covariance_similarity(support, query)
        if sim.shape[-1] != self.num_local:
            raise ValueError(
                f"num_local={self.num_local} but the feature map has {sim.shape[-1]} positions"
            )
        sim = self.dropout(jax.nn.leaky_relu(sim, 0.2))
        return sim @ self.weight[...] + self.bias[...]
