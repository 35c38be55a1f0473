"""Relation Network (Sung et al., CVPR 2018): a learned relation module scores (query, class)
feature-map pairs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxcomp.fewshot.backbones import ConvBlock, build_backbone
from jaxcomp.fewshot.base import FewShotModel, episode_labels


def relation_pairs(support: jax.Array, query: jax.Array) -> jax.Array:
    """Concatenate each query map with each class map (the sum of its shots' maps, Sec. 3.3),
    along channels: ``support (way, shot, h, w, C)``, ``query (M, h, w, C)`` ->
    ``(M, way, h, w, 2C)``."""
    cls = support.sum(axis=1)  # (way, h, w, C)
    m, way = query.shape[0], cls.shape[0]
    q = jnp.broadcast_to(query[:, None], (m, way, *query.shape[1:]))
    s = jnp.broadcast_to(cls[None], (m, *cls.shape))
    return jnp.concatenate([q, s], axis=-1)


class RelationModule(nnx.Module):
    """Two [conv3x3, BN, ReLU, maxpool] blocks and FC(8) -> ReLU -> FC(1) (Fig. 2). The convs use
    padding 1 (the paper's padding 0 needs maps of at least 10x10; ours are 8x8)."""

    def __init__(self, channels: int, feat_hw: tuple[int, int], *, rngs: nnx.Rngs):
        self.b1 = ConvBlock(2 * channels, channels, rngs=rngs)
        self.b2 = ConvBlock(channels, channels, rngs=rngs)
        h, w = max(feat_hw[0] // 4, 1), max(feat_hw[1] // 4, 1)
        self.fc1 = nnx.Linear(channels * h * w, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 1, rngs=rngs)
        self.feat_hw = feat_hw

    def __call__(self, pairs: jax.Array) -> jax.Array:
        lead = pairs.shape[:-3]
        x = pairs.reshape(-1, *pairs.shape[-3:])
        x = self.b2(self.b1(x))
        x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x).reshape(lead)


class RelationNet(FewShotModel):
    """Conv64F without pooling in the last two blocks + relation module.

    ``loss="ce"``: cross-entropy on the relation scores (the FewSAR/LibFewShot fork);
    ``loss="mse"``: the paper's sigmoid relation scores regressed to one-hot targets (Eq. 4).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        feat_hw: tuple[int, int],
        loss: str = "ce",
        backbone: str = "conv64f",
        width: int = 64,
        pools=(True, True, False, False),
        rngs: nnx.Rngs,
    ):
        if loss not in ("ce", "mse"):
            raise ValueError(f"loss must be 'ce' or 'mse', got {loss!r}")
        self.backbone = build_backbone(
            backbone, in_channels, width=width, pools=pools, flatten=False, rngs=rngs
        )
        self.relation = RelationModule(self.backbone.width, tuple(feat_hw), rngs=rngs)
        self.loss = loss

    def logits(self, support, query):
        return self.relation(relation_pairs(support, query))

    def episode_loss(self, support_x, query_x):
        way, q = query_x.shape[:2]
        fs, fq = self.embed_episode(support_x, query_x)
        scores = self.logits(fs, fq).astype(jnp.float32)
        labels = episode_labels(way, q)
        if self.loss == "mse":
            loss = jnp.mean((jax.nn.sigmoid(scores) - jax.nn.one_hot(labels, way)) ** 2)
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(scores, labels).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(scores, -1) == labels)}
