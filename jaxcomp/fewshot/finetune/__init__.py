"""Fine-tuning few-shot methods: pretrain on the base classes, adapt a head per test episode."""

from jaxcomp.fewshot.finetune.baseline import Baseline, BaselinePlus, finetune_head
from jaxcomp.fewshot.finetune.distill import RFS, SKD, logistic_regression, rotations

__all__ = [
    "RFS",
    "SKD",
    "Baseline",
    "BaselinePlus",
    "finetune_head",
    "logistic_regression",
    "rotations",
]
