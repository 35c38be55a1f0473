"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
Supervision") in Flax NNX, with weight import from Hugging Face and OpenAI checkpoints.

The architecture is OpenAI's (Sec. 2.4 of the paper and its released code): pre-LayerNorm
transformer blocks with ``quick_gelu`` MLPs, a ViT image tower pooled at the class token
(``ln_post``), a causal text transformer pooled at the end-of-text (EOT) token, linear projections
into a joint space of ``projection_dim``, and a learned temperature ``logit_scale`` (Eq. in Fig. 3:
``logits = exp(t) * <I_e, T_e>`` on L2-normalised features). The image tower may instead be the
paper's *modified ResNet* (Sec. 2.4: a 3-conv stem with average pooling, anti-aliased strided
bottlenecks, attention pooling; RN50 ... RN50x64), selected by a 4-tuple ``vision_layers``.

* ``CLIP.encode_image(pixels)`` takes normalised pixels in **NHWC** (float) and
  ``CLIP.encode_text(token_ids)`` takes ``int`` ids ``(N, L)``; both return the *projected,
  unnormalised* features, i.e. Hugging Face's ``get_image_features`` / ``get_text_features``.
* ``CLIP.encode_text_embeddings(embeddings, token_ids)`` runs the text tower on token
  *embeddings* (``(N, L, width)``); ``token_ids`` only locate the EOT token (``argmax`` of the ids,
  as in OpenAI's code: EOT has the largest id). This is what prompt learning (CoOp/CoCoOp, see
  :mod:`jaxcomp.nn.prompts`) needs.
* ``load_pretrained(path)`` reads a Hugging Face CLIP directory (``config.json`` +
  ``model.safetensors``); ``convert_openai_state_dict(sd)`` maps an OpenAI-format state dict
  (``transformer.resblocks.N.attn.in_proj_weight`` ...) to Hugging Face names, splitting the fused
  ``in_proj`` into ``q/k/v`` and transposing the projections; ``config_from_openai_state_dict``
  infers the architecture from the shapes, as OpenAI's ``build_model`` does (ViT or ResNet; the
  ResNet tower keeps OpenAI's names under ``vision_model.``: Hugging Face has no ResNet CLIP).
  OpenCLIP's LAION checkpoints share these keys but use plain GELU: pass ``act="gelu"`` or let
  :func:`openclip_activation` read it from an OpenCLIP model name or config.
* ``load_tokenizer(path)`` wraps a ``tokenizer.json`` (the ``tokenizers`` package) with OpenAI's
  ``tokenize`` semantics: start/end tokens, zero padding to the context length.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from jaxcomp.models.weights import (
    check_config_fields,
    check_float,
    load_safetensors,
    load_tokenizer_file,
    read_json,
)

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPTokenizer",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "config_from_hf",
    "config_from_openai_state_dict",
    "convert_openai_state_dict",
    "load_pretrained",
    "load_state_dict",
    "load_tokenizer",
    "openclip_activation",
    "pool_positions",
]

# Per-channel statistics OpenAI's preprocessing normalises RGB pixels in [0, 1] with.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a CLIP model (defaults: OpenAI ViT-B/16).

    ``vision_*`` describe the image tower, ``text_*`` the causal text transformer;
    ``context_length`` is the number of text positions (77 for OpenAI models).

    An ``int`` ``vision_layers`` selects the ViT tower. A 4-tuple selects OpenAI's modified
    ResNet (``build_model``'s rule) with that many bottleneck blocks per stage ((3, 4, 6, 3) for
    RN50): ``vision_width`` is then its stem width (64 for RN50; the stages have 4, 8, 16 and 32
    times it channels), ``vision_heads`` the heads of the attention pool over
    ``32 * vision_width`` channels (OpenAI: ``32 * vision_width // 64``), ``image_size`` a multiple
    of 32, and ``patch_size`` / ``vision_mlp_dim`` are unused.

    ``hidden_act`` is the MLP activation: ``"quick_gelu"`` for OpenAI's weights, ``"gelu"`` for
    OpenCLIP's LAION models (see :func:`openclip_activation`). ``eos_token_id``: ``None`` pools the
    text tower at ``argmax(token_ids)`` (OpenAI: the EOT token has the largest id); an id pools at
    the *first* position holding it (Hugging Face's rule for an EOS that is not the largest id).
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    vision_width: int = 768
    vision_layers: int | tuple[int, int, int, int] = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    projection_dim: int = 512
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    logit_scale_init: float = 2.6592  # log(1 / 0.07)
    eos_token_id: int | None = None

    def __post_init__(self):
        check_config_fields(self)
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        layers = self.vision_layers
        if isinstance(layers, (tuple, list)) and len(layers) == 4 and all(map(_is_count, layers)):
            # A hashable tuple of Python ints: the config is static data of the NNX graph.
            object.__setattr__(self, "vision_layers", tuple(int(n) for n in layers))
        elif not _is_count(layers):
            raise ValueError(
                "CLIPConfig field 'vision_layers' must be an integer >= 1 (ViT) or 4 integers "
                f">= 1 (ResNet), got {layers!r} ({type(layers).__name__})"
            )
        if self.is_resnet:
            self._check_resnet()
        elif self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size "
                f"({self.patch_size})"
            )
        for name in ("text",) if self.is_resnet else ("vision", "text"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            if width % heads:
                raise ValueError(
                    f"{name}_width ({width}) must be divisible by {name}_heads ({heads})"
                )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}"
            )
        eos = self.eos_token_id
        if eos is not None and (
            isinstance(eos, bool) or not isinstance(eos, (int, np.integer))
            or not 0 <= eos < self.vocab_size
        ):  # fmt: skip
            raise ValueError(
                f"eos_token_id must be None or an id in [0, {self.vocab_size}), got {eos!r}"
            )

    def _check_resnet(self) -> None:
        if self.image_size % 32:
            raise ValueError(
                f"image_size must be a multiple of 32 for a ResNet image tower, "
                f"got {self.image_size}"
            )
        if self.vision_width % 2:
            raise ValueError(
                f"vision_width (the ResNet stem width) must be even, got {self.vision_width}"
            )
        if (32 * self.vision_width) % self.vision_heads:
            raise ValueError(
                f"the ResNet attention pool width 32 * vision_width ({32 * self.vision_width}) "
                f"must be divisible by vision_heads ({self.vision_heads})"
            )

    @property
    def is_resnet(self) -> bool:
        """Whether the image tower is OpenAI's modified ResNet (a 4-tuple ``vision_layers``)."""
        return isinstance(self.vision_layers, tuple)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _is_count(n: Any) -> bool:
    """An integer >= 1 that is not a bool."""
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


def _layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch.nn.LayerNorm computes it (parity to 1e-4 needs it).
    return nnx.LayerNorm(width, epsilon=eps, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention with separate q/k/v/out projections (Hugging Face layout)."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.q_proj = nnx.Linear(width, width, rngs=rngs)
        self.k_proj = nnx.Linear(width, width, rngs=rngs)
        self.v_proj = nnx.Linear(width, width, rngs=rngs)
        self.out_proj = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.out_proj(_multi_head_attention(q, k, v, self.heads, mask))


def _multi_head_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, heads: int, mask: jax.Array | None = None
) -> jax.Array:
    """``softmax(q_h k_h^T / sqrt(d_h)) v_h`` for each of ``heads`` heads (Vaswani et al. 2017,
    Eq. 1), heads concatenated: ``q`` ``(N, Lq, D)``, ``k`` / ``v`` ``(N, Lk, D)`` ->
    ``(N, Lq, D)``; ``mask`` (broadcast to ``(N, heads, Lq, Lk)``) is ``True`` where a query may
    attend."""
    n, length, width = q.shape
    head_dim = width // heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, head_dim)
    scores = jnp.einsum("nqhd,nkhd->nhqk", split(q) * head_dim**-0.5, split(k))
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("nhqk,nkhd->nqhd", weights, split(v)).reshape(n, length, width)


class ResidualAttentionBlock(nnx.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(
        self, width: int, heads: int, mlp_dim: int, act: str, eps: float, *, rngs: nnx.Rngs
    ):
        self.act = act
        self.layer_norm1 = _layer_norm(width, eps, rngs)
        self.self_attn = Attention(width, heads, rngs=rngs)
        self.layer_norm2 = _layer_norm(width, eps, rngs)
        self.fc1 = nnx.Linear(width, mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, width, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.fc2(_ACTIVATIONS[self.act](self.fc1(self.layer_norm2(x))))


class Transformer(nnx.Module):
    """A stack of :class:`ResidualAttentionBlock`."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_dim: int, act: str, eps: float, *,
        rngs: nnx.Rngs,
    ):  # fmt: skip
        block = lambda: ResidualAttentionBlock(width, heads, mlp_dim, act, eps, rngs=rngs)
        self.layers = nnx.List([block() for _ in range(layers)])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class VisionTransformer(nnx.Module):
    """CLIP's ViT: patchify, prepend the class token, ``ln_pre``, blocks, ``ln_post`` on the class
    token, projection (Dosovitskiy et al. 2021 with OpenAI's extra ``ln_pre``)."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        width, p, c = cfg.vision_width, cfg.patch_size, cfg.num_channels
        scale = width**-0.5
        self.patch_size = p
        # Patch embedding as a (P, P, C, width) kernel applied to non-overlapping patches (no bias).
        self.patch_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (p, p, c, width)))
        self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (width,)))
        self.position_embedding = nnx.Param(
            scale * jax.random.normal(rngs.params(), (cfg.num_patches + 1, width))
        )
        self.pre_layrnorm = _layer_norm(width, cfg.layer_norm_eps, rngs)
        self.encoder = Transformer(
            width, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp_dim, cfg.hidden_act,
            cfg.layer_norm_eps, rngs=rngs,
        )  # fmt: skip
        self.post_layernorm = _layer_norm(width, cfg.layer_norm_eps, rngs)
        self.projection = nnx.Linear(width, cfg.projection_dim, use_bias=False, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        n, h, w, c = pixels.shape
        p = self.patch_size
        kernel = self.patch_embedding[...]
        if (h % p) or (w % p) or c != kernel.shape[2]:
            raise ValueError(
                f"pixels must be NHWC with H, W multiples of {p} and C={kernel.shape[2]}, "
                f"got shape {pixels.shape}"
            )
        patches = pixels.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = jnp.einsum("nyxpqc,pqcd->nyxd", patches, kernel).reshape(n, -1, kernel.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...], (n, 1, x.shape[-1]))
        x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
        if x.shape[1] != self.position_embedding[...].shape[0]:
            raise ValueError(
                f"image of {h}x{w} gives {x.shape[1] - 1} patches, the model has "
                f"{self.position_embedding[...].shape[0] - 1}"
            )
        x = self.pre_layrnorm(x + self.position_embedding[...])
        x = self.encoder(x)
        return self.projection(self.post_layernorm(x[:, 0]))


# --------------------------------------------------------------------------------------------
# OpenAI's modified ResNet image tower (RN50, RN101, RN50x4 ...)
# --------------------------------------------------------------------------------------------

_BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which OpenAI's ResNets use


class FrozenBatchNorm(nnx.Module):
    """BatchNorm in inference mode: ``(x - mean) / sqrt(var + eps) * scale + bias`` (Ioffe &
    Szegedy 2015, Alg. 2 step 11) over the last axis, with the checkpoint's running statistics.

    The statistics are ``nnx.BatchStat`` (not trained with ``nnx.Param``) and never updated, and
    ``model.train()`` does not switch this layer to batch statistics: CLIP's image tower is used
    frozen (OpenAI's ``clip.load`` returns the model in ``eval()`` mode, and CoOp keeps it so).
    """

    def __init__(self, features: int, eps: float = _BN_EPS):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        inv = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        return (x - self.mean[...]) * inv + self.bias[...]


def _conv(cin: int, cout: int, k: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
    """``k x k`` convolution without bias and with ``k // 2`` zero padding (NHWC, HWIO kernel)."""
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=k // 2, use_bias=False, rngs=rngs)


def _avg_pool(x: jax.Array, k: int) -> jax.Array:
    """``torch.nn.AvgPool2d(k)``: ``k x k`` windows at stride ``k``, a remainder is dropped."""
    return x if k == 1 else nnx.avg_pool(x, (k, k), strides=(k, k))


def _bottleneck_layout(
    width: int, layers: tuple[int, int, int, int]
) -> list[list[tuple[int, int, int]]]:
    """``(in_channels, planes, stride)`` of every bottleneck, per stage: stage ``s`` has
    ``width * 2**s`` planes (``4x`` that out), and its first block has stride ``1, 2, 2, 2``."""
    cin, stages = width, []
    for s, blocks in enumerate(layers):
        planes, stage = width * 2**s, []
        for b in range(blocks):
            stage.append((cin, planes, 2 if s and b == 0 else 1))
            cin = planes * Bottleneck.expansion
        stages.append(stage)
    return stages


def _has_downsample(cin: int, planes: int, stride: int) -> bool:
    return stride > 1 or cin != planes * Bottleneck.expansion


class Bottleneck(nnx.Module):
    """OpenAI's anti-aliased bottleneck (He et al. 2016, Fig. 5 right, with Zhang 2019's blur):
    ``1x1 -> 3x3 -> avgpool(stride) -> 1x1`` (convs at stride 1, BatchNorm after each, ReLU after
    the first two), plus the shortcut ``avgpool(stride) -> 1x1 conv -> BatchNorm`` when the block
    changes resolution or width (else the identity), then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        cout = planes * self.expansion
        self.stride = stride
        self.conv1, self.bn1 = _conv(cin, planes, 1, rngs=rngs), FrozenBatchNorm(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, rngs=rngs), FrozenBatchNorm(planes)
        self.conv3, self.bn3 = _conv(planes, cout, 1, rngs=rngs), FrozenBatchNorm(cout)
        if _has_downsample(cin, planes, stride):
            self.downsample_conv = _conv(cin, cout, 1, rngs=rngs)
            self.downsample_bn = FrozenBatchNorm(cout)
        else:
            self.downsample_conv = self.downsample_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(_avg_pool(out, self.stride)))
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(_avg_pool(x, self.stride)))
        return jax.nn.relu(out + x)


class AttentionPool2d(nnx.Module):
    """CLIP's attention pooling (Radford et al. 2021, Sec. 2.4): the ``H x W`` feature grid as
    tokens, their mean prepended, a learned position embedding added, then one multi-head
    attention whose only query is the mean token; ``c_proj`` of its output is the feature."""

    def __init__(self, grid: int, width: int, heads: int, out_dim: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.positional_embedding = nnx.Param(
            width**-0.5 * jax.random.normal(rngs.params(), (grid * grid + 1, width))
        )
        self.q_proj = nnx.Linear(width, width, rngs=rngs)
        self.k_proj = nnx.Linear(width, width, rngs=rngs)
        self.v_proj = nnx.Linear(width, width, rngs=rngs)
        self.c_proj = nnx.Linear(width, out_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        pos = self.positional_embedding[...]
        if x.shape[1] != pos.shape[0]:
            raise ValueError(
                f"a {h}x{w} feature grid gives {h * w + 1} attention-pool positions, the model "
                f"has {pos.shape[0]}"
            )
        x = x + pos
        q, k, v = self.q_proj(x[:, :1]), self.k_proj(x), self.v_proj(x)  # query: the mean token
        return self.c_proj(_multi_head_attention(q, k, v, self.heads)[:, 0])


class ModifiedResNet(nnx.Module):
    """OpenAI's ResNet image tower (``ModifiedResNet`` in ``clip/model.py``): a stem of three
    3x3 convs (stride 2, then 1, 1; ``width/2, width/2, width`` channels, each BatchNorm + ReLU)
    and a 2x2 average pool, four stages of :class:`Bottleneck` blocks (total stride 32), and
    :class:`AttentionPool2d` into ``projection_dim``. Pixels are NHWC; BatchNorm is frozen."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        width, half = cfg.vision_width, cfg.vision_width // 2
        self.conv1 = _conv(cfg.num_channels, half, 3, stride=2, rngs=rngs)
        self.bn1 = FrozenBatchNorm(half)
        self.conv2, self.bn2 = _conv(half, half, 3, rngs=rngs), FrozenBatchNorm(half)
        self.conv3, self.bn3 = _conv(half, width, 3, rngs=rngs), FrozenBatchNorm(width)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nnx.List([Bottleneck(*block, rngs=rngs) for block in stage])
            for stage in _bottleneck_layout(width, cfg.vision_layers)
        )
        self.attnpool = AttentionPool2d(
            cfg.image_size // 32, 32 * width, cfg.vision_heads, cfg.projection_dim, rngs=rngs
        )

    def __call__(self, pixels: jax.Array) -> jax.Array:
        if pixels.ndim != 4 or pixels.shape[-1] != self.conv1.in_features:
            raise ValueError(
                f"pixels must be NHWC with C={self.conv1.in_features}, got shape {pixels.shape}"
            )
        x = pixels
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = jax.nn.relu(bn(conv(x)))
        x = _avg_pool(x, 2)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        return self.attnpool(x)


class TextTransformer(nnx.Module):
    """CLIP's causal text transformer pooled at the EOT token, then projected."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        width = cfg.text_width
        self.token_embedding = nnx.Embed(
            cfg.vocab_size, width, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        self.position_embedding = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (cfg.context_length, width))
        )
        self.encoder = Transformer(
            width, cfg.text_layers, cfg.text_heads, cfg.text_mlp_dim, cfg.hidden_act,
            cfg.layer_norm_eps, rngs=rngs,
        )  # fmt: skip
        self.final_layer_norm = _layer_norm(width, cfg.layer_norm_eps, rngs)
        self.projection = nnx.Linear(width, cfg.projection_dim, use_bias=False, rngs=rngs)
        self.eos_token_id = cfg.eos_token_id

    def embed_tokens(self, token_ids: jax.Array) -> jax.Array:
        return self.token_embedding(token_ids)

    def __call__(self, embeddings: jax.Array, token_ids: jax.Array) -> jax.Array:
        n, length, _ = embeddings.shape
        max_len = self.position_embedding[...].shape[0]
        if length > max_len:
            raise ValueError(f"text length {length} exceeds the context length {max_len}")
        if token_ids.shape != (n, length):
            raise ValueError(
                f"token_ids must have shape {(n, length)} to match embeddings, "
                f"got {token_ids.shape}"
            )
        x = embeddings + self.position_embedding[...][:length]
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        x = self.final_layer_norm(self.encoder(x, causal[None, None]))
        return self.projection(x[jnp.arange(n), pool_positions(token_ids, self.eos_token_id)])


def pool_positions(token_ids: ArrayLike, eos_token_id: int | None) -> jax.Array:
    """Where the text tower pools each row of ``token_ids`` ``(N, L)``: ``argmax(ids)`` when
    ``eos_token_id`` is ``None`` (OpenAI: EOT has the largest id), else the first position of
    ``eos_token_id`` (Hugging Face ``CLIPTextTransformer`` for a configured EOS)."""
    token_ids = jnp.asarray(token_ids)
    if eos_token_id is None:
        return jnp.argmax(token_ids, axis=-1)
    return jnp.argmax(token_ids == eos_token_id, axis=-1)


class CLIP(nnx.Module):
    """CLIP with an image and a text tower and a learned ``logit_scale`` (Radford et al. 2021).

    ``model(pixels, token_ids)`` returns ``logits_per_image`` of shape ``(N_img, N_text)``:
    ``exp(logit_scale) * cos(image_features, text_features)``.
    """

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        self.config = config
        tower = ModifiedResNet if config.is_resnet else VisionTransformer
        self.vision_model = tower(config, rngs=rngs)
        self.text_model = TextTransformer(config, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init, jnp.float32))

    def encode_image(self, pixels: ArrayLike) -> jax.Array:
        """Projected, unnormalised image features of NHWC ``pixels`` (already normalised)."""
        return self.vision_model(jnp.asarray(pixels, jnp.float32))

    def embed_tokens(self, token_ids: ArrayLike) -> jax.Array:
        """Token embeddings ``(N, L, text_width)`` of ``token_ids`` (no position embedding)."""
        return self.text_model.embed_tokens(jnp.asarray(token_ids))

    def encode_text_embeddings(self, embeddings: ArrayLike, token_ids: ArrayLike) -> jax.Array:
        """Text features from token *embeddings*; ``token_ids`` give the EOT position
        (:func:`pool_positions`: ``argmax``, or the first ``config.eos_token_id``)."""
        return self.text_model(jnp.asarray(embeddings), jnp.asarray(token_ids))

    def encode_text(self, token_ids: ArrayLike) -> jax.Array:
        """Projected, unnormalised text features of ``token_ids`` ``(N, L)``."""
        token_ids = jnp.asarray(token_ids)
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be (N, L), got shape {token_ids.shape}")
        return self.text_model(self.embed_tokens(token_ids), token_ids)

    def __call__(self, pixels: ArrayLike, token_ids: ArrayLike) -> jax.Array:
        img = _l2_normalize(self.encode_image(pixels))
        txt = _l2_normalize(self.encode_text(token_ids))
        return jnp.exp(self.logit_scale[...]) * img @ txt.T


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Configs and weight import
# --------------------------------------------------------------------------------------------


def config_from_hf(config: Mapping[str, Any]) -> CLIPConfig:
    """A :class:`CLIPConfig` from a Hugging Face ``CLIPConfig`` dict (``config.json``)."""
    for key in ("vision_config", "text_config"):
        if key not in config:
            raise ValueError(f"config.json has no {key!r}; is this a CLIP checkpoint?")
    v, t = config["vision_config"], config["text_config"]
    acts = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
    if len(acts) != 1:
        raise ValueError(f"vision and text towers use different activations: {sorted(acts)}")
    return CLIPConfig(
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 32),
        num_channels=v.get("num_channels", 3),
        vision_width=v.get("hidden_size", 768),
        vision_layers=v.get("num_hidden_layers", 12),
        vision_heads=v.get("num_attention_heads", 12),
        vision_mlp_dim=v.get("intermediate_size", 3072),
        vocab_size=t.get("vocab_size", 49408),
        context_length=t.get("max_position_embeddings", 77),
        text_width=t.get("hidden_size", 512),
        text_layers=t.get("num_hidden_layers", 12),
        text_heads=t.get("num_attention_heads", 8),
        text_mlp_dim=t.get("intermediate_size", 2048),
        projection_dim=config.get("projection_dim", 512),
        hidden_act=acts.pop(),
        layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        logit_scale_init=config.get("logit_scale_init_value", 2.6592),
        # Hugging Face pools at argmax for the legacy eos_token_id 2, else at the first EOS.
        eos_token_id=None if t.get("eos_token_id", 2) == 2 else t["eos_token_id"],
    )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy arrays (no pickle, no torch); a corrupt
    file raises ``ValueError`` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no safetensors file at {path!r}")
    return load_safetensors(path)


def _linear(prefix: str) -> list[tuple[str, tuple[str, ...], Callable]]:
    t = lambda w: w.T  # torch Linear (out, in) -> Flax kernel (in, out)
    return [(f"{prefix}.weight", ("kernel",), t), (f"{prefix}.bias", ("bias",), lambda b: b)]


def _layer_norm_keys(prefix: str) -> list[tuple[str, tuple[str, ...], Callable]]:
    ident = lambda a: a
    return [(f"{prefix}.weight", ("scale",), ident), (f"{prefix}.bias", ("bias",), ident)]


def _oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight ``(out, in, kh, kw)`` -> Flax kernel ``(kh, kw, in, out)``."""
    return w.transpose(2, 3, 1, 0)


def _batch_norm_keys(prefix: str) -> list[tuple[str, tuple[str, ...], Callable]]:
    ident = lambda a: a
    names = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
    return [(f"{prefix}.{key}", (attr,), ident) for key, attr in names.items()]


def _resnet_keys(cfg: CLIPConfig) -> list[tuple[str, tuple[Any, ...], Callable]]:
    """``(key, path, transform)`` of the ResNet tower, keys in OpenAI's names without ``visual.``
    (``layer1.0.downsample.0.weight`` is the shortcut conv, ``downsample.1`` its BatchNorm)."""
    out: list[tuple[str, tuple[Any, ...], Callable]] = []

    def conv(key, path):
        out.append((f"{key}.weight", (*path, "kernel"), _oihw_to_hwio))

    def bn(key, path):
        out.extend((k, (*path, *p), f) for k, p, f in _batch_norm_keys(key))

    def conv_bn_layers(pre, path):
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):
            (conv if name.startswith("conv") else bn)(pre + name, (*path, name))

    conv_bn_layers("", ())
    for s, stage in enumerate(_bottleneck_layout(cfg.vision_width, cfg.vision_layers), 1):
        for b, block in enumerate(stage):
            pre, path = f"layer{s}.{b}.", (f"layer{s}", b)
            conv_bn_layers(pre, path)
            if _has_downsample(*block):
                conv(f"{pre}downsample.0", (*path, "downsample_conv"))
                bn(f"{pre}downsample.1", (*path, "downsample_bn"))
    out.append(("attnpool.positional_embedding", ("attnpool", "positional_embedding"), lambda a: a))
    for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
        out.extend((k, ("attnpool", name, *p), f) for k, p, f in _linear(f"attnpool.{name}"))
    return out


def _hf_mapping(cfg: CLIPConfig) -> list[tuple[str, tuple[Any, ...], Callable]]:
    """``(hf_key, path into our module, transform)`` for every tensor of a HF CLIPModel."""
    ident = lambda a: a
    out: list[tuple[str, tuple[Any, ...], Callable]] = []

    def sub(prefix_key, prefix_path, entries):
        out.extend((f"{prefix_key}{k}", prefix_path + p, f) for k, p, f in entries)

    def blocks(hf_tower, our_tower, layers):
        for i in range(layers):
            hk = f"{hf_tower}.encoder.layers.{i}."
            path = (our_tower, "encoder", "layers", i)
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                sub(hk, path + ("self_attn", name), _linear(f"self_attn.{name}"))
            sub(hk, path + ("layer_norm1",), _layer_norm_keys("layer_norm1"))
            sub(hk, path + ("layer_norm2",), _layer_norm_keys("layer_norm2"))
            sub(hk, path + ("fc1",), _linear("mlp.fc1"))
            sub(hk, path + ("fc2",), _linear("mlp.fc2"))

    vm, tm = "vision_model", "text_model"
    if cfg.is_resnet:
        sub(f"{vm}.", (vm,), _resnet_keys(cfg))
    else:
        # Conv2d weight (width, C, P, P) -> our patch kernel (P, P, C, width).
        out.append((f"{vm}.embeddings.patch_embedding.weight", (vm, "patch_embedding"),
                    _oihw_to_hwio))  # fmt: skip
        out.append((f"{vm}.embeddings.class_embedding", (vm, "class_embedding"), ident))
        out.append((f"{vm}.embeddings.position_embedding.weight", (vm, "position_embedding"),
                    ident))  # fmt: skip
        sub(f"{vm}.", (vm, "pre_layrnorm"), _layer_norm_keys("pre_layrnorm"))
        blocks(vm, vm, cfg.vision_layers)
        sub(f"{vm}.", (vm, "post_layernorm"), _layer_norm_keys("post_layernorm"))
        out.append(("visual_projection.weight", (vm, "projection", "kernel"), lambda w: w.T))
    out.append((f"{tm}.embeddings.token_embedding.weight", (tm, "token_embedding", "embedding"),
                ident))  # fmt: skip
    out.append((f"{tm}.embeddings.position_embedding.weight", (tm, "position_embedding"), ident))
    blocks(tm, tm, cfg.text_layers)
    sub(f"{tm}.", (tm, "final_layer_norm"), _layer_norm_keys("final_layer_norm"))
    out.append(("text_projection.weight", (tm, "projection", "kernel"), lambda w: w.T))
    out.append(("logit_scale", ("logit_scale",), lambda a: a.reshape(())))
    return out


# Buffers some Hugging Face versions save; they carry no weights.
_IGNORED_HF_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def load_state_dict(
    model: CLIP, tensors: Mapping[str, ArrayLike], *, strict: bool = True, source: str | None = None
) -> CLIP:
    """Copy Hugging Face-named ``tensors`` into ``model`` (in place; returns it).

    Raises ``ValueError`` naming the key (and ``source``, the file) for a missing key, an unknown
    key (when ``strict``), a shape mismatch or a tensor that is not floating point. Every tensor is
    validated before the first one is assigned, so a failed load leaves ``model`` unchanged.
    """
    where = f"{source!r}: " if source else ""
    remaining = {k: v for k, v in tensors.items() if k not in _IGNORED_HF_KEYS}
    staged = []
    for key, path, transform in _hf_mapping(model.config):
        if key not in remaining:
            raise ValueError(f"{where}checkpoint is missing key {key!r}")
        raw = remaining.pop(key)
        try:
            check_float(key, raw)
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None
        value = transform(np.asarray(raw, dtype=np.float32))
        node: Any = model
        for p in path:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        if tuple(node.get_value().shape) != tuple(value.shape):
            raise ValueError(
                f"{where}checkpoint key {key!r} has shape {tuple(value.shape)} after conversion, "
                f"the model expects {tuple(node.get_value().shape)}"
            )
        staged.append((node, value))
    if strict and remaining:
        raise ValueError(f"{where}checkpoint has unknown keys: {sorted(remaining)[:10]}")
    for node, value in staged:
        node.set_value(jnp.asarray(value))
    return model


def _abstract_model(config: CLIPConfig) -> CLIP:
    return nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0)))


def load_pretrained(
    path: str | os.PathLike, *, strict: bool = True, act: str | None = None
) -> CLIP:
    """Load a Hugging Face CLIP checkpoint directory (``config.json`` + ``model.safetensors``).

    ``path`` may also be a ``.safetensors`` file holding an OpenAI-format state dict
    (``visual.conv1.weight`` ..., a ViT or a ResNet image tower): it is converted with
    :func:`convert_openai_state_dict` and the architecture is inferred with
    :func:`config_from_openai_state_dict`. OpenAI's weights and
    OpenCLIP's use the same keys but not the same MLP activation (``quick_gelu`` vs ``gelu``), which
    the shapes cannot tell, so for such a file the activation is ``act`` when given, else read
    from an ``open_clip_config.json`` next to the file (:func:`openclip_activation`), else
    ``"quick_gelu"`` (OpenAI's release). For a Hugging Face directory ``config.json`` says it;
    an ``act`` that contradicts it raises ``ValueError``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file (and the key
    or config field) for a corrupt safetensors file, invalid JSON, a config field of the wrong type
    or a tensor of the wrong shape or dtype.
    """
    path = os.fspath(path)
    if act is not None and act not in _ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
    if os.path.isfile(path) and path.endswith(".safetensors"):
        tensors = _read_safetensors(path)
        if "visual.conv1.weight" in tensors or "token_embedding.weight" in tensors:
            if act is None:
                act = _openclip_file_activation(os.path.dirname(path))
            try:
                config = config_from_openai_state_dict(tensors, act=act)
                tensors = convert_openai_state_dict(tensors)
            except ValueError as e:
                raise ValueError(f"{path!r}: {e}") from None
        else:
            config = _config_file(os.path.join(os.path.dirname(path), "config.json"), act)
        return load_state_dict(_abstract_model(config), tensors, strict=strict, source=path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no CLIP checkpoint directory or .safetensors file at {path!r}")
    config = _config_file(os.path.join(path, "config.json"), act)
    weights = os.path.join(path, "model.safetensors")
    tensors = _read_safetensors(weights)
    return load_state_dict(_abstract_model(config), tensors, strict=strict, source=weights)


def openclip_activation(model: str | Mapping[str, Any], *, pretrained: str | None = None) -> str:
    """The MLP activation of an OpenCLIP model: ``"quick_gelu"`` or ``"gelu"``.

    ``model`` is an OpenCLIP model name (``"ViT-B-32-quickgelu"``: QuickGELU iff it ends in
    ``-quickgelu``) or its model config (a ``model_configs/*.json`` dict, or a hub
    ``open_clip_config.json`` dict holding it under ``"model_cfg"``), where ``"quick_gelu": true``
    selects QuickGELU and its absence means OpenCLIP's default ``nn.GELU``. ``pretrained="openai"``
    is always QuickGELU: OpenCLIP loads OpenAI's weights with OpenAI's activation.
    """
    if pretrained is not None and pretrained.lower() == "openai":
        return "quick_gelu"
    if isinstance(model, str):
        if not model:
            raise ValueError("model name is empty")
        return "quick_gelu" if model.lower().endswith("-quickgelu") else "gelu"
    if not isinstance(model, Mapping):
        raise ValueError(f"model must be a model name or a config dict, got {type(model).__name__}")
    cfg = model.get("model_cfg", model)
    quick = cfg.get("quick_gelu", False) if isinstance(cfg, Mapping) else None
    if not isinstance(quick, bool):
        raise ValueError(f"OpenCLIP config field quick_gelu must be a bool, got {quick!r}")
    return "quick_gelu" if quick else "gelu"


def _openclip_file_activation(directory: str) -> str:
    """``open_clip_config.json`` in ``directory`` decides the activation; OpenAI's without it."""
    path = os.path.join(directory, "open_clip_config.json")
    if not os.path.isfile(path):
        return "quick_gelu"
    try:
        return openclip_activation(_read_json(path))
    except ValueError as e:
        raise ValueError(f"{path!r}: {e}") from None


def _config_file(path: str, act: str | None = None) -> CLIPConfig:
    """``config_from_hf`` of a ``config.json``; errors name the file."""
    config = _read_json(path)
    try:
        cfg = config_from_hf(config)
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"{path!r}: {e}") from None
    if act is not None and act != cfg.hidden_act:
        raise ValueError(f"act={act!r} but {path!r} says hidden_act={cfg.hidden_act!r}")
    return cfg


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file at {path!r}")
    return read_json(path)


# Keys OpenAI's JIT archives carry that are hyper-parameters, not weights.
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")

# Every tensor of OpenAI's ModifiedResNet (num_batches_tracked counters included).
_BN_FIELDS = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_OPENAI_RESNET_KEY = re.compile(
    rf"visual\.(?:(?:layer[1-4]\.\d+\.)?(?:conv[123]\.weight|bn[123]\.{_BN_FIELDS})"
    rf"|layer[1-4]\.\d+\.downsample\.(?:0\.weight|1\.{_BN_FIELDS})"
    r"|attnpool\.(?:positional_embedding|[qkvc]_proj\.(?:weight|bias)))"
)


def config_from_openai_state_dict(
    sd: Mapping[str, ArrayLike], *, act: str = "quick_gelu"
) -> CLIPConfig:
    """Infer a :class:`CLIPConfig` from an OpenAI state dict's shapes, as ``build_model`` does.

    A ViT checkpoint has ``visual.proj``; a ResNet one (RN50 ...) has ``visual.layer{1-4}.*`` and
    ``visual.attnpool.*``: its blocks per stage are counted from the ``visual.layerS.B.`` keys, its
    stem width is the output width of ``visual.layer1.0.conv1.weight``, its image size
    ``32 * grid`` for the ``grid**2 + 1`` rows of ``visual.attnpool.positional_embedding``, and
    its attention pool has ``32 * width // 64`` heads (OpenAI's rule, at least 1).
    A missing or malformed key raises ``ValueError`` naming it.

    The shapes do not tell the activation: ``act`` is ``"quick_gelu"`` for OpenAI's weights and
    ``"gelu"`` for OpenCLIP's LAION ones (same keys; see :func:`openclip_activation`).
    """
    if act not in _ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"OpenAI CLIP state dict is missing key {key!r}")
        got = tuple(np.shape(sd[key]))
        if len(got) != ndim:
            raise ValueError(f"OpenAI CLIP key {key!r} must have {ndim} dims, got shape {got}")
        return got

    def n_blocks(prefix: str) -> int:  # distinct block indices under prefix
        return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})

    def heads(width: int) -> int:
        return max(width // 64, 1)

    if _is_openai_resnet(sd):
        vision = _openai_resnet_fields(sd, shape, n_blocks)
    elif "visual.proj" in sd:
        vision_width, num_channels, patch, _ = shape("visual.conv1.weight", 4)
        grid = round((shape("visual.positional_embedding", 2)[0] - 1) ** 0.5)
        vision = dict(
            image_size=patch * grid,
            patch_size=patch,
            num_channels=num_channels,
            vision_width=vision_width,
            vision_layers=n_blocks("visual.transformer.resblocks."),
            vision_heads=heads(vision_width),
            vision_mlp_dim=shape("visual.transformer.resblocks.0.mlp.c_fc.weight", 2)[0],
        )
    else:
        raise ValueError(
            "not an OpenAI CLIP image tower: neither 'visual.proj' (ViT) nor "
            "'visual.attnpool.*' / 'visual.layer1.*' (ResNet) keys"
        )
    text_width = shape("ln_final.weight", 1)[0]
    return CLIPConfig(
        **vision,
        vocab_size=shape("token_embedding.weight", 2)[0],
        context_length=shape("positional_embedding", 2)[0],
        text_width=text_width,
        text_layers=n_blocks("transformer.resblocks."),
        text_heads=heads(text_width),
        text_mlp_dim=shape("transformer.resblocks.0.mlp.c_fc.weight", 2)[0],
        projection_dim=shape("text_projection", 2)[1],
        hidden_act=act,
    )


def _is_openai_resnet(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("visual.layer", "visual.attnpool.")) for k in sd)


def _openai_resnet_fields(
    sd: Mapping[str, Any], shape: Callable[..., tuple[int, ...]], n_blocks: Callable[[str], int]
) -> dict[str, Any]:
    """The image-tower fields of :func:`config_from_openai_state_dict` for a ResNet."""
    layers = tuple(n_blocks(f"visual.layer{s}.") for s in (1, 2, 3, 4))
    for s, n in enumerate(layers, 1):
        if not n:
            raise ValueError(f"ResNet CLIP state dict has no 'visual.layer{s}.*' keys")
    width = shape("visual.layer1.0.conv1.weight", 4)[0]
    pos_key = "visual.attnpool.positional_embedding"
    rows, embed = shape(pos_key, 2)
    grid = round(max(rows - 1, 0) ** 0.5)
    if grid < 1 or grid**2 + 1 != rows:
        raise ValueError(
            f"OpenAI CLIP key {pos_key!r} has {rows} rows, expected grid**2 + 1 (a square "
            "feature grid plus the mean token)"
        )
    if embed != 32 * width:
        raise ValueError(
            f"OpenAI CLIP key {pos_key!r} has width {embed}, expected 32 * {width} (the output "
            "width of 'visual.layer1.0.conv1.weight')"
        )
    return dict(
        image_size=32 * grid,
        num_channels=shape("visual.conv1.weight", 4)[1],
        vision_width=width,
        vision_layers=layers,
        vision_heads=max(embed // 64, 1),
    )


def convert_openai_state_dict(sd: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """Rename an OpenAI-format CLIP state dict to Hugging Face key names.

    The fused attention ``in_proj_weight`` ``(3 width, width)`` is split into ``q/k/v_proj``;
    ``text_projection`` and ``visual.proj`` (``x @ P`` in OpenAI) become the transposed
    ``text_projection.weight`` / ``visual_projection.weight``; ``ln_1/ln_2/c_fc/c_proj`` become
    ``layer_norm1/layer_norm2/fc1/fc2``. An unknown key raises ``ValueError`` naming it.

    A ResNet image tower (``visual.layer1.*``, ``visual.attnpool.*``) has no Hugging Face
    counterpart: its keys keep OpenAI's names under ``vision_model.`` (``visual.layer1.0.conv1
    .weight`` -> ``vision_model.layer1.0.conv1.weight``) and stay in torch's layout, like the ViT
    tensors; :func:`load_state_dict` transposes conv weights OIHW -> HWIO and linear weights and
    reads BatchNorm ``weight/bias/running_mean/running_var`` into ``scale/bias/mean/var``.
    BatchNorm's ``num_batches_tracked`` counters are dropped.
    """
    out: dict[str, np.ndarray] = {}
    block_names = {
        "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj",
    }  # fmt: skip
    direct = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    }
    resnet = _is_openai_resnet(sd)
    for key, value in sd.items():
        value = np.asarray(value)
        if key in _OPENAI_META_KEYS or key.endswith(".num_batches_tracked"):
            continue
        if resnet and key.startswith("visual."):
            if not _OPENAI_RESNET_KEY.fullmatch(key):
                raise ValueError(f"unknown OpenAI CLIP key {key!r}")
            out["vision_model." + key[len("visual.") :]] = value
        elif key in direct:
            out[direct[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.T
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.T
        elif key.startswith(("transformer.resblocks.", "visual.transformer.resblocks.")):
            tower = "vision_model" if key.startswith("visual.") else "text_model"
            rest = key.split("transformer.resblocks.", 1)[1]
            layer, name = rest.split(".", 1)
            prefix = f"{tower}.encoder.layers.{layer}."
            if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = name.rsplit("_", 1)[1]  # weight / bias
                for part, chunk in zip(("q", "k", "v"), np.split(value, 3, axis=0)):
                    out[f"{prefix}self_attn.{part}_proj.{kind}"] = chunk
                continue
            module, kind = name.rsplit(".", 1)
            if module not in block_names:
                raise ValueError(f"unknown OpenAI CLIP key {key!r}")
            out[f"{prefix}{block_names[module]}.{kind}"] = value
        else:
            raise ValueError(f"unknown OpenAI CLIP key {key!r}")
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class CLIPTokenizer:
    """OpenAI ``clip.tokenize`` semantics over a ``tokenizers.Tokenizer``.

    ``encode(text)`` returns the ids with start/end tokens; ``__call__(texts)`` returns an int32
    ``(N, context_length)`` array, zero-padded (the EOT id is the largest, so ``argmax`` finds it).
    """

    def __init__(self, tokenizer: Any, *, context_length: int = 77,
                 sot_token: str = "<|startoftext|>", eot_token: str = "<|endoftext|>"):  # fmt: skip
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.sot_id = tokenizer.token_to_id(sot_token)
        self.eot_id = tokenizer.token_to_id(eot_token)
        if self.sot_id is None or self.eot_id is None:
            raise ValueError(f"tokenizer has no {sot_token!r} / {eot_token!r} special tokens")

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.sot_id, *ids, self.eot_id]

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), np.int32)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > self.context_length:
                raise ValueError(
                    f"{text!r} is {len(ids)} tokens, longer than the context length "
                    f"{self.context_length}"
                )
            out[i, : len(ids)] = ids
        return out


def load_tokenizer(path: str | os.PathLike, *, context_length: int | None = None) -> CLIPTokenizer:
    """Load ``tokenizer.json`` from a Hugging Face CLIP directory (or the file itself).

    ``context_length`` defaults to ``text_config.max_position_embeddings`` of a ``config.json``
    next to it, else 77.
    """
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no tokenizer.json at {file!r}")
    if context_length is None:
        config_path = os.path.join(os.path.dirname(file), "config.json")
        context_length = 77
        if os.path.isfile(config_path):
            cfg = _read_json(config_path)
            context_length = cfg.get("text_config", {}).get("max_position_embeddings", 77)
    if (
        isinstance(context_length, bool)
        or not isinstance(context_length, int)
        or context_length < 2
    ):
        raise ValueError(f"context_length must be an integer >= 2, got {context_length!r}")
    return CLIPTokenizer(load_tokenizer_file(file), context_length=context_length)
