"""Mixed target/auxiliary batches for Simultaneous Learning (Castro et al., arXiv 2305.13447,
Sec. 3: every batch holds images of the target and of the auxiliary data set).

``MixedStream.batch(step)`` is a pure function of ``step``, like ``DataStream``: each group walks
its own sequence of epochs, each epoch a permutation from ``(seed, group, epoch)``, so a resumed
run gets exactly the batches it would have seen, and a small target set simply cycles more
epochs than a large auxiliary one. ``StackedStream`` stacks several streams along a new leading
axis (one per independent run, e.g. seeds or sample sizes trained together under ``vmap``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from jaxcomp.data.pipeline import _to_float, augment_crop_flip


def _indices(step: int, n: int, size: int, key: tuple[int, ...]) -> np.ndarray:
    """Positions ``step*n .. step*n+n-1`` of the endless concatenation of per-epoch permutations
    of ``range(size)`` (epoch ``e`` permuted by ``key + (e,)``)."""
    k = int(step) * n + np.arange(n)
    epoch, pos = np.divmod(k, size)
    out = np.empty(n, np.int64)
    for e in np.unique(epoch):
        sel = epoch == e
        out[sel] = np.random.default_rng((*key, int(e))).permutation(size)[pos[sel]]
    return out


@dataclasses.dataclass(frozen=True)
class MixedStream:
    """Step-indexed batches of ``n_target`` target then ``n_auxiliary`` auxiliary images, with
    ``n_target : n_auxiliary`` = ``ratio`` (``n_target = round(batch_size * r_T / (r_T + r_A))``).
    ``ratio=(1, 0)`` (or no auxiliary arrays) gives target-only batches. Labels are passed
    through unchanged: give the auxiliary labels already in the joint class space (e.g. offset by
    ``K_T``). ``batch(step)`` returns ``{"image": float32 (B,H,W,C), "label": int32 (B,)}``."""

    target_images: np.ndarray
    target_labels: np.ndarray
    auxiliary_images: np.ndarray | None = None
    auxiliary_labels: np.ndarray | None = None
    batch_size: int = 64
    ratio: tuple[float, float] = (1.0, 1.0)
    seed: int = 0
    augment: str | None = None  # None or "crop_flip"
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if len(self.target_images) != len(self.target_labels) or not len(self.target_images):
            raise ValueError(
                f"target images and labels must be non-empty and equal in length, got "
                f"{len(self.target_images)} and {len(self.target_labels)}"
            )
        if len(self.ratio) != 2 or min(self.ratio) < 0 or self.ratio[0] <= 0:
            raise ValueError(f"ratio must be (r_T > 0, r_A >= 0), got {self.ratio}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.n_auxiliary:
            if self.auxiliary_images is None or self.auxiliary_labels is None:
                raise ValueError(f"ratio {self.ratio} asks for auxiliary images but none given")
            if len(self.auxiliary_images) != len(self.auxiliary_labels) or not len(
                self.auxiliary_images
            ):
                raise ValueError(
                    f"auxiliary images and labels must be non-empty and equal in length, got "
                    f"{len(self.auxiliary_images)} and {len(self.auxiliary_labels)}"
                )
            if self.auxiliary_images.shape[1:] != self.target_images.shape[1:]:
                raise ValueError(
                    f"auxiliary images {self.auxiliary_images.shape[1:]} differ in shape from "
                    f"target images {self.target_images.shape[1:]}"
                )
        if self.n_target < 1:
            raise ValueError(
                f"ratio {self.ratio} with batch_size {self.batch_size} leaves no target"
            )
        for n in (self.n_target, self.n_auxiliary):
            if n % self.process_count:
                raise ValueError(
                    f"per-group batch sizes ({self.n_target}, {self.n_auxiliary}) must be "
                    f"divisible by process_count {self.process_count}"
                )
        if self.augment not in (None, "crop_flip"):
            raise ValueError(f"augment must be None or 'crop_flip', got {self.augment!r}")

    @property
    def n_target(self) -> int:
        r_t, r_a = self.ratio
        return int(round(self.batch_size * r_t / (r_t + r_a)))

    @property
    def n_auxiliary(self) -> int:
        return self.batch_size - self.n_target

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Global (all processes) indices into the target and auxiliary arrays at ``step``."""
        it = _indices(step, self.n_target, len(self.target_images), (self.seed, 0))
        if not self.n_auxiliary:
            return it, np.zeros(0, np.int64)
        ia = _indices(step, self.n_auxiliary, len(self.auxiliary_images), (self.seed, 1))
        return it, ia

    def batch(self, step: int) -> dict[str, np.ndarray]:
        it, ia = self.indices(step)
        pc, pi = self.process_count, self.process_index
        it = np.array_split(it, pc)[pi]
        ia = np.array_split(ia, pc)[pi]
        images = [self.target_images[it]]
        labels = [self.target_labels[it]]
        if len(ia):
            images.append(self.auxiliary_images[ia])
            labels.append(self.auxiliary_labels[ia])
        images = np.concatenate(images)
        if self.augment == "crop_flip":
            images = augment_crop_flip(images, np.random.default_rng((self.seed, 2, int(step))))
        return {"image": _to_float(images), "label": np.concatenate(labels).astype(np.int32)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


@dataclasses.dataclass(frozen=True)
class StackedStream:
    """Batches of several streams stacked on a new leading axis (one per run of a ``vmap``-ed
    train step). ``seed`` is one int derived from the streams' seeds (what ``fit`` records in a
    checkpoint); all streams must give batches of one shape."""

    streams: Sequence[MixedStream]

    def __post_init__(self):
        if not self.streams:
            raise ValueError("StackedStream needs at least one stream")
        sizes = {s.batch_size for s in self.streams}
        if len(sizes) != 1:
            raise ValueError(f"streams differ in batch_size: {sorted(sizes)}")

    @property
    def batch_size(self) -> int:
        return self.streams[0].batch_size * len(self.streams)

    @property
    def seed(self) -> int:
        h = 0
        for s in self.streams:
            h = (h * 1_000_003 + int(s.seed)) % (2**31 - 1)
        return h

    def batch(self, step: int) -> dict[str, np.ndarray]:
        parts = [s.batch(step) for s in self.streams]
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
