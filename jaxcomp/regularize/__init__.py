"""Training-loss regularisers: ``simultaneous`` (Simultaneous Learning, Castro et al. 2023)."""

from jaxcomp.regularize import simultaneous
from jaxcomp.regularize.simultaneous import (
    Groups,
    SimultaneousHead,
    class_correlation,
    conv_activations,
    extend_head,
    inter_group_penalty,
    make_groups,
    multitask_loss,
    predict_target,
    simultaneous_loss,
)

__all__ = [
    "Groups",
    "SimultaneousHead",
    "class_correlation",
    "conv_activations",
    "extend_head",
    "inter_group_penalty",
    "make_groups",
    "multitask_loss",
    "predict_target",
    "simultaneous",
    "simultaneous_loss",
]
