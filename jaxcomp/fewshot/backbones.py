"""Few-shot backbones: Conv64F (Vinyals et al. 2016 / Snell et al. 2017) and ResNet-12.

Conv64F is the FewSAR benchmark's common backbone (FewSAR Sec. III-B; LibFewShot's
``conv_four.py``): four blocks of [conv3x3 64, BatchNorm, ReLU or LeakyReLU(0.2), maxpool 2x2].
Local-descriptor methods (DN4, CovaMNet, ATL-Net, RelationNet) drop the pooling of the last
one or two blocks so that the output keeps a spatial grid of descriptors; ``pools`` says which
blocks pool. BatchNorm follows PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

_bn = partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5)


def _max_pool(x: jax.Array) -> jax.Array:
    # floor division of odd sizes, as torch.nn.MaxPool2d(2)
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class ConvBlock(nnx.Module):
    """conv3x3 (padding 1) -> BatchNorm -> (Leaky)ReLU -> optional 2x2 max-pool."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        pool: bool = True,
        negative_slope: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(in_channels, out_channels, (3, 3), padding="SAME", rngs=rngs)
        self.bn = _bn(out_channels, rngs=rngs)
        self.pool = pool
        self.negative_slope = negative_slope

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn(self.conv(x))
        x = jnp.where(x >= 0, x, self.negative_slope * x)
        return _max_pool(x) if self.pool else x


class Conv64F(nnx.Module):
    """Four ``ConvBlock``s of ``width`` channels. NHWC in; ``(B, h, w, width)`` out, or
    ``(B, h*w*width)`` with ``flatten=True`` (ProtoNet, FEAT, Baseline)."""

    def __init__(
        self,
        in_channels: int = 1,
        *,
        width: int = 64,
        pools: Sequence[bool] = (True, True, True, True),
        leaky_relu: bool = False,
        negative_slope: float = 0.2,
        flatten: bool = True,
        rngs: nnx.Rngs,
    ):
        if len(pools) != 4:
            raise ValueError(f"pools must have 4 entries (one per block), got {tuple(pools)}")
        slope = negative_slope if leaky_relu else 0.0
        chans = (in_channels, width, width, width, width)
        self.blocks = nnx.List(
            [
                ConvBlock(
                    chans[i], chans[i + 1], pool=bool(pools[i]), negative_slope=slope, rngs=rngs
                )
                for i in range(4)
            ]
        )
        self.flatten = flatten
        self.width = width
        self.pools = tuple(bool(p) for p in pools)

    def output_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        """``(h, w, channels)`` of the feature map for an input of size ``image_hw``."""
        h, w = image_hw
        for p in self.pools:
            if p:
                h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"image size {image_hw} is too small for pools {self.pools}")
        return h, w, self.width

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x.reshape(x.shape[0], -1) if self.flatten else x


class _ResBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        conv = partial(nnx.Conv, kernel_size=(3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.c1, self.b1 = conv(cin, cout), _bn(cout, rngs=rngs)
        self.c2, self.b2 = conv(cout, cout), _bn(cout, rngs=rngs)
        self.c3, self.b3 = conv(cout, cout), _bn(cout, rngs=rngs)
        self.sc = nnx.Conv(cin, cout, (1, 1), use_bias=False, rngs=rngs)
        self.bsc = _bn(cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = partial(jax.nn.leaky_relu, negative_slope=0.1)
        h = act(self.b1(self.c1(x)))
        h = act(self.b2(self.c2(h)))
        h = self.b3(self.c3(h))
        return _max_pool(act(h + self.bsc(self.sc(x))))


class ResNet12(nnx.Module):
    """ResNet-12 (Oreshkin et al. 2018; MetaOptNet): four residual blocks of three 3x3 convs,
    LeakyReLU(0.1), 2x2 max-pool after each; ``widths`` default (64, 160, 320, 640). Global
    average pooling with ``flatten=True``, the feature map otherwise."""

    def __init__(
        self,
        in_channels: int = 1,
        *,
        widths: Sequence[int] = (64, 160, 320, 640),
        flatten: bool = True,
        rngs: nnx.Rngs,
    ):
        chans = (in_channels, *widths)
        self.blocks = nnx.List([_ResBlock(chans[i], chans[i + 1], rngs=rngs) for i in range(4)])
        self.flatten = flatten
        self.width = widths[-1]

    def output_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        h, w = image_hw
        h, w = h // 16, w // 16
        if h < 1 or w < 1:
            raise ValueError(f"image size {image_hw} is too small for ResNet-12 (needs >= 16)")
        return (1, 1, self.width) if self.flatten else (h, w, self.width)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x.mean(axis=(1, 2)) if self.flatten else x


def build_backbone(
    name: str,
    in_channels: int,
    *,
    pools: Sequence[bool] = (True, True, True, True),
    leaky_relu: bool = False,
    flatten: bool = True,
    width: int = 64,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """``"conv64f"`` (``width`` 32 gives LibFewShot's Conv32F) or ``"resnet12"`` (ResNet-12
    ignores ``pools``/``leaky_relu``/``width``)."""
    if name == "conv64f":
        return Conv64F(
            in_channels,
            width=width,
            pools=pools,
            leaky_relu=leaky_relu,
            flatten=flatten,
            rngs=rngs,
        )
    if name == "resnet12":
        return ResNet12(in_channels, flatten=flatten, rngs=rngs)
    raise ValueError(f"unknown backbone {name!r}; choose 'conv64f' or 'resnet12'")


def descriptor_backbone(
    name: str, in_channels: int, *, width: int, pools: Sequence[bool], rngs: nnx.Rngs
) -> nnx.Module:
    """The local-descriptor backbone of DN4 / CovaMNet / ATL-Net: LeakyReLU(0.2), unflattened
    ``(B, h, w, C)`` maps, pooling only where ``pools`` says."""
    return build_backbone(
        name, in_channels, width=width, pools=pools, leaky_relu=True, flatten=False, rngs=rngs
    )
