"""Meta-learning few-shot methods (FewSAR's meta family): MAML and ANIL, with MAML's inner loop,
meta loss and vmapped meta-batch loss as pure functions over parameter pytrees; MTL
(meta-transfer scaling/shifting of a pretrained backbone)."""

from jaxcomp.fewshot.meta.anil import ANIL
from jaxcomp.fewshot.meta.maml import (
    MAML,
    episode_ce,
    inner_loop,
    meta_batch_loss,
    meta_loss,
)
from jaxcomp.fewshot.meta.mtl import MTL, ScaleShiftConv, adapt_linear_head, meta_transfer

__all__ = [
    "ANIL",
    "MAML",
    "MTL",
    "ScaleShiftConv",
    "adapt_linear_head",
    "episode_ce",
    "inner_loop",
    "meta_batch_loss",
    "meta_loss",
    "meta_transfer",
]
