"""FEAT: few-shot embedding adaptation with a set-to-set Transformer (Ye et al., CVPR 2020)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy, episode_labels
from jaxcomp.fewshot.metric.protonet import euclidean_logits, prototypes


class SelfAttention(nnx.Module):
    """One-head scaled dot-product self-attention with residual + LayerNorm (FEAT Sec. 4):
    ``LN(x + Dropout(FC(softmax(Q K^T / sqrt(d)) V)))``, attention dropout 0.1."""

    def __init__(self, dim: int, *, dropout: float = 0.5, rngs: nnx.Rngs):
        std = float(np.sqrt(2.0 / (dim + dim)))
        init = nnx.initializers.normal(std)
        self.wq = nnx.Linear(dim, dim, use_bias=False, kernel_init=init, rngs=rngs)
        self.wk = nnx.Linear(dim, dim, use_bias=False, kernel_init=init, rngs=rngs)
        self.wv = nnx.Linear(dim, dim, use_bias=False, kernel_init=init, rngs=rngs)
        self.fc = nnx.Linear(dim, dim, kernel_init=nnx.initializers.xavier_normal(), rngs=rngs)
        self.ln = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.attn_drop = nnx.Dropout(0.1, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.dim = dim

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (..., set, dim)`` -> the adapted set, same shape."""
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        attn = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / np.sqrt(self.dim), axis=-1)
        out = self.attn_drop(attn) @ v
        return self.ln(x + self.drop(self.fc(out)))


class FEAT(FewShotModel):
    """Conv64F (flattened) + set-to-set attention on the prototypes; loss
    ``CE(query) + balance * CE(contrastive regulariser)`` (Eq. 9), the regulariser classifying
    every support and query embedding against the centres of its class's attention-adapted
    (support + query) set with ``temperature2``.

    The fork's regulariser targets concatenate all support labels then all query labels while
    its logits are ordered class by class; here the targets are the rows' true classes. The fork
    also puts ``balance`` on the query term (``balance * CE + reg``); we follow the paper.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        temperature: float = 1.0,
        temperature2: float = 1.0,
        balance: float = 0.5,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        self.backbone = build_backbone(backbone, in_channels, width=width, rngs=rngs)
        self.attn = SelfAttention(feat_dim, rngs=rngs)
        self.temperature, self.temperature2, self.balance = temperature, temperature2, balance

    def logits(self, support, query):
        protos = self.attn(prototypes(support)[None])[0]
        return euclidean_logits(query, protos, self.temperature)

    def episode_loss(self, support_x, query_x):
        way, q = query_x.shape[:2]
        shot = support_x.shape[1]
        fs, fq = self.embed_episode(support_x, query_x)
        loss1, acc = cross_entropy(self.logits(fs, fq), episode_labels(way, q))
        tasks = jnp.concatenate([fs, fq.reshape(way, q, -1)], axis=1)  # (way, shot+q, D)
        centres = self.attn(tasks).mean(axis=1)  # (way, D)
        reg = euclidean_logits(tasks.reshape(way * (shot + q), -1), centres, self.temperature2)
        loss_reg, _ = cross_entropy(reg, episode_labels(way, shot + q))
        return loss1 + self.balance * loss_reg, {"accuracy": acc, "loss_reg": loss_reg}
