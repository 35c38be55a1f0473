"""MTL: meta-transfer learning (Sun, Liu, Chua & Schiele, "Meta-Transfer Learning for Few-Shot
Learning", CVPR 2019; FewSAR's ``mtl_pretrain.py``, ``mtl.py`` and ``mtl_module.py``).

- **Phase 0 (pretraining)**: backbone + an MLP classifier ``Linear(D, 1000) -> ReLU ->
  Linear(1000, base classes)`` trained with cross-entropy on the base classes.
- **Phase 1 (meta-transfer)**: every convolution's pretrained kernel and bias are frozen; each
  gets a learnable per-(input, output)-channel **scaling** ``Phi_S1`` (init 1, multiplying the
  kernel) and a per-output-channel **shifting** ``Phi_S2`` (init 0, added to the bias). The MLP
  is dropped. A base learner ``theta = (W (way, D), b)`` (W Kaiming-normal, b zero; its
  initialisation is meta-learned) is adapted on each episode's support features by ``inner_iters``
  SGD steps of ``inner_lr`` (the reference: 10 steps of 0.01), and the query cross-entropy of the
  adapted learner trains scaling, shifting, BatchNorm and the learner's initialisation. The
  reference's inner gradients are not differentiated (``torch.autograd.grad`` without
  ``create_graph``): first order, the default here (``first_order=False`` differentiates them).
- **Test**: the adapted-head prediction on frozen (scaled and shifted) backbone features.

The inner loop is a ``lax.scan``; the scale/shift wrapper (``ScaleShiftConv``) replaces each
``nnx.Conv`` of any backbone (``meta_transfer``), so it works for Conv64F and ResNet-12 alike.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy, frozen_copy
from jaxcomp.fewshot.meta.maml import check_inner, inner_loop


class ScaleShiftConv(nnx.Module):
    """``conv(x; W * Phi_S1, b + Phi_S2)`` around a frozen ``nnx.Conv`` (MTL's ``Conv2dMtl``):
    ``scale`` is ``(1, 1, in, out)`` (init 1), ``shift`` is ``(out,)`` (init 0, only when the
    convolution has a bias, as the reference)."""

    def __init__(self, conv: nnx.Conv):
        if conv.feature_group_count != 1:
            raise ValueError(
                f"grouped convolutions are not supported, got {conv.feature_group_count} groups"
            )
        self.conv = frozen_copy(conv)
        self.scale = nnx.Param(jnp.ones((1, 1, conv.in_features, conv.out_features)))
        self.shift = nnx.Param(jnp.zeros((conv.out_features,))) if conv.use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.conv
        kernel = c.kernel[...] * self.scale[...]
        n = len(c.kernel_size)
        strides = c.strides if isinstance(c.strides, tuple | list) else (c.strides,) * n
        dil = (
            c.kernel_dilation
            if isinstance(c.kernel_dilation, tuple | list)
            else ((c.kernel_dilation,) * n)
        )
        y = jax.lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            window_strides=tuple(strides),
            padding=c.padding,
            rhs_dilation=tuple(dil),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if c.use_bias:
            y = y + (c.bias[...] + self.shift[...]).astype(y.dtype)
        return y


def meta_transfer(module: nnx.Module) -> int:
    """Replace, in place, every ``nnx.Conv`` inside ``module`` by a ``ScaleShiftConv`` around it.
    Returns how many were replaced."""
    targets = [
        path for path, m in nnx.iter_modules(module) if isinstance(m, nnx.Conv) and len(path) > 0
    ]
    for path in targets:
        parent = module
        for p in path[:-1]:
            parent = parent[p] if isinstance(p, int) else getattr(parent, p)
        conv = parent[path[-1]] if isinstance(path[-1], int) else getattr(parent, path[-1])
        wrapped = ScaleShiftConv(conv)
        if isinstance(path[-1], int):
            parent[path[-1]] = wrapped
        else:
            setattr(parent, path[-1], wrapped)
    return len(targets)


def adapt_linear_head(
    w: jax.Array,
    b: jax.Array,
    feats: jax.Array,
    labels: jax.Array,
    *,
    lr: float,
    steps: int,
    first_order: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """``steps`` SGD steps of ``lr`` on the cross-entropy of ``feats @ w.T + b`` (``w`` is
    ``(way, D)`` as ``torch.nn.functional.linear``): MAML's ``inner_loop`` on the base learner.
    ``first_order``: the inner gradients are constants for an outer derivative (the reference's
    behaviour)."""

    def loss(theta, batch):
        x, y = batch
        logits = x @ theta[0].T + theta[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return inner_loop(
        loss, (w, b), (feats, labels), inner_steps=steps, inner_lr=lr, first_order=first_order
    )


class MTL(FewShotModel):
    """Pretrained backbone + MLP (phase 0), then scaling/shifting + a meta-learned, per-episode
    adapted linear base learner (phase 1); see the module docstring."""

    training = ("pretrain", "episodic")

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        num_classes: int,
        way: int = 5,
        hidden: int = 1000,
        inner_lr: float = 1e-2,
        inner_iters: int = 10,
        first_order: bool = True,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        check_inner(inner_iters, inner_lr, "inner_iters")
        if way < 2:
            raise ValueError(f"way must be >= 2, got {way}")
        self.backbone = build_backbone(backbone, in_channels, width=width, rngs=rngs)
        self.pre_fc = nnx.Sequential(
            nnx.Linear(feat_dim, hidden, rngs=rngs),
            jax.nn.relu,
            nnx.Linear(hidden, num_classes, rngs=rngs),
        )
        # kaiming_normal_ on (way, D): std = sqrt(2 / fan_in), fan_in = D
        std = math.sqrt(2.0 / feat_dim)
        self.learner_w = nnx.Param(std * jax.random.normal(rngs.params(), (way, feat_dim)))
        self.learner_b = nnx.Param(jnp.zeros((way,)))
        self.way, self.feat_dim = way, feat_dim
        self.inner_lr, self.inner_iters, self.first_order = inner_lr, inner_iters, first_order
        self.phase = 0

    def start_phase(self, phase: int, rngs: nnx.Rngs) -> None:
        """Phase 1: freeze the convolutions behind scaling/shifting, drop the MLP."""
        del rngs
        if phase != 1:
            raise ValueError(f"MTL has phases 0 and 1, got {phase}")
        meta_transfer(self.backbone)
        self.pre_fc = None
        self.phase = 1

    def classify_loss(self, x: jax.Array, y: jax.Array):
        loss, acc = cross_entropy(self.pre_fc(self.embed(x)), y)
        return loss, {"accuracy": acc}

    def _adapted_logits(self, support: jax.Array, query: jax.Array) -> jax.Array:
        way, shot = support.shape[:2]
        if way != self.way:
            raise ValueError(f"episode has {way} ways, the base learner {self.way}")
        w, b = adapt_linear_head(
            self.learner_w[...],
            self.learner_b[...],
            support.reshape(way * shot, -1),
            jnp.repeat(jnp.arange(way), shot),
            lr=self.inner_lr,
            steps=self.inner_iters,
            first_order=self.first_order,
        )
        return query.reshape(query.shape[0], -1) @ w.T + b

    def logits(self, support, query):
        return self._adapted_logits(support, query)
