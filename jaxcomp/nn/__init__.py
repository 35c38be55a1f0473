"""Reusable Flax NNX layers: LoSparse (low-rank + sparse) and CoOp / CoCoOp prompt learners."""

from jaxcomp.nn.losparse import LoSparseLinear, convert, export, losparse_pruning
from jaxcomp.nn.prompts import CoCoOp, CoOp, PromptParam

__all__ = [
    "CoCoOp",
    "CoOp",
    "LoSparseLinear",
    "PromptParam",
    "convert",
    "export",
    "losparse_pruning",
]
