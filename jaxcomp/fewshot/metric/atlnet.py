"""ATL-Net: task-aware local representations (Dong et al., IJCAI 2020)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcomp.fewshot.backbones import _bn, descriptor_backbone
from jaxcomp.fewshot.base import FewShotModel
from jaxcomp.fewshot.metric.dn4 import l2_normalize, local_descriptors


class AEAModule(nnx.Module):
    """Adaptive episodic attention (Sec. 3.2): a per-query-descriptor threshold
    ``t = from + interval * sigmoid(MLP(q))`` and the soft mask
    ``sigmoid(atten_scale * (f_x - t))``, L1-normalised over the support descriptors."""

    def __init__(
        self,
        feat_dim: int,
        *,
        atten_scale: float,
        from_value: float,
        value_interval: float,
        rngs: nnx.Rngs,
    ):
        self.fc1 = nnx.Linear(feat_dim, max(feat_dim // 16, 1), rngs=rngs)
        self.fc2 = nnx.Linear(max(feat_dim // 16, 1), 1, rngs=rngs)
        self.atten_scale, self.from_value, self.value_interval = (
            atten_scale,
            from_value,
            value_interval,
        )

    def __call__(self, q: jax.Array, f_x: jax.Array) -> jax.Array:
        t = jax.nn.sigmoid(self.fc2(jax.nn.leaky_relu(self.fc1(q), 0.2)))
        t = t * self.value_interval + self.from_value  # (M, L, 1)
        mask = jax.nn.sigmoid(self.atten_scale * (f_x - t))
        return mask / jnp.maximum(jnp.sum(jnp.abs(mask), -1, keepdims=True), 1e-12)


def atl_scores(
    support: jax.Array,
    query: jax.Array,
    w_support: jax.Array,
    w_query: jax.Array,
    aea: AEAModule,
    scale: float,
) -> jax.Array:
    """ATL-Net scores (Eq. 5-7): attention from the transformed descriptors ``w_*`` gates the
    cosine match of the raw descriptors; summed over a support image's descriptors, averaged
    over query descriptors and shots, times ``scale``. ``-> (M, way)``."""
    way, shot = support.shape[:2]
    c = support.shape[-1]
    wq = l2_normalize(local_descriptors(w_query))  # (M, L, C)
    ws = l2_normalize(local_descriptors(w_support)).reshape(-1, c)  # (way*shot*L, C)
    mask = aea(wq, wq @ ws.T)  # (M, L, way*shot*L)
    q = l2_normalize(local_descriptors(query))
    s = l2_normalize(local_descriptors(support)).reshape(-1, c)
    match = (mask * (q @ s.T)).reshape(q.shape[0], q.shape[1], way, shot, -1)
    return match.sum(-1).mean(axis=(1, 3)) * scale


class ATLNet(FewShotModel):
    """Conv64F (LeakyReLU, last two blocks unpooled as DN4) + W (1x1 conv, BN, LeakyReLU) + AEA + match."""

    def __init__(
        self,
        in_channels: int,
        *,
        scale: float = 30.0,
        atten_scale: float = 50.0,
        from_value: float = 0.4,
        value_interval: float = 0.5,
        backbone: str = "conv64f",
        width: int = 64,
        pools=(True, True, False, False),
        rngs: nnx.Rngs,
    ):
        self.backbone = descriptor_backbone(
            backbone, in_channels, width=width, pools=pools, rngs=rngs
        )
        c = self.backbone.width
        self.w_conv = nnx.Conv(c, c, (1, 1), use_bias=False, rngs=rngs)
        self.w_bn = _bn(c, rngs=rngs)
        self.aea = AEAModule(
            c,
            atten_scale=atten_scale,
            from_value=from_value,
            value_interval=value_interval,
            rngs=rngs,
        )
        self.scale = scale

    def _w(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        x = x.reshape(-1, *shape[-3:])
        return jax.nn.leaky_relu(self.w_bn(self.w_conv(x)), 0.2).reshape(shape)

    def logits(self, support, query):
        return atl_scores(support, query, self._w(support), self._w(query), self.aea, self.scale)
