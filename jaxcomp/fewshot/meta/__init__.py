"""Meta-learning few-shot methods (FewSAR's third group)."""

from jaxcomp.fewshot.meta.mtl import MTL, ScaleShiftConv, adapt_linear_head, meta_transfer

__all__ = ["MTL", "ScaleShiftConv", "adapt_linear_head", "meta_transfer"]
