"""The InDistill auxiliary / student CNN (Sarridis et al. 2022, Sec. 4.1; the reference code's
``Cnn32`` and ``Cnn32_Small``).

Three blocks of ``conv3x3 (valid, with bias) -> BatchNorm -> ReLU -> maxpool 2``, then
``fc1 -> ReLU`` and ``fc2`` (logits). On 32x32 inputs the maps are 15x15, 6x6 and 2x2, so fc1 sees
``4 * widths[2]`` features. The auxiliary has widths 16/32/64 and a 128-unit fc1, the student
8/16/32 and 64. ``features(x)`` returns every intermediate output, indexed as in the reference's
``get_features``: 0, 1, 2 = block outputs (NHWC maps), 3 = fc1 after ReLU (the retrieval
embedding), 4 = logits. ``block(k, h)`` runs block k alone on block k-1's output, which is how a
pruned copy of the auxiliary produces the student's layer-wise targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
from flax import nnx

#: Index of each feature returned by ``Cnn32.features``.
FEATURE_NAMES = ("block1", "block2", "block3", "fc1", "logits")

# PyTorch's default Conv2d / Linear initialisation (kaiming_uniform with a = sqrt(5)).
_torch_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_bn = partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5)


class Cnn32(nnx.Module):
    """3 x [conv3x3 valid, BN, ReLU, maxpool 2] -> fc1 -> ReLU -> fc2 (InDistill's CNNs)."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        hidden: int = 128,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        input_hw: int = 32,
        rngs: nnx.Rngs,
    ):
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be 3 positive integers, got {widths}")
        if hidden < 1 or num_classes < 1:
            raise ValueError(f"hidden and num_classes must be >= 1, got {hidden}, {num_classes}")
        hw = input_hw
        for _ in range(3):
            hw = (hw - 2) // 2
        if hw < 1:
            raise ValueError(f"input_hw={input_hw} is too small for three conv+pool blocks")
        self.widths = widths
        cins = (in_channels, *widths[:2])
        self.convs = nnx.List(
            [
                nnx.Conv(c, w, (3, 3), padding="VALID", kernel_init=_torch_init, rngs=rngs)
                for c, w in zip(cins, widths)
            ]
        )
        self.bns = nnx.List([_bn(w, rngs=rngs) for w in widths])
        self.fc1 = nnx.Linear(hw * hw * widths[2], hidden, kernel_init=_torch_init, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, num_classes, kernel_init=_torch_init, rngs=rngs)

    def block(self, k: int, h: jax.Array) -> jax.Array:
        """Block ``k`` (0, 1, 2) on the previous block's output ``h`` (NHWC)."""
        h = nnx.relu(self.bns[k](self.convs[k](h)))
        return nnx.max_pool(h, (2, 2), strides=(2, 2))

    def features(self, x: jax.Array) -> list[jax.Array]:
        """``[block1, block2, block3, fc1 (after ReLU), logits]`` for NHWC images ``x``."""
        outs = []
        h = x
        for k in range(3):
            h = self.block(k, h)
            outs.append(h)
        e = nnx.relu(self.fc1(h.reshape(h.shape[0], -1)))
        outs.append(e)
        outs.append(self.fc2(e))
        return outs

    def embed(self, x: jax.Array) -> jax.Array:
        """The retrieval embedding: fc1 after ReLU (the reference's ``layer=3``)."""
        return self.features(x)[3]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.features(x)[4]


def auxiliary_cnn(num_classes: int = 10, *, in_channels: int = 3, rngs: nnx.Rngs) -> Cnn32:
    """InDistill's auxiliary network (reference ``Cnn32``): widths 16/32/64, fc1 -> 128."""
    return Cnn32((16, 32, 64), 128, num_classes, in_channels=in_channels, rngs=rngs)


def student_cnn(num_classes: int = 10, *, in_channels: int = 3, rngs: nnx.Rngs) -> Cnn32:
    """InDistill's student (reference ``Cnn32_Small``): widths 8/16/32, fc1 -> 64."""
    return Cnn32((8, 16, 32), 64, num_classes, in_channels=in_channels, rngs=rngs)
