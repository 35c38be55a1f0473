"""Meta-learning few-shot methods (FewSAR's meta family): R2-D2, Versa, LEO."""

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
from jaxcomp.fewshot.meta.r2d2 import R2D2, r2d2_logits, ridge_form, ridge_regression
from jaxcomp.fewshot.meta.versa import Versa, log_predictive, logit_distribution, sample_logits

__all__ = [
    "LEO",
    "R2D2",
    "Versa",
    "check_episode_features",
    "encoder_penalty",
    "gaussian_params",
    "gradient_steps",
    "log_predictive",
    "logit_distribution",
    "orthogonality_penalty",
    "r2d2_logits",
    "relation_codes",
    "ridge_form",
    "ridge_regression",
    "sample_logits",
    "sample_with_kl",
]
