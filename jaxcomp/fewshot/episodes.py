"""N-way K-shot episodes, deterministic from ``(seed, episode index)``.

FewSAR's (LibFewShot's) samplers draw episodes from the global RNG, so two methods evaluated one
after the other see different test episodes. Here an episode is a pure function of
``(seed, index)``: ``numpy.random.default_rng((seed, index))`` picks ``way`` classes and, for
each, ``shot + query`` distinct images. Every method therefore sees exactly the same test
episodes, and a resumed training run sees exactly the episodes it would have seen.

Layout (static shapes, so one jitted step serves every episode): an episode is an index array
``(way, shot + query)`` into a pool; position ``[c, :shot]`` are the support images of episode
class ``c`` and ``[c, shot:]`` its queries. The episode label of every image is its row ``c``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def check_disjoint(**splits: np.ndarray) -> None:
    """Raise ``ValueError`` naming the classes when two class-label arrays overlap."""
    names = list(splits)
    sets = {n: set(np.unique(np.asarray(splits[n])).tolist()) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sets[a] & sets[b]
            if common:
                raise ValueError(
                    f"splits {a!r} and {b!r} must have disjoint classes, both contain "
                    f"{sorted(common)[:10]}"
                )


@dataclasses.dataclass(frozen=True)
class EpisodeSampler:
    """Episodes of ``way`` classes x (``shot`` support + ``query`` query) images from a pool
    whose class of item ``i`` is ``labels[i]``."""

    labels: np.ndarray
    way: int
    shot: int
    query: int
    seed: int = 0

    def __post_init__(self):
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        for name in ("way", "shot", "query"):
            v = getattr(self, name)
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        classes, counts = np.unique(labels, return_counts=True)
        if self.way > len(classes):
            raise ValueError(
                f"way={self.way} is larger than the number of classes in the pool ({len(classes)})"
            )
        need = self.shot + self.query
        if counts.min() < need:
            c = classes[np.argmin(counts)]
            raise ValueError(
                f"shot + query = {self.shot} + {self.query} = {need} is larger than the "
                f"{counts.min()} images of class {c}"
            )
        order = np.argsort(labels, kind="stable")
        members = np.split(order, np.cumsum(counts)[:-1])
        object.__setattr__(self, "_classes", classes)
        object.__setattr__(self, "_members", members)

    @property
    def classes(self) -> np.ndarray:
        return self._classes

    @property
    def images_per_episode(self) -> int:
        return self.way * (self.shot + self.query)

    def episode_classes(self, index: int) -> np.ndarray:
        """The pool class labels of episode ``index`` (in episode-label order)."""
        rng = np.random.default_rng((int(self.seed), int(index)))
        return self._classes[rng.choice(len(self._classes), self.way, replace=False)]

    def indices(self, index: int) -> np.ndarray:
        """Pool indices ``(way, shot + query)`` of episode ``index``."""
        rng = np.random.default_rng((int(self.seed), int(index)))
        picked = rng.choice(len(self._classes), self.way, replace=False)
        need = self.shot + self.query
        return np.stack([rng.choice(self._members[c], need, replace=False) for c in picked])

    def batch_indices(self, start: int, count: int) -> np.ndarray:
        """Indices ``(count, way, shot + query)`` of episodes ``start .. start + count - 1``."""
        return np.stack([self.indices(start + i) for i in range(count)])


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) * (1.0 / 255.0) if images.dtype == np.uint8 else images


@dataclasses.dataclass(frozen=True)
class EpisodeStream:
    """Step-indexed training episodes for ``jaxcomp.train.fit`` (the ``DataStream`` protocol:
    ``batch(step)``, ``seed``, ``batch_size``).

    ``batch(step)`` is ``{"support": float32 (way, shot, H, W, C), "query": float32 (way,
    query, H, W, C)}`` in [0, 1] (uint8 pools are scaled); the label of ``[c, j]`` is ``c``.
    """

    images: np.ndarray
    sampler: EpisodeSampler

    def __post_init__(self):
        if len(self.images) != len(self.sampler.labels):
            raise ValueError(
                f"images and sampler labels differ in length: {len(self.images)} vs "
                f"{len(self.sampler.labels)}"
            )

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def batch_size(self) -> int:
        return self.sampler.images_per_episode

    def batch(self, step: int) -> dict[str, np.ndarray]:
        idx = self.sampler.indices(step)
        x = _to_float(self.images[idx])
        k = self.sampler.shot
        return {"support": x[:, :k], "query": x[:, k:]}
