"""InDistill's auxiliary pruning (Sarridis et al. 2022, Sec. 3.1): the auxiliary network's convs
are pruned to the student's widths by structured L1 channel pruning, so that each student block
has a target of exactly its own shape.

The target of student block ``k`` is the auxiliary's block-``k`` output *restricted to the kept
channels*, computed from the auxiliary's **unpruned** block ``k-1`` output (the reference's
``Cnn32(pruned=True)`` has conv2 16 -> 16 and conv3 32 -> 32: full inputs, pruned outputs). Since a
block's conv, BatchNorm, ReLU and max-pool act channel by channel given the input, this equals
the eval-mode auxiliary's own activation on the kept channels. ``PrunedBlocks`` computes it from
real sliced weights (conv kernel and bias, BatchNorm scale, bias and running statistics), always
in eval mode. The reference instead re-initialises the pruned conv biases, zeroes the BatchNorm
shifts, resets the running statistics and leaves the pruned copy in train mode (see
docs/indistill.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcomp.models.cnn32 import Cnn32
from jaxcomp.pruning.masks import channel_mask


def select_channels(
    aux: Cnn32,
    widths: Sequence[int],
    *,
    method: Literal["l1", "random"] = "l1",
    key: jax.Array | None = None,
) -> tuple[np.ndarray, ...]:
    """Kept output channels of each auxiliary conv (ascending indices), ``widths[k]`` of block k.

    ``method="l1"``: the largest-L1 filters (``channel_mask(norm="l1", scope="layer")``; same
    ranking as ``torch.nn.utils.prune.ln_structured(n=1, dim=0)``, ties to the lower index).
    ``method="random"``: a uniformly random subset (the ablation), drawn from ``key``.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) != len(aux.widths):
        raise ValueError(f"need {len(aux.widths)} widths, got {widths}")
    if any(w < 1 or w > a for w, a in zip(widths, aux.widths)):
        raise ValueError(f"widths must be in [1, auxiliary widths {aux.widths}], got {widths}")
    if method not in ("l1", "random"):
        raise ValueError(f"method must be 'l1' or 'random', got {method!r}")
    if method == "random" and key is None:
        raise ValueError("method='random' needs a PRNG key")
    keep = []
    for k, (w, c) in enumerate(zip(widths, aux.widths)):
        if method == "l1":
            kernel = aux.convs[k].kernel.value
            mask = channel_mask({"kernel": kernel}, 1.0 - w / c, norm="l1", scope="layer")
            idx = np.flatnonzero(np.asarray(mask["kernel"]).reshape(-1, c)[0])
            if idx.size != w:  # pragma: no cover - keep_count's tolerance makes this exact
                raise ValueError(f"channel_mask kept {idx.size} channels of block {k}, want {w}")
        else:
            idx = np.sort(np.asarray(jax.random.permutation(jax.random.fold_in(key, k), c)[:w]))
        keep.append(idx.astype(np.int32))
    return tuple(keep)


class PrunedBlocks(nnx.Module):
    """The auxiliary's three blocks with only the kept output channels (full input channels).

    ``block(k, h)`` maps the auxiliary's unpruned block ``k-1`` output (or the image for
    ``k = 0``) to the kept channels of block ``k``. Built from a trained auxiliary by slicing its
    conv kernels/biases and BatchNorm parameters and running statistics; the copy is put in eval
    mode (running statistics) and nothing in it is trained.
    """

    def __init__(self, aux: Cnn32, keep: Sequence[np.ndarray]):
        if len(keep) != 3:
            raise ValueError(f"keep must hold 3 index arrays, got {len(keep)}")
        convs, bns = [], []
        for k, idx in enumerate(keep):
            idx = np.asarray(idx)
            if idx.ndim != 1 or idx.size < 1 or idx.min() < 0 or idx.max() >= aux.widths[k]:
                raise ValueError(
                    f"keep[{k}] must be channel indices in [0, {aux.widths[k]}), got {idx}"
                )
            conv, bn = aux.convs[k], aux.bns[k]
            cin = conv.kernel.value.shape[2]
            new_conv = nnx.Conv(cin, idx.size, (3, 3), padding="VALID", rngs=nnx.Rngs(0))
            new_conv.kernel.value = conv.kernel.value[..., idx]
            new_conv.bias.value = conv.bias.value[idx]
            new_bn = nnx.BatchNorm(
                idx.size, momentum=bn.momentum, epsilon=bn.epsilon, rngs=nnx.Rngs(0)
            )
            new_bn.scale.value = bn.scale.value[idx]
            new_bn.bias.value = bn.bias.value[idx]
            new_bn.mean.value = bn.mean.value[idx]
            new_bn.var.value = bn.var.value[idx]
            convs.append(new_conv)
            bns.append(new_bn)
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns)
        self.keep = tuple(tuple(int(i) for i in np.asarray(x)) for x in keep)
        self.eval()

    def block(self, k: int, h: jax.Array) -> jax.Array:
        h = nnx.relu(self.bns[k](self.convs[k](h)))
        return nnx.max_pool(h, (2, 2), strides=(2, 2))


def layerwise_targets(aux: Cnn32, pruned: PrunedBlocks | None, x: jax.Array) -> list[jax.Array]:
    """Targets for every student feature, indexed like ``Cnn32.features``.

    Blocks 0-2: ``pruned.block(k, aux block k-1 output)`` (the pruned auxiliary's activations);
    3, 4: the auxiliary's own fc1 (after ReLU) and logits. ``pruned=None`` returns the auxiliary's
    unpruned features. Both networks should be in eval mode; the result is gradient-stopped.
    """
    feats = aux.features(x)
    if pruned is None:
        return [jax.lax.stop_gradient(f) for f in feats]
    inputs = [x, feats[0], feats[1]]
    out = [pruned.block(k, inputs[k]) for k in range(3)] + feats[3:]
    return [jax.lax.stop_gradient(f) for f in out]


def restrict(features: Sequence[jax.Array], keep: Sequence[np.ndarray]) -> list[jax.Array]:
    """Block features restricted to the kept channels (the reference check of ``PrunedBlocks``)."""
    return [f[..., jnp.asarray(idx)] for f, idx in zip(features, keep)]
