"""Data: real small data sets bundled in PyPI packages, TFDS builders, deterministic batching."""

from jaxcomp.data.pipeline import DataStream, batches
from jaxcomp.data.sources import (
    load_classification,
    load_digits,
    load_mnist5k,
    read_mnist_csv,
)

__all__ = [
    "DataStream",
    "batches",
    "load_classification",
    "load_digits",
    "load_mnist5k",
    "read_mnist_csv",
]
