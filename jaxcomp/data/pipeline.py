"""Deterministic numpy batching with exact resume and per-process sharding.

A ``DataStream`` maps a global step to a batch: the epoch's permutation comes from
``(seed, epoch)`` and the batch is a slice of it, so a resumed run that knows its step gets
exactly the batches it would have seen (the checkpoint stores only the step). On a multi-host
run each process takes its contiguous slice of the global batch (``process_index``), and
``jax.make_array_from_process_local_data`` assembles the global array (see ``jaxcomp.train``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) * (1.0 / 255.0) if images.dtype == np.uint8 else images


def augment_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random ``pad``-pixel translation (zero padding) and horizontal flip (CIFAR augmentation)
    of an ``(N, H, W, C)`` batch, drawn from the numpy ``rng``."""
    images = np.asarray(images)
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, b)
    dx = rng.integers(0, 2 * pad + 1, b)
    out = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = rng.random(b) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


@dataclasses.dataclass(frozen=True)
class DataStream:
    """Step-indexed training batches over in-memory arrays.

    ``batch(step)`` returns ``{"image": float32 (B,H,W,C) in [0, 1], "label": int32 (B,)}`` for
    this process's share of the global batch; incomplete final batches are dropped.
    """

    images: np.ndarray
    labels: np.ndarray
    batch_size: int
    seed: int = 0
    augment: str | None = None  # None or "crop_flip"
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"images and labels differ in length: {len(self.images)} vs {len(self.labels)}"
            )
        if self.batch_size < 1 or self.batch_size > len(self.images):
            raise ValueError(
                f"batch_size must be in [1, {len(self.images)}], got {self.batch_size}"
            )
        if self.batch_size % self.process_count:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by process_count {self.process_count}"
            )
        if self.augment not in (None, "crop_flip"):
            raise ValueError(f"augment must be None or 'crop_flip', got {self.augment!r}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"process_index must be in [0, process_count={self.process_count}), "
                f"got {self.process_index}"
            )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.images) // self.batch_size

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self.steps_per_epoch)
        perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.images))
        local = self.batch_size // self.process_count
        start = i * self.batch_size + self.process_index * local
        idx = perm[start : start + local]
        images = self.images[idx]
        if self.augment == "crop_flip":
            images = augment_crop_flip(images, np.random.default_rng((self.seed, epoch, i, 1)))
        return {"image": _to_float(images), "label": self.labels[idx].astype(np.int32)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the data (evaluation / recalibration): dicts of float32 images in [0, 1]
    and int32 labels; ``shuffle`` permutes by ``(seed, epoch)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield {"image": _to_float(images[idx]), "label": labels[idx].astype(np.int32)}
