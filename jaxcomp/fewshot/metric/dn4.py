"""DN4: Deep Nearest Neighbor Neural Network (Li et al., CVPR 2019), image-to-class measure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcomp.fewshot.backbones import descriptor_backbone
from jaxcomp.fewshot.base import FewShotModel


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` (``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def local_descriptors(feat: jax.Array) -> jax.Array:
    """``(..., h, w, C) -> (..., h*w, C)``: each spatial position is a local descriptor."""
    return feat.reshape(*feat.shape[:-3], -1, feat.shape[-1])


def dn4_scores(support: jax.Array, query: jax.Array, k: int = 3) -> jax.Array:
    """Image-to-class measure (Eq. 1-2 of DN4): for every query descriptor, the sum of its top-
    ``k`` cosine similarities to all descriptors of a class's support images, summed over the
    query's descriptors. ``support (way, shot, h, w, C)``, ``query (M, h, w, C)`` -> ``(M, way)``.
    """
    way = support.shape[0]
    q = l2_normalize(local_descriptors(query))  # (M, L, C)
    s = l2_normalize(local_descriptors(support)).reshape(way, -1, support.shape[-1])  # (way, KL, C)
    if k > s.shape[1]:
        raise ValueError(f"k={k} is larger than the {s.shape[1]} descriptors per class")
    sim = jnp.einsum("mlc,wjc->mwlj", q, s)
    topk, _ = jax.lax.top_k(sim, k)
    return topk.sum(axis=(-1, -2))


class DN4(FewShotModel):
    """Conv64F with LeakyReLU and no pooling in the last two blocks (the DN4 paper's 21x21
    descriptors at 84x84; the fork's dn4.yaml pools block 3), DN4 head with ``n_k`` neighbours
    (3)."""

    def __init__(
        self,
        in_channels: int,
        *,
        n_k: int = 3,
        backbone: str = "conv64f",
        width: int = 64,
        pools=(True, True, False, False),
        rngs: nnx.Rngs,
    ):
        self.backbone = descriptor_backbone(
            backbone, in_channels, width=width, pools=pools, rngs=rngs
        )
        self.n_k = n_k

    def logits(self, support, query):
        return dn4_scores(support, query, self.n_k)
