"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel


def prototypes(support: jax.Array) -> jax.Array:
    """Class prototypes ``c_k = mean_i f(x_i)`` over the shots (Eq. 1): ``(way, shot, D) -> (way, D)``."""
    return support.mean(axis=1)


def euclidean_logits(query: jax.Array, protos: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``-||f(x) - c_k||^2 / temperature`` (Eq. 2 with the squared Euclidean distance), ``(M, way)``."""
    d = (
        jnp.sum(query**2, -1, keepdims=True)
        - 2.0 * query @ protos.T
        + jnp.sum(protos**2, -1)[None, :]
    )
    return -d / temperature


def protonet_logits(support: jax.Array, query: jax.Array) -> jax.Array:
    """ProtoNet scores of ``query (M, D)`` against the prototypes of ``support (way, shot, D)``."""
    return euclidean_logits(query, prototypes(support))


class ProtoNet(FewShotModel):
    """Conv64F (flattened) + nearest prototype in squared Euclidean distance."""

    def __init__(
        self, in_channels: int, *, backbone: str = "conv64f", width: int = 64, rngs: nnx.Rngs
    ):
        self.backbone = build_backbone(backbone, in_channels, width=width, rngs=rngs)

    def logits(self, support, query):
        return protonet_logits(support, query)
