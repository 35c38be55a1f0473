"""ResNets in Flax NNX: CIFAR ResNet-20 (He et al. 2016, Sec. 4.2), ImageNet ResNet-18/50
(Sec. 3.3, Table 1), and a small CNN for quick experiments.

Inputs are NHWC float. Train/eval mode is NNX's: ``model.train()`` / ``model.eval()`` switch
BatchNorm between batch statistics and running averages. BatchNorm uses PyTorch's defaults
(momentum 0.1 in PyTorch's convention, i.e. flax ``momentum=0.9``; ``epsilon=1e-5``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

_kaiming = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(cin: int, cout: int, k: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding=k // 2 if k > 1 else 0,
        use_bias=False,
        kernel_init=_kaiming,
        rngs=rngs,
    )


_bn = partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5)


class BasicBlock(nnx.Module):
    """Two 3x3 convs with a residual connection (He et al. 2016, Fig. 2 left).

    When the block changes the resolution or width, its shortcut is ``option="A"`` (He et al.
    Sec. 4.2: the input subsampled by ``stride`` and zero-padded to ``cout`` channels, half the
    padding on each side; no parameters) or ``option="B"`` (Sec. 3.3: a strided 1x1 conv +
    BatchNorm projection, the ``downsample`` of CrAM's ``models/resnet_cifar10.py``).
    """

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, *, option: str = "B", rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs=rngs)
        self.bn1 = _bn(cout, rngs=rngs)
        self.conv2 = _conv(cout, cout, 3, rngs=rngs)
        self.bn2 = _bn(cout, rngs=rngs)
        self.option = option
        self.pad = cout - cin
        self.stride = stride
        if (stride != 1 or cin != cout) and option == "B":
            self.down_conv = _conv(cin, cout, 1, stride, rngs=rngs)
            self.down_bn = _bn(cout, rngs=rngs)
        else:
            self.down_conv = None
            self.down_bn = None

    def shortcut(self, x: jax.Array) -> jax.Array:
        if self.down_conv is not None:
            return self.down_bn(self.down_conv(x))
        if self.stride != 1 or self.pad:  # option A: subsample + zero-pad channels (CIFAR ResNets)
            x = x[:, :: self.stride, :: self.stride, :]
            lo = self.pad // 2
            return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (lo, self.pad - lo)))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + self.shortcut(x))


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck (He et al. 2016, Fig. 5 right); stride on the 3x3 (v1.5)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, *, option: str = "B", rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1, rngs=rngs)
        self.bn1 = _bn(width, rngs=rngs)
        self.conv2 = _conv(width, width, 3, stride, rngs=rngs)
        self.bn2 = _bn(width, rngs=rngs)
        self.conv3 = _conv(width, cout, 1, rngs=rngs)
        self.bn3 = _bn(cout, rngs=rngs, scale_init=nnx.initializers.zeros)
        if stride != 1 or cin != cout:
            self.down_conv = _conv(cin, cout, 1, stride, rngs=rngs)
            self.down_bn = _bn(cout, rngs=rngs)
        else:
            self.down_conv = None
            self.down_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        sc = x if self.down_conv is None else self.down_bn(self.down_conv(x))
        return nnx.relu(y + sc)


class ResNet(nnx.Module):
    """Generic ResNet: a stem, stages of residual blocks, global average pool, linear head."""

    def __init__(
        self,
        block: type,
        stage_sizes: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        *,
        in_channels: int = 3,
        stem: str = "cifar",
        shortcut: str = "B",
        rngs: nnx.Rngs,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.stem_kind = stem
        if stem == "cifar":
            self.stem_conv = _conv(in_channels, widths[0], 3, rngs=rngs)
            cin = widths[0]
        elif stem == "imagenet":
            self.stem_conv = nnx.Conv(
                in_channels,
                64,
                (7, 7),
                strides=2,
                padding=3,
                use_bias=False,
                kernel_init=_kaiming,
                rngs=rngs,
            )
            cin = 64
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.stem_bn = _bn(cin, rngs=rngs)
        blocks = []
        for i, (n, w) in enumerate(zip(stage_sizes, widths)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, w, stride, option=shortcut, rngs=rngs))
                cin = w * block.expansion
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        if self.stem_kind == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for blk in self.blocks:
            x = blk(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


def ResNet20(
    num_classes: int = 10, *, in_channels: int = 3, shortcut: str = "A", rngs: nnx.Rngs
) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016, Sec. 4.2): 3 stages x 3 basic blocks, widths 16/32/64.

    ``shortcut="A"`` (the paper's CIFAR choice): parameter-free subsample + zero-pad shortcuts,
    269,722 parameters for 10 classes. ``shortcut="B"``: 1x1 conv + BatchNorm projections where
    the shape changes, 272,474 parameters; this is the ResNet-20 of the CrAM code
    (``models/resnet_cifar10.py``), which its CIFAR-10 configs train.
    """
    return ResNet(
        BasicBlock,
        (3, 3, 3),
        (16, 32, 64),
        num_classes,
        in_channels=in_channels,
        stem="cifar",
        shortcut=shortcut,
        rngs=rngs,
    )


def ResNet18(num_classes: int = 1000, *, in_channels: int = 3, rngs: nnx.Rngs) -> ResNet:
    """ImageNet ResNet-18 (11.7M parameters)."""
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        (64, 128, 256, 512),
        num_classes,
        in_channels=in_channels,
        stem="imagenet",
        rngs=rngs,
    )


def ResNet50(num_classes: int = 1000, *, in_channels: int = 3, rngs: nnx.Rngs) -> ResNet:
    """ImageNet ResNet-50 v1.5 (25.6M parameters)."""
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        (64, 128, 256, 512),
        num_classes,
        in_channels=in_channels,
        stem="imagenet",
        rngs=rngs,
    )


class SmallCNN(nnx.Module):
    """Two 3x3 convs (+ optional BatchNorm), each followed by 2x2 max-pooling, then a two-layer
    head on the flattened features (the classic MNIST CNN)."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64),
        hidden: int = 128,
        batch_norm: bool = True,
        input_hw: tuple[int, int] = (28, 28),
        rngs: nnx.Rngs,
    ):
        self.conv1 = nnx.Conv(in_channels, widths[0], (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(widths[0], widths[1], (3, 3), rngs=rngs)
        self.bn1 = _bn(widths[0], rngs=rngs) if batch_norm else None
        self.bn2 = _bn(widths[1], rngs=rngs) if batch_norm else None
        flat = (input_hw[0] // 4) * (input_hw[1] // 4) * widths[1]
        self.fc = nnx.Linear(flat, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            x = conv(x)
            if bn is not None:
                x = bn(x)
            x = nnx.max_pool(nnx.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.fc(x)))


def build_classifier(
    name: str,
    num_classes: int,
    *,
    in_channels: int,
    input_hw: tuple[int, int],
    batch_norm: bool = True,
    shortcut: str = "A",
    rngs: nnx.Rngs,
) -> nnx.Module:
    """A classifier by name: ``smallcnn``, ``resnet20``, ``resnet18`` or ``resnet50``
    (``shortcut`` "A" or "B": ResNet-20's, see ``ResNet20``)."""
    if name == "smallcnn":
        return SmallCNN(
            num_classes,
            in_channels=in_channels,
            batch_norm=batch_norm,
            input_hw=tuple(input_hw),
            rngs=rngs,
        )
    factories = {"resnet20": ResNet20, "resnet18": ResNet18, "resnet50": ResNet50}
    if name not in factories:
        raise ValueError(f"unknown model {name!r}; known: smallcnn, {', '.join(factories)}")
    if name == "resnet20":
        return ResNet20(num_classes, in_channels=in_channels, shortcut=shortcut, rngs=rngs)
    return factories[name](num_classes, in_channels=in_channels, rngs=rngs)
