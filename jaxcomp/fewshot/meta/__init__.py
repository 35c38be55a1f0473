"""Meta-learning few-shot methods (FewSAR's meta family): MAML and ANIL (MAML's inner loop, meta
loss and vmapped meta-batch loss as pure functions over parameter pytrees), MTL (meta-transfer
scaling/shifting of a pretrained backbone), R2-D2, Versa and LEO."""

from jaxcomp.fewshot.meta.anil import ANIL
from jaxcomp.fewshot.meta.checks import check_episode_features
from jaxcomp.fewshot.meta.leo import (
    LEO,
    encoder_penalty,
    gaussian_params,
    gradient_steps,
    orthogonality_penalty,
    relation_codes,
    sample_with_kl,
)
from jaxcomp.fewshot.meta.maml import (
    MAML,
    episode_ce,
    inner_loop,
    meta_batch_loss,
    meta_loss,
)
from jaxcomp.fewshot.meta.mtl import MTL, ScaleShiftConv, adapt_linear_head, meta_transfer
from jaxcomp.fewshot.meta.r2d2 import R2D2, r2d2_logits, ridge_form, ridge_regression
from jaxcomp.fewshot.meta.versa import Versa, log_predictive, logit_distribution, sample_logits

__all__ = [
    "ANIL",
    "LEO",
    "MAML",
    "MTL",
    "R2D2",
    "ScaleShiftConv",
    "Versa",
    "adapt_linear_head",
    "check_episode_features",
    "encoder_penalty",
    "episode_ce",
    "gaussian_params",
    "gradient_steps",
    "inner_loop",
    "log_predictive",
    "logit_distribution",
    "meta_batch_loss",
    "meta_loss",
    "meta_transfer",
    "orthogonality_penalty",
    "r2d2_logits",
    "relation_codes",
    "ridge_form",
    "ridge_regression",
    "sample_logits",
    "sample_with_kl",
]
