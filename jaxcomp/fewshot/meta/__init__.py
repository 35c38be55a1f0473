"""Meta-learning few-shot methods (FewSAR's meta family): MAML and ANIL, with MAML's inner loop,
meta loss and vmapped meta-batch loss as pure functions over parameter pytrees."""

from jaxcomp.fewshot.meta.anil import ANIL
from jaxcomp.fewshot.meta.maml import (
    MAML,
    episode_ce,
    inner_loop,
    meta_batch_loss,
    meta_loss,
)

__all__ = ["ANIL", "MAML", "episode_ce", "inner_loop", "meta_batch_loss", "meta_loss"]
